"""Small typed configurations: dataclasses read from dicts / JSON, unknown keys and wrong types
rejected, dotted `key=value` overrides parsed against the field types."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError


def coerce(value: Any, want: Any) -> tuple[bool, Any]:
    """Whether `value` fits the annotation `want`, and the value converted (lists become tuples)."""
    origin = typing.get_origin(want)
    if want is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(want):
            ok, v = coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if want is type(None):
        return value is None, value
    if origin is tuple:
        (item, _ellipsis) = typing.get_args(want)
        if not isinstance(value, (list, tuple)) or not value:
            return False, value
        items = [coerce(x, item) for x in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict:
        return isinstance(value, dict), value
    if isinstance(value, bool) and want is not bool:
        return False, value
    if want is float:
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if isinstance(want, type):
        return isinstance(value, want), value
    return False, value


def check_positive_ints(cfg: Any, names: tuple[str, ...], prefix: str) -> None:
    """ConfigError unless every field `names` of `cfg` is an int >= 1 (a bool is not)."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{prefix}{name} must be a positive integer, got {v!r}")


def reject_unknown_keys(cls: type, data: Any, where: str) -> None:
    """ConfigError unless `data` is a mapping whose keys are all fields of dataclass `cls`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping (JSON object), got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")


def check_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """`data` checked against the fields of dataclass `cls`: unknown keys and wrong types raise
    ConfigError. Nested dataclass fields are passed through for their own class to check."""
    reject_unknown_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]):
            out[k] = v
            continue
        ok, v2 = coerce(v, hints[k])
        if not ok:
            raise ConfigError(f"{where}: key {k!r} must be {hints[k]}, got {v!r}")
        out[k] = v2
    return out


def read_json(text: str, where: str) -> Any:
    """`text` parsed as JSON; ConfigError naming `where` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None


def override_flags(cfg: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The `--set key=value` flags that rebuild dataclass `cfg` from its defaults, in field order: a
    field that differs from its default, and every item of a dict field (`--set name.key=value`)."""
    flags = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in skip:
            continue
        if isinstance(v, dict):
            flags += [f"--set {f.name}.{k}={json.dumps(x, separators=(',', ':'))}" for k, x in sorted(v.items())]
        elif v != f.default:
            flags.append(f"--set {f.name}={v if isinstance(v, str) else json.dumps(v)}")
    return flags


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as JSON when it parses, else as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
