"""Reading the weights of a TorchScript archive without running it.

A TorchScript archive (what ``torch.jit.save`` writes) is a zip holding ``<prefix>/data.pkl``
(the pickled module tree), ``<prefix>/data/<key>`` (raw tensor storages), ``<prefix>/code/...``
(the module code) and ``<prefix>/constants.pkl``. ``torch.jit.load`` would compile and run that
code; this module never does. It unpickles ``data.pkl`` with a restricted unpickler that:

* resolves only tensor-rebuild functions, storage types, dtypes and a few inert containers;
* turns every ``__torch__.*`` class into an inert stub that only records its pickled state;
* reads storages straight from the zip entries named by the pickle's persistent ids;
* refuses every other global with a :class:`CheckpointError` before anything is called.

Which tensor attributes are parameters or buffers is read from the ``__parameters__`` and
``__buffers__`` lines of the class definitions in ``code/``, as plain text (never executed), so
the result matches the archive module's own ``state_dict()``.
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from clipguide.errors import CheckpointError

__all__ = ["read_torchscript", "is_torchscript_archive"]

_CHUNK = 1 << 20  # bytes read from a zip entry at a time
_MAX_EXTRA_FILE = 1 << 20  # extra/<name> files larger than this are not copied to metadata
_MAX_DEPTH = 200  # module nesting deeper than this is treated as a corrupt archive

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
# Read from the module's namespace dict so that no lazy torch attribute hook can run.
_DTYPES: dict[str, torch.dtype] = {k: v for k, v in vars(torch).items() if isinstance(v, torch.dtype)}


def is_torchscript_archive(names: list[str]) -> bool:
    """Whether a zip's entry names are those of a TorchScript archive (not a plain torch.save)."""
    prefix = _archive_prefix(names)
    if prefix is None:
        return False
    return f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names)


