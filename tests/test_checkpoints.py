"""Loading through clipguide.load: layouts, names, and every kind of bad input answered clearly."""
from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

import clipguide
from clipguide import hub
from clipguide.errors import (CheckpointError, ClipguideError, InputError, TextTooLongError,
                              WeightsNotFoundError)
from clipguide.tokenizer import Tokenizer


@pytest.fixture
def nano(tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square", "two green stars"] * 5, vocab_size=600,
                          context_length=16)
    return clipguide.create_model("ViT-nano", tokenizer=tok).eval()


def test_clipguide_file_carries_config_version_card_and_tokenizer(nano, tmp_path):
    path = clipguide.save(nano, tmp_path / "m.safetensors", model_card="trained on nothing")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["clipguide_version"] == clipguide.__version__
    assert clipguide.CLIPConfig.from_json(meta["config"]) == nano.config
    back = clipguide.load(path)
    assert back.format == "clipguide" and back.model_card == "trained on nothing"
    assert torch.equal(back.tokenize(["a red circle"]), nano.tokenize(["a red circle"]))


def test_save_is_atomic_and_checks_metadata(nano, tmp_path):
    path = tmp_path / "m.safetensors"
    clipguide.save(nano, path)
    before = path.read_bytes()
    with pytest.raises(ClipguideError, match="reserved"):
        clipguide.save(nano, path, metadata={"config": "x"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]     # no temporary left behind


def test_state_dict_for_another_architecture_lists_keys(nano, tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(nano.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        clipguide.load(path, arch="RN-nano")
    msg = str(e.value)
    assert "missing keys" in msg and "visual.attnpool" in msg
    assert "unexpected keys" in msg and "visual.class_embedding" in msg


def test_shape_mismatch_is_listed(nano, tmp_path):
    sd = dict(nano.state_dict())
    sd["visual.proj"] = torch.zeros(64, 7)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"visual.proj: file \(64, 7\)"):
        clipguide.load(path, arch=nano.config)


def test_missing_and_extra_keys(nano, tmp_path):
    sd = dict(nano.state_dict())
    del sd["visual.ln_post.weight"]
    sd["visual.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="visual.ln_post.weight.*visual.extra_head.weight"):
        clipguide.load(path, arch=nano.config)


def test_not_a_clip_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a CLIP state dict"):
        clipguide.load(path)


def test_hf_weights_without_config(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 4)}, str(path))
    with pytest.raises(CheckpointError, match="config.json"):
        clipguide.load(path)


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG"),
    (os.urandom(4096), "checkpoint"),
    (b'{"hello": "world"}', "JSON"),
])
def test_wrong_files(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        clipguide.load(path)


def test_truncated_files(nano, tmp_path):
    for name, write in [("m.safetensors", lambda p: clipguide.save(nano, p)),
                        ("m.pt", lambda p: torch.save(nano.state_dict(), p))]:
        path = tmp_path / name
        write(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError):
            clipguide.load(path)


def test_corrupted_safetensors_header(nano, tmp_path):
    path = clipguide.save(nano, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[8:20] = b"#" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        clipguide.load(path)


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match="not"):
        clipguide.load(path)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(CheckpointError):
        clipguide.load(plain)
    assert not marker.exists()


def test_names():
    with pytest.raises(ClipguideError, match="architecture, not weights"):
        clipguide.load("ViT-B-32")
    with pytest.raises(CheckpointError, match="openai:ViT-B-32"):
        clipguide.load("no-such-model")
    with pytest.raises(ClipguideError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        clipguide.load("no-such-model", device="cuda")


def test_remote_weights_offline_error_names_file_and_place(monkeypatch):
    monkeypatch.setenv("CLIPGUIDE_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as e:
        clipguide.load("openai:ViT-B-32")
    msg = str(e.value)
    w = hub.REMOTE["openai:ViT-B-32"]
    assert "ViT-B-32.pt" in msg and w.sha256 in msg and str(hub.cache_dir()) in msg


def test_remote_weights_checksum_verified(monkeypatch):
    path = hub.cache_dir() / "RN50.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not the file")
    with pytest.raises(CheckpointError, match="SHA256"):
        clipguide.load("openai:RN50")


def test_missing_openai_vocab_is_reported_on_use(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPGUIDE_BPE_PATH", str(tmp_path / "nowhere.txt.gz"))
    model = clipguide.create_model("ViT-B-32")
    with pytest.raises(WeightsNotFoundError, match="bpe_simple_vocab_16e6"):
        model.tokenize(["a red circle"])
    features = model.encode_image(torch.zeros(1, 3, 224, 224))   # the image tower still works
    assert features.shape == (1, 512)


def test_over_long_text(nano):
    long = " ".join(["red circle"] * 40)
    with pytest.raises(TextTooLongError, match="truncate=True"):
        nano.tokenize([long])
    ids = nano.tokenize([long], truncate=True)
    assert ids.shape == (1, 16) and ids[0, -1] == nano.tokenizer.eot_token_id


# --- preprocessing ---------------------------------------------------------------------------------
def test_preprocess_matches_torchvision_tensor_transforms():
    from torchvision.transforms.v2 import functional as TF

    pre = clipguide.Preprocess(224)
    x = torch.rand(2, 3, 300, 400)
    ref = TF.center_crop(TF.resize(x, 224, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), 224)
    ref = TF.normalize(ref, list(pre.mean.flatten().tolist()), list(pre.std.flatten().tolist()))
    torch.testing.assert_close(pre(x), ref, atol=1e-5, rtol=1e-5)


def test_preprocess_is_differentiable():
    x = torch.rand(1, 3, 100, 80, requires_grad=True)
    clipguide.Preprocess(64)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 2), "shape"),
    (torch.zeros(1, 1, 3, 8, 8), "shape"),
    (torch.zeros(1, 4, 8, 8), "RGBA"),
    (torch.zeros(1, 8, 8, 3), "channels-last"),
    (torch.zeros(1, 5, 8, 8), "3 channels"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), "dtype"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(1, 3, 0, 8), "empty"),
    ([1, 2, 3], "PIL"),
])
def test_preprocess_bad_images(bad, match):
    with pytest.raises(InputError, match=match):
        clipguide.Preprocess(32)(bad)


