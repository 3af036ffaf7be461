"""Safe reading of checkpoint files: format sniffing and tensor loading, no key conversion.

Formats (the ``kind`` of a :class:`RawCheckpoint`):

* ``"safetensors"``: read with ``safetensors.torch.safe_open``; header metadata is returned.
* ``"torch"``: a ``torch.save`` file, zip or legacy pickle, read with ``torch.load(weights_only=True)``
  (memory-mapped when zip). Pickles that reference anything else are refused, never executed.
* ``"torchscript"``: a ``torch.jit.save`` archive; its weights are read without running its code
  (see :mod:`clipguide.formats.torchscript`).
* ``"hf_dir"``: a Hugging Face model directory (``config.json`` + ``model.safetensors``, sharded
  safetensors, or ``pytorch_model.bin``), or an open_clip hub directory (``open_clip_config.json``
  + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``).

Nothing here executes code from a checkpoint, and there is no fallback that would.
"""

from __future__ import annotations

import json
import os
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open

from clipguide.errors import CheckpointError
from clipguide.formats.torchscript import is_torchscript_archive, read_torchscript

__all__ = ["RawCheckpoint", "read_checkpoint", "sniff_format", "STATE_DICT_KEYS"]

# Keys under which a torch.save file may keep its state dict, tried in this order; the first whose
# value is a mapping of tensors wins. Plain weights come before EMA weights.
STATE_DICT_KEYS: tuple[str, ...] = (
    "state_dict",
    "model",
    "module",
    "model_state_dict",
    "ema",
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "weights",
    "params",
    "net",
)

# Hugging Face / open_clip hub directories: (config file, weight files in order of preference).
_HF_LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "config.json",
        ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ),
    ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
)
_HF_TEXT_FILES = ("config.json", "open_clip_config.json", "preprocessor_config.json", "tokenizer_config.json")

_TORCH_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # first pickle of a legacy torch.save
_MAX_ST_HEADER = 100 << 20  # safetensors refuses headers larger than this
_EXPECTED = (
    "Expected a .safetensors file, a torch.save file (.pt/.pth/.bin), a TorchScript archive, "
    "or a Hugging Face model directory."
)


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, before any key conversion."""

    kind: str  # "safetensors" | "torch" | "torchscript" | "hf_dir"
    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)  # the state dict
    metadata: dict[str, str] = field(repr=False)  # safetensors header metadata; hf_dir: file texts
    extra: dict[str, Any] = field(default_factory=dict)  # non-tensor entries beside the state dict
    container_key: str | None = None  # e.g. "state_dict" when tensors came from obj["state_dict"]


# --- sniffing ------------------------------------------------------------------------------------


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The ``kind`` of checkpoint at ``path``, from magic bytes, zip entry names or directory contents.

    Cheap: reads at most the file's first bytes and a zip's table of contents. Raises
    :class:`CheckpointError` saying what the file is when it is not a supported checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        _hf_layout(path)
        return "hf_dir"
    if not path.exists():
        raise CheckpointError(
            f"No checkpoint at '{path}': the path does not exist. Check the path or download the "
            "weights first."
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint file '{path}' is empty (0 bytes). Download or save it again.")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise CheckpointError(f"Cannot open checkpoint '{path}': {exc.strerror or exc}.") from None
    if _looks_like_safetensors(head):
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _sniff_zip(path)
    if _is_legacy_torch(head):
        return "torch"
    raise CheckpointError(f"Cannot read '{path}' as a checkpoint: {_describe(head, size)}. {_EXPECTED}")


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= _MAX_ST_HEADER and head[8:9] == b"{"


def _is_legacy_torch(head: bytes) -> bool:
    """A pickle stream starting with torch's magic number (``_use_new_zipfile_serialization=False``)."""
    if head[:1] != b"\x80":
        return False
    rest = head[2:]
    if rest[:1] == b"\x95":  # protocol 4+ frame header
        rest = rest[9:]
    return rest[:2] == b"\x8a\x0a" and rest[2:12] == _TORCH_MAGIC


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"'{path}' starts like a zip archive (as torch.save and TorchScript files do) but is "
            f"truncated or corrupted ({exc}). Download or save it again."
        ) from None
    if is_torchscript_archive(names):
        return "torchscript"
    if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        what = "a NumPy .npz archive"
    else:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        what = f"a zip archive without a 'data.pkl' entry (holds: {shown or 'nothing'})"
    raise CheckpointError(f"Cannot read '{path}' as a checkpoint: it is {what}, not a PyTorch checkpoint. {_EXPECTED}")


