"""Generators behind one interface (see base.py): a latent, a frozen network, images in [0, 1].

    gen = build_generator("stylegan", model="550000.pt", seed=0)    # or pixels, fourier, vqgan, diffusion
    result = gen.run(CLIPLoss(clip, "a gothic church"), steps=100)

Families are looked up in GENERATORS (name -> builder); nothing outside this file asks which family
it holds. The network of a trained family comes from `model`: a path (a taming .ckpt with `config=`
its YAML, a rosinality .pt, a diffusers pipeline directory, or the project's own safetensors), or the
bundled model of the family (None).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError, WeightsNotFoundError
from .base import ClampWithGrad, Generator, check_init, freeze, from_unit, to_unit

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# the bundled network of each trained family (a file or directory under clipguide/assets)
BUNDLED = {"vqgan": "world-vqgan.safetensors", "stylegan": "world-stylegan.safetensors",
           "diffusion": "world-diffusion"}


def _resolve(family: str, model: Any) -> Any:
    """A path or loaded network for `model`; None means the bundled one of the family."""
    if model is not None and not isinstance(model, (str, Path)):
        return model                                             # already a network
    if model is None or model == "default":
        path = ASSETS / BUNDLED[family]
        if not path.exists():
            raise WeightsNotFoundError(f"no bundled {family} model in this installation ({path.name}); pass "
                                       f"model=PATH (on the command line --generator-model PATH)")
        return path
    path = Path(model).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"{family} model '{model}' not found: give a file or directory path")
    return path


def has_bundled_generator(family: str) -> bool:
    """Whether this installation carries a trained network for `family` (pixels, Fourier: none needed)."""
    if family not in GENERATORS:
        raise InputError(f"generator {family!r} is not one of {sorted(GENERATORS)}")
    return family not in BUNDLED or (ASSETS / BUNDLED[family]).exists()


def load_network(name: str, model: Any = None, **options) -> Any:
    """The frozen network of family `name` (None for pixels and Fourier), loaded once so that many
    generators can share it: `model` is a path, a loaded network, or None for the bundled one."""
    if name not in GENERATORS:
        raise InputError(f"generator {name!r} is not one of {sorted(GENERATORS)}")
    loader = _LOADERS.get(name)
    if loader is None:
        return None
    net = _resolve(name, model)
    return loader(net, **options) if isinstance(net, Path) else net


def _load_vqgan(path, config=None):
    from .vqgan import load_vqgan
    return load_vqgan(path, config)


def _load_stylegan(path):
    from .stylegan import load_stylegan
    return load_stylegan(path)


def _load_diffusion(path):
    from .diffusion import load_diffusion
    return load_diffusion(path)


def _pixels(net, size, batch, init, rng, **kw):
    from ..guide.params import PixelImage
    return PixelImage(size or 64, batch, init=init, generator=rng, **kw)


def _fourier(net, size, batch, init, rng, **kw):
    from ..guide.params import FourierImage
    return FourierImage(size or 64, batch, init=init, generator=rng, **kw)


def _grade(net, size, batch, init, rng, **kw):
    from ..guide.params import GradedImage
    return GradedImage(size or 64, batch, init=init, generator=rng, **kw)


def _vqgan(net, size, batch, init, rng, **kw):
    from .vqgan import VQGANLatent
    return VQGANLatent(net, size=size or 64, batch=batch, init=init, generator=rng, **kw)


def _stylegan(net, size, batch, init, rng, **kw):
    from .stylegan import StyleGANLatent
    if size is not None and tuple(size if isinstance(size, (tuple, list)) else (size, size)) != (net.config.size,) * 2:
        raise InputError(f"this StyleGAN2 makes {net.config.size} px images, not {size}: leave the size unset "
                         "or resize the result")
    return StyleGANLatent(net, batch=batch, init=init, generator=rng, **kw)


def _diffusion(net, size, batch, init, rng, **kw):
    from .diffusion import DiffusionLatent
    size = size or int(net.unet.config.sample_size) * net.scale_factor
    return DiffusionLatent(net, size=size, batch=batch, init=init, generator=rng, **kw)


GENERATORS: dict[str, Callable[..., Generator]] = {
    "pixels": _pixels, "fourier": _fourier, "grade": _grade, "vqgan": _vqgan, "stylegan": _stylegan,
    "diffusion": _diffusion}
# the families that only change a given image (edits), never draw one from a random start
EDIT_ONLY: tuple[str, ...] = ("grade",)
# the families whose run() can search among random starts (their networks draw them)
SEARCHING: tuple[str, ...] = ("vqgan", "stylegan", "diffusion")
_LOADERS: dict[str, Callable[..., Any]] = {"vqgan": _load_vqgan, "stylegan": _load_stylegan,
                                           "diffusion": _load_diffusion}


# The steps, learning rate and total-variation weight a family is steered with when the caller gives
# none. Fourier: measured on the world's 52-prompt suite with the bundled guide, these give 15.4%
# of the pictures judged right by judge and oracle against 0% at the generic 100 steps, lr 0.05
# (README, Guidance); the other families keep the generic settings they were measured with.
STEERING_BASE: dict[str, float] = {"steps": 100, "lr": 0.05, "tv": 0.0}
_STEERING: dict[str, dict[str, float]] = {"fourier": {"steps": 300, "lr": 0.5, "tv": 100.0}}


def steering_defaults(name: str, steps: int | None = None, lr: float | None = None,
                      tv: float | None = None) -> tuple[int, float, float]:
    """(steps, lr, tv) for steering family `name`: the values given, and the family's own settings
    for those left None."""
    if name not in GENERATORS:
        raise InputError(f"generator {name!r} is not one of {sorted(GENERATORS)}")
    own = {**STEERING_BASE, **_STEERING.get(name, {})}
    return (int(own["steps"] if steps is None else steps), float(own["lr"] if lr is None else lr),
            float(own["tv"] if tv is None else tv))


# The weight an edit holds the picture near the original with when the caller gives none. The
# grade needs no such pull, since 12 numbers cannot draw or move anything: on the world's 30-edit
# study it applies 18 edits at 0 (15 toward the rendered truth) against 13 (9) at 1.
EDIT_PRESERVE = 1.0
_EDIT_PRESERVE: dict[str, float] = {"grade": 0.0}


def edit_preserve(name: str, preserve: float | None = None) -> float:
    """The preservation weight an edit with family `name` uses: `preserve`, or the family's own."""
    if name not in GENERATORS:
        raise InputError(f"generator {name!r} is not one of {sorted(GENERATORS)}")
    return float(_EDIT_PRESERVE.get(name, EDIT_PRESERVE) if preserve is None else preserve)


