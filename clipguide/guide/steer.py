"""The steering loop shared by every generator: optimise a latent so that the decoded images lower a
loss, with a schedule, a seed that makes runs bit-identical on the CPU, callbacks, periodic saves,
a timelapse, and an interruption (Ctrl-C or a callback) that returns the best images so far.

    gen = FourierImage(64, generator=torch.Generator().manual_seed(0))
    result = steer(gen, CLIPLoss(model, "a red star"), steps=100, lr=0.05, seed=0)
    result.save("star.png")          # PNG with provenance (prompts, seed, model hashes, settings)
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..version import __version__

Regulariser = tuple[Callable[[torch.Tensor], torch.Tensor], float]


class StopSteering(Exception):
    """Raise from a callback to end the run early; the result keeps the best images so far."""


@dataclass
class StepInfo:
    step: int
    loss: float
    images: torch.Tensor        # detached, (B, 3, H, W) in [0, 1]
    lr: float


@dataclass
class SteerResult:
    images: torch.Tensor                 # the best images (lowest loss), (B, 3, H, W) in [0, 1]
    last_images: torch.Tensor
    best_loss: float
    best_step: int
    losses: list[float]
    steps: int                           # steps run
    stopped: str | None = None           # why the run ended early (interrupted, non-finite loss, callback)
    seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    frames: list[torch.Tensor] = field(default_factory=list)

    def save(self, path: str | Path, index: int = 0) -> Path:
        """Write image `index` as PNG/JPEG/WebP; PNGs carry the provenance in text chunks."""
        from ..preprocess import save_image

        meta = {"clipguide": json.dumps(self.provenance, sort_keys=True)}
        return save_image(self.images[index], path, pnginfo=meta)

    def save_timelapse(self, path: str | Path, duration_ms: int = 80, index: int = 0) -> Path:
        """The frames recorded every `frame_every` steps as an animated GIF."""
        from ..atomic import atomic_path
        from ..preprocess import tensor_to_pil

        if not self.frames:
            raise InputError("no frames were recorded: pass frame_every=N to steer()")
        path = Path(path)
        if path.suffix.lower() != ".gif":
            raise InputError(f"timelapse {path}: only .gif is written")
        pics = [tensor_to_pil(f[index]) for f in self.frames]
        with atomic_path(path, suffix=".gif") as tmp:
            pics[0].save(tmp, save_all=True, append_images=pics[1:], duration=duration_ms, loop=0)
        return path


def stop_reason(error: BaseException, step: int) -> str:
    """Why a run ended early: Ctrl-C, or StopSteering raised by a callback (with its message)."""
    if isinstance(error, KeyboardInterrupt):
        return f"interrupted at step {step}"
    return f"stopped by the callback at step {step}" + (f": {error}" if str(error) else "")


def total_loss(loss_fn: Callable[..., torch.Tensor], images: torch.Tensor, rng: torch.Generator,
               regularisers: Sequence = ()) -> tuple[torch.Tensor, float]:
    """The guidance loss of `images` plus the weighted regularisers, and its value as a float."""
    loss = loss_fn(images, generator=rng)
    for fn, weight in regularisers:
        loss = loss + weight * fn(images).mean()
    return loss, float(loss.detach())


def model_hash(model: nn.Module) -> str:
    """Short SHA256 of a model's parameters and buffers (identifies the weights that guided)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def is_text_model(model: nn.Module, width: int, weights: str = "") -> bool:
    """Whether `model` embeds `width`-wide and, when `weights` (a model_hash) is recorded, has
    those weights: the check of a network trained on a CLIP's text embeddings."""
    return model.config.embed_dim == width and (not weights or model_hash(model) == weights)