def _archive_prefix(names: list[str]) -> str | None:
    """The top folder holding ``data.pkl`` (``torch.save`` and ``torch.jit.save`` both use one)."""
    prefixes = [n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    return prefixes[0] if len(prefixes) == 1 else None


# --- inert stand-ins for the pickle's objects ----------------------------------------------------


class ScriptObject:
    """Inert stand-in for an instance of a TorchScript class: it only keeps the pickled state."""

    qualname: ClassVar[str] = "?"
    state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> ScriptObject:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` and friends resolve to: just the element type."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """A storage read from the archive, with the element type the pickle gave it."""

    data: torch.UntypedStorage
    dtype: torch.dtype


class _ForbiddenGlobal(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """Build a tensor view on a storage; replaces ``torch._utils._rebuild_tensor(_v2)``.

    Gradient flags, backward hooks and metadata are ignored: the result is a plain tensor.
    """
    if not isinstance(storage, _Storage):
        raise TypeError(f"tensor rebuilt from a {type(storage).__name__}, expected a storage")
    tensor = torch.empty((0,), dtype=storage.dtype)
    return tensor.set_(storage.data, int(offset), tuple(size), tuple(stride))


def _restore_type_tag(value: Any, _type_str: str) -> Any:
    return value


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}

_QUALNAME_RE = re.compile(r"__torch__(\.[A-Za-z_][A-Za-z0-9_]*)*")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` with an allowlist; storages come from the zip, classes become stubs."""

    def __init__(self, file: Any, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self._zf = zf
        self._prefix = prefix
        self._stubs: dict[str, type[ScriptObject]] = {}
        self._storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        qualname = f"{module}.{name}"
        if _QUALNAME_RE.fullmatch(qualname):
            if qualname not in self._stubs:
                self._stubs[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
            return self._stubs[qualname]
        raise _ForbiddenGlobal(qualname)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise ValueError(f"unexpected persistent id {pid!r:.100}")
        kind, key = pid[1], str(pid[2])
        dtype = kind.dtype if isinstance(kind, _StorageType) else kind
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"storage {key!r} has unknown element type {kind!r:.100}")
        if key not in self._storages:  # one storage, many views: read it once
            self._storages[key] = _read_entry(self._zf, f"{self._prefix}/data/{key}")
        return _Storage(self._storages[key], dtype)


def _read_entry(zf: zipfile.ZipFile, name: str) -> torch.UntypedStorage:
    """Read one zip entry into a fresh CPU storage, without an intermediate full copy."""
    info = zf.getinfo(name)
    buf = bytearray(info.file_size)
    view = memoryview(buf)
    pos = 0
    with zf.open(info) as f:
        while pos < len(buf):
            n = f.readinto(view[pos : pos + _CHUNK])
            if not n:
                raise EOFError(f"entry {name} ends after {pos} of {len(buf)} bytes")
            pos += n
    if not buf:
        return torch.UntypedStorage(0)
    return torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()


# --- module tree -> state dict -------------------------------------------------------------------

_CLASS_RE = re.compile(r"^class (\w+)\(", re.M)
_DECL_RE = re.compile(r"^[ \t]+__(?:parameters|buffers)__ = \[([^\]]*)\]", re.M)


class _Declarations:
    """Parameter and buffer names per TorchScript class, read as text from ``code/``."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str) -> None:
        self._zf = zf
        self._prefix = prefix
        self._files: dict[str, dict[str, frozenset[str]]] = {}

    def state_names(self, qualname: str) -> frozenset[str] | None:
        """Declared parameter and buffer names of a class; ``None`` if its code is not found.

        A class without declarations (a TorchScript class that is not a module) has none.
        """
        module, _, cls = qualname.rpartition(".")
        path = f"{self._prefix}/code/{module.replace('.', '/')}.py"
        if path not in self._files:
            self._files[path] = self._parse(path)
        return self._files[path].get(cls)

    def _parse(self, path: str) -> dict[str, frozenset[str]]:
        try:
            text = self._zf.read(path).decode("utf-8", errors="replace")
        except KeyError:
            return {}
        starts = list(_CLASS_RE.finditer(text))
        classes: dict[str, frozenset[str]] = {}
        for i, match in enumerate(starts):
            end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
            decls = _DECL_RE.findall(text, match.end(), end)
            classes[match.group(1)] = frozenset(n for d in decls for n in re.findall(r'"([^"]*)"', d))
        return classes


def _flatten(root: Any, decls: _Declarations) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Dotted-name tensors (parameters and buffers) and scalar attributes of a stub module tree."""
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}

    def visit(obj: ScriptObject, prefix: str, path: tuple[int, ...]) -> None:
        if id(obj) in path or len(path) > _MAX_DEPTH or not isinstance(obj.state, dict):
            return
        names = decls.state_names(obj.qualname)  # None: code missing, keep every tensor
        items = [(k, v) for k, v in obj.state.items() if isinstance(k, str)]
        for key, value in items:
            if isinstance(value, torch.Tensor) and (names is None or key in names):
                tensors[prefix + key] = value
        for key, value in items:
            if isinstance(value, ScriptObject):
                visit(value, f"{prefix}{key}.", (*path, id(obj)))
            elif isinstance(value, (bool, int, float, str)) and key != "training":
                extra[prefix + key] = value

    if not isinstance(root, ScriptObject):
        raise TypeError(f"data.pkl holds a {type(root).__name__}, expected a TorchScript module")
    visit(root, "", ())
    return tensors, extra


# --- entry point ---------------------------------------------------------------------------------


def read_torchscript(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Tensors, scalar attributes and ``extra/`` text files of a TorchScript archive.

    Nothing in the archive is executed. Storages are read into memory (one copy) and the zip is
    closed before returning. Raises :class:`CheckpointError` for unsafe or damaged archives.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            prefix = _archive_prefix(names)
            if prefix is None:
                raise CheckpointError(
                    f"'{path}' is a zip archive but not a TorchScript archive this library can read: "
                    "it has no single '<folder>/data.pkl' entry (very old TorchScript archives with "
                    "model.json are not supported). Load it with torch.jit.load in a trusted "
                    "environment and save module.state_dict() with torch.save or safetensors."
                )
            byteorder = f"{prefix}/byteorder"
            if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
                raise CheckpointError(
                    f"'{path}' is a big-endian TorchScript archive, which is not supported. Re-save "
                    "its state_dict() with torch.save or safetensors on a little-endian machine."
                )
            with zf.open(f"{prefix}/data.pkl") as f:
                root = _RestrictedUnpickler(f, zf, prefix).load()
            tensors, extra = _flatten(root, _Declarations(zf, prefix))
            metadata = _extra_files(zf, prefix)
    except CheckpointError:
        raise
    except _ForbiddenGlobal as exc:
        raise CheckpointError(
            f"Refusing to read '{path}': this TorchScript archive's data.pkl references code or "
            f"objects that clipguide will not unpickle ({exc.name}). Nothing from the file was "
            "executed. If you trust the file, load it with torch.jit.load in a trusted environment "
            "and save module.state_dict() with torch.save or safetensors.torch.save_file, then "
            "read that file instead."
        ) from None
    except Exception as exc:  # damaged archive: bad zip entry, CRC error, truncated pickle, ...
        raise CheckpointError(
            f"Cannot read TorchScript archive '{path}': it is damaged or truncated "
            f"({type(exc).__name__}: {exc}). Download or export it again."
        ) from exc
    device = torch.device(map_location)
    if device.type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, extra, metadata


def _extra_files(zf: zipfile.ZipFile, prefix: str) -> dict[str, str]:
    """Text of the ``extra/<name>`` files that ``torch.jit.save(_extra_files=...)`` stores."""
    out: dict[str, str] = {}
    for info in zf.infolist():
        name = info.filename
        if name.startswith(f"{prefix}/extra/") and not name.endswith("/") and info.file_size <= _MAX_EXTRA_FILE:
            out[name[len(prefix) + 1 :]] = zf.read(info).decode("utf-8", errors="replace")
    return out
