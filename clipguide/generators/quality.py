"""How world-like a generator's unguided pictures are: the Frechet distance between the judge's
image embeddings of the generator's samples and of world renders (an FID measured in the features
of a model that never guides), with two references measured the same way: a second set of world
renders (the floor: what sampling noise alone gives) and flat pictures of the renders' mean colour
(a generator that has learnt only the palette).

    clipguide eval samples --generator stylegan --n 512
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError

WORLD_SEED = 123                       # renders to compare with: a seed no bundled generator trained on


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of features (N, D), in float64:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"frechet_distance takes two (N, D) feature sets of the same D, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if min(len(a), len(b)) < 2:
        raise InputError("frechet_distance needs at least 2 samples in each set")
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(sa)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp(min=0).sqrt().sum()
    return float(mu @ mu + sa.trace() + sb.trace() - 2 * cross)


def world_renders(n: int, seed: int = WORLD_SEED) -> torch.Tensor:
    """`n` world pictures (N, 3, 64, 64) in [0, 1]."""
    from ..world import World, WorldConfig

    world = World(WorldConfig(seed=seed))
    return torch.stack([world.sample(i).image for i in range(n)])


def unguided_samples(family: str, n: int, network: Any = None, batch: int = 32, seed: int = 0,
                     progress: bool = False) -> torch.Tensor:
    """`n` unguided pictures of a generator family (its start pictures from seeds seed, seed+1, ...)."""
    from . import build_generator, load_network

    net = load_network(family, network)
    out, bar = [], None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"{family} samples", unit="picture", dynamic_ncols=True)
    for k, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        with torch.no_grad():
            out.append(build_generator(family, network=net, batch=m, seed=seed + k)().float().cpu())
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    return torch.cat(out)


def _embed(judge, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """The judge's unit image embeddings (as its scoring computes them), `batch` pictures at a time."""
    from ..guide.score import _image

    return torch.cat([_image(judge, images[i:i + batch]) for i in range(0, len(images), batch)])


def sample_quality(judge, samples: torch.Tensor, n_reference: int | None = None) -> dict[str, float]:
    """The judge-feature Frechet distance of `samples` (N, 3, H, W in [0, 1]) to world renders, and
    of the two references (a second set of renders; flat pictures of the renders' mean colour)."""
    n = n_reference or len(samples)
    if n < 2 or len(samples) < 2:
        raise InputError("sample quality needs at least 2 samples and 2 reference renders")
    real = world_renders(2 * n)
    ref, other = real[:n], real[n:]
    flat = ref.mean(dim=(0, 2, 3), keepdim=True).expand(len(samples), -1, *samples.shape[-2:])
    f_ref = _embed(judge, ref)
    return {"fd": round(frechet_distance(_embed(judge, samples), f_ref), 4),
            "fd_world": round(frechet_distance(_embed(judge, other), f_ref), 4),
            "fd_flat": round(frechet_distance(_embed(judge, flat), f_ref), 4), "n": len(samples), "n_reference": n}