# How each family constrains image sides: a fixed size, or a multiple of the latent grid's cell.
_FIXED_SIZE: dict[str, Callable[[Any], int]] = {"stylegan": lambda net: net.config.size}
_SIZE_MULTIPLE: dict[str, Callable[[Any], int]] = {"vqgan": lambda net: net.factor,
                                                  "diffusion": lambda net: net.size_multiple}


def working_size(name: str, network: Any, size: tuple[int, int]) -> tuple[int, int]:
    """The size nearest below `size` (h, w) that family `name` with `network` can make."""
    if name in _FIXED_SIZE:
        side = _FIXED_SIZE[name](network)
        return (side, side)
    f = _SIZE_MULTIPLE[name](network) if name in _SIZE_MULTIPLE else 1
    h, w = size
    return (max(f, h // f * f), max(f, w // f * f))


def build_generator(name: str, *, size: int | None = None, batch: int = 1, init: torch.Tensor | None = None,
                    seed: int = 0, model: Any = None, network: Any = None, **options) -> torch.nn.Module:
    """A generator adapter of family `name`, seeded by `seed` (same seed, same start). The network
    of a trained family is `network` (from load_network, shared between calls) or loaded from
    `model` (path, or None for the bundled one). `size` defaults to 64 px or the network's own size;
    `options` go to the adapter (e.g. space="w" for StyleGAN2, sample_steps=20 for diffusion)."""
    if network is None:
        network = load_network(name, model)
    rng = torch.Generator().manual_seed(int(seed))
    return GENERATORS[name](network, size, batch, init, rng, **options)


__all__ = ["Generator", "GENERATORS", "EDIT_ONLY", "EDIT_PRESERVE", "SEARCHING", "STEERING_BASE", "build_generator",
           "edit_preserve", "load_network", "working_size", "steering_defaults", "ClampWithGrad", "to_unit",
           "from_unit", "freeze", "check_init"]
