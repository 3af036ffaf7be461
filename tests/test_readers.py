"""Tests of the safe checkpoint reading layer (clipguide.formats)."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from clipguide.errors import CheckpointError
from clipguide.formats import STATE_DICT_KEYS, RawCheckpoint, read_checkpoint, sniff_format

REPO = Path(__file__).resolve().parents[1]


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.conv1.weight": torch.randn(4, 3, 2, 2, generator=g),
        "visual.ln.bias": torch.randn(4, generator=g).half(),
        "logit_scale": torch.tensor(4.6, dtype=torch.bfloat16),
        "positions": torch.arange(7),
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


class _Evil:
    """Pickles as a call to os.system: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Arbitrary:
    pass


# --- safetensors -------------------------------------------------------------------------------


def test_safetensors_roundtrip_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), str(path), metadata={"format": "pt", "arch": "ViT-B-32"})
    assert sniff_format(path) == "safetensors"
    ck = read_checkpoint(path)
    assert isinstance(ck, RawCheckpoint) and ck.kind == "safetensors" and ck.path == path
    _assert_same(ck.tensors, _sd())
    assert ck.metadata == {"format": "pt", "arch": "ViT-B-32"}
    assert ck.extra == {} and ck.container_key is None
    assert "tensors=" not in repr(ck)


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from clipguide.formats import read_checkpoint

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak left by importing torch
            f.write("5")
    except OSError:
        print("noreset")
        sys.exit()
    before = status("VmRSS:")
    ck = read_checkpoint(sys.argv[1])
    total = sum(float(t.float().sum()) for t in ck.tensors.values())  # touch every byte
    print(status("VmHWM:") - before)
    """
)


def test_safetensors_peak_memory_stays_near_file_size(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.randn(1024, 2048) for i in range(10)}, str(path))  # 80 MiB
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "noreset":
        pytest.skip("cannot reset the peak-RSS counter here")
    ratio = int(out.stdout.strip()) / size
    print(f"peak RSS growth while reading {size / 2**20:.0f} MiB safetensors: {ratio:.2f}x file size")
    assert ratio < 1.3


# --- torch.save --------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("mmap", [True, False])
def test_torch_flat_state_dict(tmp_path: Path, zip_format: bool, mmap: bool) -> None:
    path = tmp_path / "w.pt"
    torch.save(_sd(), path, _use_new_zipfile_serialization=zip_format)
    assert sniff_format(path) == "torch"
    ck = read_checkpoint(path, mmap=mmap)
    assert ck.kind == "torch" and ck.container_key is None and ck.extra == {} and ck.metadata == {}
    _assert_same(ck.tensors, _sd())


def test_torch_container_with_extras(tmp_path: Path) -> None:
    path = tmp_path / "epoch_3.pt"
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    torch.save(
        {
            "epoch": 3,
            "name": "run1",
            "args": {"lr": 0.1},
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
        },
        path,
    )
    ck = read_checkpoint(path)
    assert ck.container_key == "state_dict"
    _assert_same(ck.tensors, model.state_dict())
    assert ck.extra == {"epoch": 3, "name": "run1", "args": {"lr": 0.1}}  # optimizer state holds tensors: dropped


@pytest.mark.parametrize(
    ("obj", "key"),
    [
        ({"ema": _sd(1), "model": _sd()}, "model"),
        ({"model_state_dict": _sd(1), "module": _sd()}, "module"),
        ({"ema": _sd(), "step": 5}, "ema"),
        ({"model": {"state_dict": _sd(), "epoch": 1}, "step": 2}, "model.state_dict"),
    ],
)
def test_torch_container_key_order(tmp_path: Path, obj: dict, key: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    ck = read_checkpoint(path)
    assert ck.container_key == key
    if key == "model.state_dict":
        assert ck.extra == {"step": 2, "model.epoch": 1}
    _assert_same(ck.tensors, _sd())
    assert STATE_DICT_KEYS[:5] == ("state_dict", "model", "module", "model_state_dict", "ema")


def test_torch_top_level_tensors_beside_scalars(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({**_sd(), "step": 10, "note": "x"}, path)
    ck = read_checkpoint(path)
    _assert_same(ck.tensors, _sd())
    assert ck.extra == {"step": 10, "note": "x"} and ck.container_key is None


def test_torch_parameters_become_plain_tensors(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(dict(nn.Linear(2, 2).named_parameters()), path)
    ck = read_checkpoint(path)
    assert set(ck.tensors) == {"weight", "bias"}
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in ck.tensors.values())


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_malicious_pickle_is_refused_not_executed(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "payload": _Evil(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert not marker.exists()
    assert "system" in message and "not unpickle" in message and "Nothing from the file was executed" in message
    assert "state_dict()" in message and "safetensors" in message


def test_torch_arbitrary_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"w": torch.zeros(2), "cfg": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match=r"will not unpickle \(.*_Arbitrary\)"):
        read_checkpoint(path)


def test_torch_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(path)


def test_torch_non_mapping_lists_types(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2), 3, "x"], path)
    with pytest.raises(CheckpointError, match=r"No state dict found.*list of 3 items \(Tensor, int, str\)"):
        read_checkpoint(path)


def test_torch_mapping_without_tensors_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "name": "run"}, path)
    with pytest.raises(CheckpointError, match=r"No state dict found.*'epoch' \(int\), 'name' \(str\)"):
        read_checkpoint(path)


def test_truncated_torch_zip(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_sd(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="zip archive.*truncated or corrupted"):
        read_checkpoint(path)


def test_truncated_legacy_torch(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_sd(), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="Cannot read torch.save file .*damaged or truncated"):
        read_checkpoint(path)


# --- TorchScript -------------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(x)


class _Tower(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.input_resolution = 8
        self.conv1 = nn.Conv2d(3, width, 4, stride=4, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.register_buffer("position_ids", torch.arange(5))
        self.blocks = nn.ModuleList([_Block(width) for _ in range(2)])
        self.ln_post = nn.LayerNorm(width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).permute(2, 0, 1)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(1, x.shape[1], -1), x], dim=0)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[0])


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = _Tower()
        self.logit_scale = nn.Parameter(torch.tensor(4.6))
        self.context_length = 77

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image) * self.logit_scale.exp()


def _jit_save(module: nn.Module, path: Path, how: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "script":
            compiled = torch.jit.script(module)
        else:
            compiled = torch.jit.trace(module, torch.randn(1, 3, 8, 8))
        torch.jit.save(compiled, str(path), _extra_files={"info.json": '{"arch": "test"}'})


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_matches_state_dict(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Model().eval()
    path = tmp_path / "model.pt"
    _jit_save(model, path, how)

    def forbidden(*args, **kwargs):
        raise AssertionError("the reader must not load TorchScript with torch")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert sniff_format(path) == "torchscript"
    ck = read_checkpoint(path)
    assert ck.kind == "torchscript"
    _assert_same(ck.tensors, model.state_dict())
    assert "visual.blocks.1.attn.in_proj_weight" in ck.tensors and "visual.position_ids" in ck.tensors
    assert ck.metadata == {"extra/info.json": '{"arch": "test"}'}
    if how == "script":  # tracing keeps no plain attributes
        assert ck.extra["visual.input_resolution"] == 8 and ck.extra["context_length"] == 77
        assert ck.extra["visual.blocks.0.attn.num_heads"] == 2
    assert not any(k.endswith("training") for k in ck.extra)


def test_torchscript_fp16(tmp_path: Path) -> None:
    model = _Model().half().eval()
    path = tmp_path / "model_fp16.pt"
    _jit_save(model, path, "script")
    ck = read_checkpoint(path)
    _assert_same(ck.tensors, model.state_dict())
    assert ck.tensors["visual.conv1.weight"].dtype == torch.float16
    assert ck.tensors["visual.position_ids"].dtype == torch.int64


class _Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6))
        base = self.weight.detach()
        self.register_buffer("rows", base[1:3])  # storage offset
        self.register_buffer("cols", base[:, ::2])  # strides
        self.register_buffer("transposed", base.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.rows.sum() + self.cols.sum() + self.transposed.sum()


def test_torchscript_views_share_one_storage(tmp_path: Path) -> None:
    model = _Views()
    path = tmp_path / "views.pt"
    _jit_save(model, path, "script")
    ck = read_checkpoint(path)
    _assert_same(ck.tensors, model.state_dict())
    t = ck.tensors
    assert t["rows"].storage_offset() == 6 and t["cols"].stride() == (6, 2) and t["transposed"].stride() == (1, 6)
    ptrs = {v.untyped_storage().data_ptr() for v in t.values()}
    assert len(ptrs) == 1


def _replace_data_pkl(archive: Path, out: Path, payload: bytes) -> None:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)


def test_torchscript_malicious_global_is_refused_not_executed(tmp_path: Path) -> None:
    archive = tmp_path / "model.pt"
    _jit_save(_Views(), archive, "script")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _replace_data_pkl(archive, evil, pickle.dumps({"w": _Evil(marker)}, protocol=2))
    assert sniff_format(evil) == "torchscript"
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(evil)
    assert not marker.exists()
    message = str(info.value)
    assert "system" in message and "Nothing from the file was executed" in message and "state_dict()" in message


def test_torchscript_arbitrary_class_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.pt"
    _jit_save(_Views(), archive, "script")
    bad = tmp_path / "bad.pt"
    _replace_data_pkl(archive, bad, pickle.dumps(_Arbitrary(), protocol=2))
    with pytest.raises(CheckpointError, match=r"will not unpickle \(.*_Arbitrary\)"):
        read_checkpoint(bad)


def test_torchscript_missing_storage_is_reported(tmp_path: Path) -> None:
    archive = tmp_path / "model.pt"
    _jit_save(_Views(), archive, "script")
    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match="TorchScript archive .* damaged or truncated"):
        read_checkpoint(broken)


class _StorageRef:
    """Stands for one storage entry; the pickler below writes it as a persistent id."""

    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.pid = ("storage", dtype, key, "cpu", numel)


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _PidPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


def test_torchscript_storage_typed_by_dtype_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Persistent ids may name the element type with a dtype (torch.float16) instead of a storage class."""
    fake = types.ModuleType("__torch__")
    Root = type("Root", (), {"__module__": "__torch__"})
    fake.Root = Root
    monkeypatch.setitem(sys.modules, "__torch__", fake)
    data = torch.arange(12, dtype=torch.float16)
    storage = _StorageRef(torch.float16, "0", 12)
    root = Root()
    root.__dict__.update(
        {
            "weight": _TensorRef(storage, 2, (2, 3), (1, 2)),  # a strided view at an offset
            "bias": _TensorRef(storage, 0, (2,), (1,)),
            "cache": _TensorRef(storage, 0, (1,), (1,)),  # a tensor attribute that is no parameter
            "training": False,
            "width": 3,
        }
    )
    buf = io.BytesIO()
    _PidPickler(buf, protocol=2).dump(root)
    path = tmp_path / "handmade.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("handmade/data.pkl", buf.getvalue())
        zf.writestr("handmade/data/0", data.numpy().tobytes())
        zf.writestr("handmade/constants.pkl", pickle.dumps((), protocol=2))
        code = 'class Root(Module):\n  __parameters__ = ["weight", "bias", ]\n  __buffers__ = []\n'
        zf.writestr("handmade/code/__torch__.py", code)
    ck = read_checkpoint(path)
    assert ck.kind == "torchscript" and set(ck.tensors) == {"weight", "bias"}
    assert torch.equal(ck.tensors["weight"], data[2:].as_strided((2, 3), (1, 2)))
    assert ck.tensors["weight"].dtype == torch.float16 and torch.equal(ck.tensors["bias"], data[:2])
    assert ck.extra == {"width": 3}


