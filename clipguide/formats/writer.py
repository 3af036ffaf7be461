"""Writing the project's own safetensors files: weights (optionally cast) plus a metadata header
with the format tag, format version, library version and the config, written atomically."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from clipguide.atomic import atomic_path
from clipguide.errors import ConfigError
from clipguide.version import __version__


def write_safetensors(path: str | os.PathLike, state: Mapping[str, torch.Tensor], *, format_tag: str,
                      config_json: str, dtype: torch.dtype | None = None, header: Mapping[str, str] | None = None,
                      metadata: Mapping[str, object] | None = None) -> Path:
    """Write `state` to `path`. `header` adds the writer's own metadata entries; `metadata` the
    caller's, which may not override any of them."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, seen = {}, set()
    for k, v in state.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        v = v.contiguous()
        if v.data_ptr() in seen:                 # safetensors refuses tensors that share storage
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    meta = {"format": format_tag, "format_version": "1", "clipguide_version": __version__, "config": config_json,
            **dict(header or {})}
    for k, v in (metadata or {}).items():
        if k in meta:
            raise ConfigError(f"metadata key {k!r} is reserved")
        meta[k] = str(v)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path