def _describe(head: bytes, size: int) -> str:
    """A short phrase saying what an unsupported file is, from its first bytes."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "this is a PNG image, not a checkpoint"),
        (b"\xff\xd8\xff", "this is a JPEG image, not a checkpoint"),
        (b"GIF8", "this is a GIF image, not a checkpoint"),
        (b"%PDF", "this is a PDF document, not a checkpoint"),
        (b"\x1f\x8b", "this is a gzip-compressed file; decompress it first"),
        (b"\x93NUMPY", "this is a NumPy .npy array, not a checkpoint"),
        (b"\x89HDF\r\n\x1a\n", "this is an HDF5 file (e.g. Keras/TensorFlow weights), not a PyTorch checkpoint"),
        (b"GGUF", "this is a GGUF file, which clipguide does not read"),
    )
    for magic, text in signatures:
        if head.startswith(magic):
            return text
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "this is a WebP image, not a checkpoint"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "this is a tar archive, not a checkpoint; extract it first"
    if head[:1] == b"\x80":
        return (
            "this is a plain Python pickle, not a torch.save file; arbitrary pickles can run code, so "
            "re-save the weights with torch.save(model.state_dict(), ...) in a trusted environment"
        )
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and "\x00" not in text:
        stripped = text.lstrip().lower()
        if stripped.startswith("version https://git-lfs"):
            return "this is a Git LFS pointer, not the weights themselves; fetch them with `git lfs pull`"
        if stripped.startswith(("<!doctype html", "<html", "<?xml", "<")):
            return "this is an HTML/XML page (often an error page saved by a failed download), not a checkpoint"
        if stripped.startswith(("{", "[")):
            return "this is a JSON text file, not a checkpoint"
        return f"this is a text file ({size} bytes), not a checkpoint"
    return (
        "its contents match no known checkpoint format (safetensors, torch.save zip or legacy pickle, "
        "TorchScript); it may be corrupted or incompletely downloaded"
    )


def _hf_layout(path: Path) -> tuple[str, str]:
    """(config file, weights file) of a hub directory, or a CheckpointError saying what is missing."""
    files = {p.name for p in path.iterdir() if p.is_file()}
    for config, weights in _HF_LAYOUTS:
        if config in files:
            for name in weights:
                if name in files:
                    return config, name
    configs = [c for c, _ in _HF_LAYOUTS if c in files]
    shown = ", ".join(sorted(files)[:10]) + (", ..." if len(files) > 10 else "") or "no files"
    if configs:
        raise CheckpointError(
            f"'{path}' has {configs[0]} but no weights file (model.safetensors, "
            "model.safetensors.index.json, pytorch_model.bin, ...). It holds: "
            f"{shown}. Download the weights into it."
        )
    raise CheckpointError(
        f"'{path}' is a directory but not a Hugging Face model directory: expected config.json with "
        f"model.safetensors (or shards, or pytorch_model.bin). It holds: {shown}. Pass a "
        "checkpoint file directly, or a complete model directory."
    )


# --- reading -------------------------------------------------------------------------------------


def read_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", mmap: bool = True
) -> RawCheckpoint:
    """Read the tensors of a checkpoint file or hub directory, safely, without converting keys.

    ``map_location`` is the device the tensors end up on. ``mmap`` memory-maps zip torch.save
    files (tensors are paged in from disk on use); safetensors are read through ``safe_open``,
    which keeps no extra copy either way; TorchScript storages are always read into memory.
    Raises :class:`CheckpointError` for missing, unsupported, damaged or unsafe files.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path, map_location)
        return RawCheckpoint(kind, path, tensors, metadata)
    if kind == "torch":
        tensors, extra, key = _read_torch(path, map_location, mmap)
        return RawCheckpoint(kind, path, tensors, {}, extra, key)
    if kind == "torchscript":
        tensors, extra, metadata = read_torchscript(path, map_location)
        return RawCheckpoint(kind, path, tensors, metadata, extra)
    return _read_hf_dir(path, map_location, mmap)