def _provenance(loss_fn: Any, generator: nn.Module, settings: dict) -> dict:
    prov: dict[str, Any] = {"clipguide_version": __version__, "generator": type(generator).__name__, **settings}
    prompts = getattr(loss_fn, "prompts", None)
    if prompts is not None:
        prov["prompts"] = [{"text": p.text, "weight": p.weight, "stop": None if math.isinf(p.stop) else p.stop}
                           for p in prompts]
        prov["loss"] = getattr(loss_fn, "loss_form", None)
    members = getattr(loss_fn, "members", None)
    if members:
        prov["models"] = [{"hash": model_hash(m.model), "weight": m.weight,
                           "source": str(getattr(m.model, "source", "") or "")} for m in members]
    return prov


def steer(generator: nn.Module, loss_fn: Callable[..., torch.Tensor], steps: int = 100, lr: float = 0.05, *,
          seed: int = 0, optimizer: str = "adam", schedule: str = "cosine", warmup: int = 0,
          regularisers: Sequence[Regulariser] = (), callback: Callable[[StepInfo], None] | None = None,
          callback_every: int = 1, save_every: int = 0, out_dir: str | Path | None = None,
          frame_every: int = 0, progress: bool = True, settings: dict | None = None) -> SteerResult:
    """Optimise `generator`'s parameters to lower `loss_fn(generator(), generator=rng)` plus the
    weighted regularisers. Same seed, same result (bit-identical on the CPU).

    Ends early, keeping the best images, on Ctrl-C, on StopSteering raised by the callback, or on a
    non-finite loss (the images of the last finite step are kept)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    params = [p for p in generator.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{type(generator).__name__} has no parameters to optimise")
    opts = {"adam": lambda: torch.optim.Adam(params, lr=lr), "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)}
    if optimizer not in opts:
        raise InputError(f"optimizer {optimizer!r} is not one of {sorted(opts)}")
    if schedule not in ("cosine", "constant"):
        raise InputError(f"schedule {schedule!r} must be cosine or constant")
    opt = opts[optimizer]()
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    settings = {"steps": steps, "lr": lr, "seed": seed, "optimizer": optimizer, "schedule": schedule,
                **(settings or {})}
    provenance = _provenance(loss_fn, generator, settings)
    out = Path(out_dir) if out_dir is not None else None

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        if schedule == "constant":
            return lr
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="steer", unit="step", dynamic_ncols=True, leave=False)
    losses: list[float] = []
    frames: list[torch.Tensor] = []
    best_loss, best_step, best, last_good = math.inf, -1, None, None
    stopped = None
    start = time.perf_counter()
    step = 0
    try:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            images = generator()
            loss, value = total_loss(loss_fn, images, rng, regularisers)
            if not math.isfinite(value):
                stopped = f"non-finite loss at step {step}: kept the images of the last finite step"
                break
            shown = images.detach().clone()
            last_good = shown
            losses.append(value)
            if value < best_loss:
                best_loss, best_step, best = value, step, shown
            if frame_every and step % frame_every == 0:
                frames.append(shown)
            if callback is not None and step % callback_every == 0:
                callback(StepInfo(step, value, shown, lr_at(step)))
            if save_every and out is not None and step % save_every == 0:
                _save_step(out, step, shown, provenance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
    except (KeyboardInterrupt, StopSteering) as e:
        stopped = stop_reason(e, step)
    finally:
        if bar is not None:
            bar.close()
    if best is None:
        with torch.no_grad():
            best = last_good if last_good is not None else generator().detach()
    provenance.update(best_step=best_step, best_loss=best_loss if math.isfinite(best_loss) else None)
    return SteerResult(images=best, last_images=last_good if last_good is not None else best, best_loss=best_loss,
                       best_step=best_step, losses=losses, steps=len(losses), stopped=stopped,
                       seconds=time.perf_counter() - start, provenance=provenance, frames=frames)


def _save_step(out: Path, step: int, images: torch.Tensor, provenance: dict) -> None:
    from ..preprocess import save_image

    meta = {"clipguide": json.dumps({**provenance, "step": step}, sort_keys=True)}
    for i in range(images.shape[0]):
        save_image(images[i], out / f"step_{step:06d}_{i}.png", pnginfo=meta)
