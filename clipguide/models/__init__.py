"""Model code and the registry of named architectures (one JSON file per name in configs/)."""
from __future__ import annotations

from importlib import resources

from ..errors import ConfigError
from .clip import CLIP, PRECISIONS, VISION_TOWERS
from .config import CLIPConfig, TextConfig, VisionConfig


def list_models() -> list[str]:
    """Names of the built-in architectures."""
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("configs").iterdir()
                  if p.name.endswith(".json"))


def get_config(name: str) -> CLIPConfig:
    """The configuration of a named architecture."""
    path = resources.files(__package__).joinpath("configs", f"{name}.json")
    if not path.is_file():
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return CLIPConfig.from_json(path.read_text(), where=f"{name}.json")


def build_model(config: str | CLIPConfig | dict) -> CLIP:
    """A randomly initialised CLIP from a name, a config or a config dict."""
    if isinstance(config, str):
        config = get_config(config)
    elif isinstance(config, dict):
        config = CLIPConfig.from_dict(config)
    return CLIP(config)


__all__ = ["CLIP", "CLIPConfig", "VisionConfig", "TextConfig", "PRECISIONS", "VISION_TOWERS",
           "list_models", "get_config", "build_model"]