def test_image_files_of_any_mode(tmp_path):
    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng(0).random((20, 30, 4)) * 255).astype(np.uint8)
    arr[..., 3] = 0                                            # fully transparent -> white
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    t = clipguide.load_image(tmp_path / "a.png")
    assert t.shape == (3, 20, 30) and torch.allclose(t, torch.ones_like(t))
    Image.fromarray(np.full((10, 10), 128, np.uint8), "L").save(tmp_path / "g.png")
    g = clipguide.load_image(tmp_path / "g.png")
    assert g.shape == (3, 10, 10) and abs(g.mean().item() - 128 / 255) < 1e-6
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(tmp_path / "d.png")
    d = clipguide.load_image(tmp_path / "d.png")
    assert torch.allclose(d, torch.ones_like(d))
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        clipguide.load_image(tmp_path / "x.png")
    with pytest.raises(InputError, match="not found"):
        clipguide.load_image(tmp_path / "missing.png")
    batch = clipguide.Preprocess(16)([tmp_path / "a.png", tmp_path / "a.png"])
    assert batch.shape == (2, 3, 16, 16)


def test_save_image_round_trip_with_provenance(tmp_path):
    from PIL import Image

    x = torch.rand(3, 12, 10)
    path = clipguide.save_image(x, tmp_path / "out.png", pnginfo={"prompt": "a gothic church"})
    with Image.open(path) as im:
        assert im.text["prompt"] == "a gothic church"
    back = clipguide.load_image(path)
    assert (back - x).abs().max() <= 1 / 255 + 1e-6