def _read_safetensors(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, after checking its header and length."""
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors reports all its failures with its own error type
        raise CheckpointError(
            f"Cannot read safetensors file '{path}' onto device '{map_location}': {exc}. If the "
            "file is damaged, download or save it again."
        ) from exc
    return tensors, metadata


def _check_safetensors_header(path: Path) -> None:
    """Parse and check a safetensors header so damage gets a precise message."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise CheckpointError(
                f"Safetensors file '{path}' is truncated: its header alone should be {n} bytes but the "
                f"file has {size} bytes. Download or save it again."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(
            f"Safetensors file '{path}' has a corrupted header (not valid safetensors JSON: {exc}). "
            "Download or save it again."
        ) from None
    have, need = size - 8 - n, max(ends, default=0)
    if need > have:
        raise CheckpointError(
            f"Safetensors file '{path}' is truncated: its header lists {need} bytes of tensor data "
            f"but only {have} bytes follow it. Download or save it again."
        )


def _read_torch(
    path: Path, map_location: str | torch.device, mmap: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """State dict, extra entries and container key of a torch.save file, loaded weights-only."""
    is_zip = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except Exception as exc:
        raise _torch_load_error(path, exc, is_zip) from None
    return _find_state_dict(path, obj)


def _torch_load_error(path: Path, exc: Exception, is_zip: bool) -> CheckpointError:
    """Turn a failed weights-only load into a message that says whether the file is unsafe."""
    reason = str(exc).strip()
    unsafe = _unsafe_globals(path, is_zip)
    if unsafe or "GLOBAL" in reason:
        shown = ", ".join(unsafe[:5]) if unsafe else "objects outside the weights-only allowlist"
        return CheckpointError(
            f"Refusing to load '{path}': this torch.save file contains code or objects that clipguide "
            f"will not unpickle ({shown}). Nothing from the file was executed. If you trust the "
            "file, convert it once in a trusted environment: load it with torch.load(..., "
            "weights_only=False), then save only the weights with torch.save(model.state_dict(), "
            "'weights.pt') or safetensors.torch.save_file(state_dict, 'weights.safetensors'), and "
            "read that file instead."
        )
    first = next((line.strip() for line in reason.splitlines() if line.strip()), "")
    detail = f"{type(exc).__name__}: {first}".rstrip(". :")
    return CheckpointError(
        f"Cannot read torch.save file '{path}' ({detail}). If the file is damaged or truncated, "
        "download or save it again."
    )


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    ("_codecs", "encode"),
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def _unsafe_globals(path: Path, is_zip: bool) -> list[str]:
    """Names of the globals a torch.save pickle references beyond plain tensors (read, not run)."""
    try:
        if is_zip:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                with zf.open(name) as f:
                    found = _pickle_globals(f, 1)
        else:
            with open(path, "rb") as f:
                found = _pickle_globals(f, 4)  # magic number, protocol, sys info, then the object
    except Exception:  # the scan only improves the message; a damaged pickle just yields less
        return []
    unsafe = []
    for module, name in found:
        plain = module == "torch" and (name.endswith("Storage") or isinstance(vars(torch).get(name), torch.dtype))
        if (module, name) in _SAFE_GLOBALS or plain or f"{module}.{name}" in unsafe:
            continue
        unsafe.append(f"{module}.{name}")
    return unsafe


def _pickle_globals(f: IO[bytes], count: int) -> list[tuple[str, str]]:
    """(module, name) of every global in the next ``count`` pickles of a stream, via pickletools."""
    found: list[tuple[str, str]] = []
    for _ in range(count):
        strings: list[str] = []  # pushed strings, for STACK_GLOBAL (protocol 4+)
        memo: dict[int, str] = {}  # memoized strings by memo index
        memo_size = 0
        top: str | None = None  # the string on top of the stack, if the top is a string
        for op, arg, _pos in pickletools.genops(f):
            kind, pushed = op.name, None
            if kind in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.append((module, name))
            elif kind == "STACK_GLOBAL" and len(strings) >= 2:
                found.append((strings[-2], strings[-1]))
            elif kind in _STRING_OPS:
                pushed = str(arg)
            elif kind in ("GET", "BINGET", "LONG_BINGET"):
                pushed = memo.get(int(arg))
            elif kind in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = memo_size if arg is None else int(arg)
                memo_size = max(memo_size, index + 1)
                if top is not None:
                    memo[index] = top
                continue  # memoizing leaves the stack as it was
            if pushed is not None:
                strings.append(pushed)
            top = pushed
    return found


def _find_state_dict(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """Locate the state dict in a loaded object; see :data:`STATE_DICT_KEYS` for the search order.

    Returns (tensors, extra, container_key). ``extra`` holds the entries beside the state dict
    that contain no tensors (epoch, name, args, ...; dotted names when the state dict was nested);
    entries holding tensors, such as optimizer state, are dropped.
    """
    if _is_tensor_mapping(obj):
        return _plain(obj), {}, None
    if isinstance(obj, Mapping):
        found = _search(obj, depth=2)
        if found is not None:
            key, tensors = found
            extra: dict[str, Any] = {}
            level, prefix = obj, ""
            for part in key.split("."):  # tensor-free siblings at each level, with dotted names
                extra.update({f"{prefix}{k}": v for k, v in level.items() if k != part and not _holds_tensor(v)})
                level, prefix = level[part], f"{prefix}{part}."
            return tensors, extra, key
        direct = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if direct:  # tensors at top level beside a few scalars
            extra = {str(k): v for k, v in obj.items() if k not in direct and not _holds_tensor(v)}
            return _plain(direct), extra, None
        listing = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:20])
        what = f"a {type(obj).__name__} with keys: {listing or 'none'}"
    elif isinstance(obj, (list, tuple)):
        types = ", ".join(type(v).__name__ for v in obj[:20])
        what = f"a {type(obj).__name__} of {len(obj)} items ({types or 'empty'})"
    else:
        what = f"a single {type(obj).__name__}"
    raise CheckpointError(
        f"No state dict found in torch.save file '{path}': it holds {what}. Expected a mapping of "
        f"parameter names to tensors, at top level or under one of the keys {', '.join(STATE_DICT_KEYS)}. "
        "Re-save the model's weights with torch.save(model.state_dict(), ...)."
    )


def _search(obj: Mapping, depth: int) -> tuple[str, dict[str, torch.Tensor]] | None:
    """First (dotted key, tensors) under :data:`STATE_DICT_KEYS`, looking ``depth`` levels down."""
    for key in STATE_DICT_KEYS:
        value = obj.get(key)
        if _is_tensor_mapping(value):
            return key, _plain(value)
    if depth > 1:
        for key in STATE_DICT_KEYS:
            value = obj.get(key)
            if isinstance(value, Mapping):
                found = _search(value, depth - 1)
                if found is not None:
                    return f"{key}.{found[0]}", found[1]
    return None


def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _plain(mapping: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain dict of plain tensors (``nn.Parameter`` values are detached, sharing memory)."""
    return {k: v.detach() if isinstance(v, torch.nn.Parameter) else v for k, v in mapping.items()}


def _holds_tensor(obj: Any, depth: int = 0) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 20:
        return False
    if isinstance(obj, Mapping):
        return any(_holds_tensor(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return any(_holds_tensor(v, depth + 1) for v in obj)
    return False


def _read_hf_dir(path: Path, map_location: str | torch.device, mmap: bool) -> RawCheckpoint:
    """Weights of a hub model directory, with the text of its config files as metadata."""
    config, weights = _hf_layout(path)
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    metadata = {n: (path / n).read_text(encoding="utf-8", errors="replace") for n in _HF_TEXT_FILES if n in files}
    weight_map = _weight_map(path / weights) if weights.endswith(".index.json") else {}
    shards = sorted(set(weight_map.values())) if weight_map else [weights]  # one file unless sharded
    extra: dict[str, Any] = {"files": files, "config_file": config, "weights_files": shards}
    tensors: dict[str, torch.Tensor] = {}
    st_metadata: dict[str, str] = {}
    for shard in shards:
        kind = sniff_format(path / shard)
        if kind == "safetensors":
            part, meta = _read_safetensors(path / shard, map_location)
            st_metadata.update(meta)
        elif kind == "torch":
            part, part_extra, _key = _read_torch(path / shard, map_location, mmap)
            extra.update({k: v for k, v in part_extra.items() if k not in extra})
        else:
            raise CheckpointError(
                f"Weights file '{path / shard}' is a {kind} file; expected safetensors or torch.save."
            )
        tensors.update(part)
    missing = [k for k in weight_map if k not in tensors]
    if missing:
        raise CheckpointError(
            f"'{path / weights}' lists {len(missing)} tensors that are in none of the shards "
            f"(e.g. {', '.join(missing[:3])}). A shard is incomplete; download it again."
        )
    if st_metadata:
        extra["safetensors_metadata"] = st_metadata
    return RawCheckpoint("hf_dir", path, tensors, metadata, extra)


def _weight_map(index_path: Path) -> dict[str, str]:
    """Tensor name -> shard file of a sharded-checkpoint index, shards checked to exist beside it."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError("tensor and shard names must be strings")
        if not weight_map:
            raise ValueError("the weight_map is empty")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"Shard index '{index_path}' is corrupted ({exc}); it must be JSON with a 'weight_map' "
            "of tensor names to shard files. Download it again."
        ) from None
    path = index_path.parent
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"Shard index '{index_path}' names a file outside its directory: {shard!r}.")
        if not (path / shard).is_file():
            raise CheckpointError(
                f"Shard '{shard}' listed in '{index_path}' is missing from '{path}'. Download all shards."
            )
    return weight_map