# --- Hugging Face directories ------------------------------------------------------------------


def _hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "clip"}')
    (d / "preprocessor_config.json").write_text('{"crop_size": 224}')
    (d / "tokenizer_config.json").write_text('{"model_max_length": 77}')
    (d / "vocab.json").write_text("{}")
    return d


def test_hf_dir_safetensors(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    save_file(_sd(), str(d / "model.safetensors"), metadata={"format": "pt"})
    assert sniff_format(d) == "hf_dir"
    ck = read_checkpoint(d)
    assert ck.kind == "hf_dir" and ck.path == d
    _assert_same(ck.tensors, _sd())
    assert ck.metadata == {
        "config.json": '{"model_type": "clip"}',
        "preprocessor_config.json": '{"crop_size": 224}',
        "tokenizer_config.json": '{"model_max_length": 77}',
    }
    assert ck.extra["files"] == sorted(
        ["config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json", "model.safetensors"]
    )
    assert ck.extra["weights_files"] == ["model.safetensors"]
    assert ck.extra["safetensors_metadata"] == {"format": "pt"}


def _write_sharded(d: Path) -> dict[str, torch.Tensor]:
    sd = _sd()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(d / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return sd


def test_hf_dir_sharded_safetensors(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    sd = _write_sharded(d)
    ck = read_checkpoint(d)
    _assert_same(ck.tensors, sd)
    assert len(ck.extra["weights_files"]) == 2


def test_hf_dir_missing_shard(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    _write_sharded(d)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="Shard 'model-00002-of-00002.safetensors'.*missing"):
        read_checkpoint(d)


def test_hf_dir_pytorch_model_bin(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    torch.save(_sd(), d / "pytorch_model.bin")
    ck = read_checkpoint(d)
    _assert_same(ck.tensors, _sd())
    assert ck.extra["weights_files"] == ["pytorch_model.bin"]


def test_hf_dir_malicious_bin_is_refused(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(marker)}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="will not unpickle"):
        read_checkpoint(d)
    assert not marker.exists()


def test_open_clip_hub_dir(tmp_path: Path) -> None:
    d = tmp_path / "hub"
    d.mkdir()
    (d / "open_clip_config.json").write_text('{"model_cfg": {}}')
    save_file(_sd(), str(d / "open_clip_model.safetensors"))
    ck = read_checkpoint(d)
    assert ck.kind == "hf_dir" and ck.metadata == {"open_clip_config.json": '{"model_cfg": {}}'}
    _assert_same(ck.tensors, _sd())


def test_hf_dir_without_weights(tmp_path: Path) -> None:
    d = _hf_dir(tmp_path)
    with pytest.raises(CheckpointError, match="has config.json but no weights file"):
        read_checkpoint(d)


def test_directory_that_is_not_a_model_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a Hugging Face model directory.*notes.txt"):
        read_checkpoint(tmp_path)


# --- bad input ---------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        read_checkpoint(path)


def test_truncated_safetensors_data(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated: its header lists"):
        read_checkpoint(path)


def test_truncated_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated: its header alone"):
        read_checkpoint(path)


def test_safetensors_corrupted_header_json(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_sd(), str(path))
    data = bytearray(path.read_bytes())
    data[9] = ord("#")  # the header's first key loses its opening quote
    path.write_bytes(bytes(data))
    assert sniff_format(path) == "safetensors"
    with pytest.raises(CheckpointError, match="corrupted header"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "this is a PNG image, not a checkpoint"),
        (b"\xff\xd8\xff\xe0" + bytes(100), "JPEG image"),
        (b'{"model_type": "clip", "hidden_size": 512}', "JSON text file"),
        (b"just some notes\nabout a model\n", "text file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        (pickle.dumps({"w": [1, 2]}, protocol=2), "plain Python pickle"),
        (bytes(range(256)) * 16, "match no known checkpoint format"),
    ],
    ids=["png", "jpeg", "json", "text", "lfs", "html", "pickle", "random"],
)
def test_non_checkpoint_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match=expected):
        sniff_format(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError, match="match no known checkpoint format"):
        read_checkpoint(path)


def test_zip_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive without a 'data.pkl' entry.*readme.txt"):
        read_checkpoint(path)


def test_checkpoint_error_is_only_a_clipguide_error() -> None:
    assert not issubclass(CheckpointError, (OSError, ValueError))


def test_zip_tensor_data_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save(_sd(), path)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    read_checkpoint(path)
    assert len(calls) == 1 and calls[0]["weights_only"] is True and calls[0]["mmap"] is True
