"""The interface every generator adapter follows, so that `steer`, `CLIPLoss`, the command line and the
app drive pixels, Fourier images, VQGAN, StyleGAN2 and diffusion the same way.

A generator adapter is an ``nn.Module`` that

* holds a frozen network (no gradients, eval mode) and a latent: its trainable parameters
  (``requires_grad=True``) are exactly what steering optimises;
* returns images ``(B, 3, H, W)`` in [0, 1] from ``forward()``, differentiable w.r.t. the latent;
* starts from a seeded random latent or from an image (``init=``, images in [0, 1]);
* says how far the latent has moved from where it started (``latent_l2()``, per image), the
  identity-preserving term of an edit;
* runs a guided generation with ``run(loss_fn, steps, ...)``: optimising families use
  :func:`clipguide.steer`; samplers (diffusion) override ``run`` with their guided sampling loop.

Callers never ask which family they hold.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import InputError


class ClampWithGrad(torch.autograd.Function):
    """Clamp in the forward pass; in the backward pass let a gradient through wherever following it
    would move the value back into range (a plain clamp would zero it at saturated pixels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # descending moves x by -grad: keep the gradient unless it pushes further out of range
        outward = ((x < ctx.low) & (grad > 0)) | ((x > ctx.high) & (grad < 0))
        return grad.masked_fill(outward, 0.0), None, None


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Network output in [-1, 1] -> image in [0, 1], clamped with a gradient that still steers."""
    return ClampWithGrad.apply((x + 1) / 2, 0.0, 1.0)


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """Image in [0, 1] -> network input in [-1, 1]."""
    return images * 2 - 1


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode, no gradients for the weights (the latent is what moves)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def check_init(init: torch.Tensor, size: tuple[int, int] | None = None, batch: int | None = None) -> torch.Tensor:
    """An init image batch (B|1, 3, H, W) in [0, 1], resized to `size` and expanded to `batch`."""
    from ..preprocess import check_images

    x = check_images(init)
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"init images must be (B, 3, H, W), got {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if batch is not None and x.shape[0] != batch:
        if x.shape[0] != 1:
            raise InputError(f"init has {x.shape[0]} images for a batch of {batch}")
        x = x.expand(batch, -1, -1, -1)
    return x.contiguous()


def check_region(region, size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """An edit's region (H, W), (1, H, W) or (1|batch, 1, H, W) in [0, 1] (1: may change), as
    (1|batch, 1, H, W) floats resized to `size`."""
    r = torch.as_tensor(region).float()
    shape = tuple(r.shape)
    r = r[None, None] if r.dim() == 2 else r[None] if r.dim() == 3 and r.shape[0] == 1 else r
    if r.dim() != 4 or r.shape[1] != 1 or r.shape[0] not in (1, batch):
        raise InputError(f"a region must be (H, W), (1, H, W) or (B, 1, H, W) with B 1 or the batch ({batch}), "
                         f"got {shape}")
    if not torch.isfinite(r).all() or r.min() < 0 or r.max() > 1:
        raise InputError(f"region values must be in [0, 1] (1: may change), got {float(r.min()):g} to "
                         f"{float(r.max()):g} (a 0-255 mask: divide it by 255)")
    if tuple(r.shape[-2:]) != tuple(size):
        r = nn.functional.interpolate(r, size=size, mode="bilinear", align_corners=False)
    return r


# the search draws its random starts from seed + this, apart from the steering's own draws
SEARCH_SEED_OFFSET = 7919
# how a search sees each candidate start's picture: whole (one view, no augmentation; the default)
# or through the loss's own augmented views (cutouts)
SEARCH_VIEWS = ("whole", "augmented")
# starts a search decodes and ranks at once
SEARCH_CHUNK = 32


class Generator(nn.Module):
    """Base class of the adapters (see the module docstring). Subclasses set `family`, keep their
    latent as parameters, remember the starting latent in `start` and implement forward()."""

    family = "generator"
    from_image = False            # True when the start is an image's encoding or inversion (an edit)
    proposer = None               # set_proposer(): where a search draws its other starts (default: propose())

    def latent_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def latent_l2(self) -> torch.Tensor:
        """(B,) mean squared distance of the latent from where it started."""
        start = getattr(self, "start", None)
        params = self.latent_parameters()
        if start is None or len(params) != 1:
            raise NotImplementedError(f"{type(self).__name__} does not define latent_l2")
        d = (params[0] - start.to(params[0])) ** 2
        return d.reshape(d.shape[0], -1).mean(dim=1)

    def prepare(self) -> None:
        """Make the start ready to be read directly (`start`, the latent): a generator that derives it
        from its init image on first use (diffusion's inversion) does so now; the others have it."""

    def set_start(self, latent: torch.Tensor) -> None:
        """Start from `latent` (1|B, ...), shaped like the latent (e.g. a text prior's prediction):
        both the latent and the point latent_l2() measures from are set to it."""
        params = self.latent_parameters()
        start = getattr(self, "start", None)
        if len(params) != 1 or start is None:
            raise InputError(f"{type(self).__name__} has no single latent to start from a given one")
        latent = latent.detach().to(params[0])
        if latent.shape[1:] != params[0].shape[1:] or latent.shape[0] not in (1, params[0].shape[0]):
            raise InputError(f"a start latent of shape {tuple(latent.shape)} does not fit this generator's latent "
                             f"{tuple(params[0].shape)}")
        with torch.no_grad():
            params[0].copy_(latent.expand_as(params[0]))
            start.copy_(latent.expand_as(start).to(start))

    # --- search: the guide chooses the start among random ones ------------------------------------
    def condition(self, prompt: str | None, source: str | None = None) -> None:
        """Draw `prompt` (None: unconditionally); `source` says what an init image shows. Only
        text-conditional networks (a diffusion UNet2DModel that reads CLIP text embeddings as its
        class label) take them; every other generator draws the same either way."""

    def restrict(self, region: torch.Tensor | None) -> None:
        """Only `region` ((1|B, 1, H, W) in [0, 1], 1: may change; None: all) of the init image is
        to change. Samplers that draw step by step (diffusion) hold the rest to the image's own
        path; the others leave it to the edit's loss, which sees the region composited."""

    def set_proposer(self, proposer: Callable[[int, torch.Generator], torch.Tensor] | None) -> None:
        """Let a search draw its other starts from `proposer(n, generator)` (n latents shaped like rows
        of the latent; e.g. a sampling text prior's drafts of the prompt) instead of propose(); None
        restores propose()."""
        self.proposer = proposer

    def propose(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """`n` random starting latents for one picture, stacked like rows of the latent. Families
        whose random starts are worth choosing among (a generator network's samples) implement it."""
        raise InputError(f"{type(self).__name__} has no random starts to search among (search=1 turns the "
                         "search off)")

    def decode(self, latent: torch.Tensor, index: int = 0) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] of N latents shaped like rows of the latent, drawn with the
        fixed per-picture state (noise) of batch item `index`."""
        raise NotImplementedError(f"{type(self).__name__} does not define decode")

    def start_candidates(self, index: int, search: int, generator: torch.Generator) -> torch.Tensor:
        """The starts a search weighs for picture `index`: its current latent row and `search - 1`
        drawn from `generator` by the proposer (or propose()), stacked like rows of the latent."""
        latent = self.latent_parameters()[0]
        rows = latent[index:index + 1].detach()
        if search > 1:
            rows = torch.cat([rows, (self.proposer or self.propose)(search - 1, generator).to(latent)])
        return rows

    def choose_start(self, loss_fn: Callable[..., torch.Tensor], search: int, seed: int = 0,
                     chunk: int = SEARCH_CHUNK, view: str = "whole") -> torch.Tensor:
        """For each picture, score its current latent (the seeded start, on a fresh generator) and
        `search - 1` random ones (the proposer's or propose(), drawn from seed + SEARCH_SEED_OFFSET) by
        `loss_fn` on the decoded pictures, forward only, `chunk` at a time, and start from the
        lowest. `view`: "whole" ranks the whole pictures, "augmented" the loss's own augmented views
        drawn from `seed` for each chunk (ranking_losses). Returns the chosen starts' losses (B,)."""
        if isinstance(search, bool) or not isinstance(search, int) or search < 1:
            raise InputError(f"search (how many starts the guide chooses among) must be an integer >= 1, "
                             f"got {search!r}")
        check_search_view(view)
        if self.from_image and search > 1:
            raise InputError("this generator starts from an image; a search would replace it with random starts "
                             "(search=1 keeps it)")
        params = self.latent_parameters()
        start = getattr(self, "start", None)
        if len(params) != 1 or start is None:
            raise InputError(f"{type(self).__name__} cannot search its starts")
        latent = params[0]
        rng = torch.Generator(device="cpu").manual_seed(int(seed) + SEARCH_SEED_OFFSET)
        chosen = []
        with torch.no_grad():
            for b in range(latent.shape[0]):
                candidates = self.start_candidates(b, search, rng)
                losses = torch.cat([ranking_losses(loss_fn, self.decode(part, b), seed, view)
                                    for part in candidates.split(chunk)])
                best = int(losses.argmin())
                latent[b] = candidates[best]
                start[b] = candidates[best].to(start)
                chosen.append(losses[best])
        return torch.stack(chosen)

    def run(self, loss_fn: Callable[..., torch.Tensor], steps: int = 100, lr: float = 0.05, *, seed: int = 0,
            latent_weight: float = 0.0, strength: float | None = None, search: int = 1, search_view: str = "whole",
            settings: dict | None = None, **kwargs):
        """Guided generation: optimise the latent with :func:`clipguide.steer` (see its options).
        `search` > 1 first lets the loss choose each picture's start among that many (the current
        latent, which is the seeded start on a fresh generator, and random others), seeing their
        pictures as `search_view` says (choose_start()). `latent_weight` > 0 adds that multiple of
        latent_l2() to the loss (keeps an edit close). `strength` is for samplers (how far up its
        schedule an edit takes its image); optimisation starts from the image itself and does not
        use it."""
        from ..guide.steer import steer

        settings = self.search_start(loss_fn, search, seed, search_view, settings)
        fn = loss_fn if not latent_weight else _WithLatentL2(loss_fn, self, latent_weight)
        return steer(self, fn, steps=steps, lr=lr, seed=seed, settings=settings, **kwargs)

    def search_start(self, loss_fn: Callable[..., torch.Tensor], search: int, seed: int, view: str,
                     settings: dict | None) -> dict | None:
        """run()'s search: choose the start when `search` != 1, and return the run's settings with
        the search and its view added (unchanged without a search)."""
        check_search_view(view)
        if search == 1:
            return settings
        self.choose_start(loss_fn, search, seed, view=view)
        return {**(settings or {}), "search": search, "search_view": view}


def check_search_view(view: str) -> None:
    if view not in SEARCH_VIEWS:
        raise InputError(f"search_view {view!r} is not one of {SEARCH_VIEWS} (how a search sees each start's "
                         "picture: whole, or through the loss's augmented views)")


def ranking_losses(loss_fn: Callable[..., torch.Tensor], images: torch.Tensor, seed: int = 0,
                   view: str = "whole") -> torch.Tensor:
    """(N,) losses a search ranks N pictures by, without gradients. "whole": the loss of each whole
    picture when the loss offers it (CLIPLoss.whole_picture_losses: one view, no cutouts); a loss
    that does not (any other callable) is called as "augmented" calls it, and sees the pictures as
    it sees them. "augmented": the loss called on the pictures with a generator seeded by `seed`
    (per_image_loss), so its own augmented views."""
    whole = getattr(loss_fn, "whole_picture_losses", None)
    if view == "whole" and whole is not None:
        with torch.no_grad():
            return whole(images).detach().float()
    return per_image_loss(loss_fn, images, seed)


def reported_losses(loss_fn: Callable[..., torch.Tensor], n: int) -> torch.Tensor | None:
    """(n,) per-picture losses a loss reported for its last call on n pictures (CLIPLoss keeps them
    in `last["per_image"]`), or None when it reports none."""
    last = getattr(loss_fn, "last", None)
    per = last.get("per_image") if isinstance(last, dict) else None
    return per.detach().float() if torch.is_tensor(per) and per.shape == (n,) else None


def per_image_loss(loss_fn: Callable[..., torch.Tensor], images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) losses of N pictures, without gradients; the augmentations are drawn from a generator
    seeded with `seed`, so equal seeds give every call the same views. A loss that reports its
    per-picture values (CLIPLoss's `last["per_image"]`) is called once; any other callable once a
    picture."""
    with torch.no_grad():
        value = loss_fn(images, generator=torch.Generator(device="cpu").manual_seed(int(seed)))
        per = reported_losses(loss_fn, images.shape[0])
        if per is not None:
            return per
        if images.shape[0] == 1:
            return value.detach().float().reshape(1)
        return torch.cat([per_image_loss(loss_fn, images[i:i + 1], seed) for i in range(images.shape[0])])


class _WithLatentL2:
    """A loss plus a multiple of the generator's latent_l2(); keeps the loss's prompts and models
    visible for the provenance."""

    def __init__(self, loss_fn, generator: Generator, weight: float):
        self.loss_fn, self.generator, self.weight = loss_fn, generator, weight
        for name in ("prompts", "members", "loss_form"):
            setattr(self, name, getattr(loss_fn, name, None))

    def __call__(self, images, generator=None):
        return self.loss_fn(images, generator=generator) + self.weight * self.generator.latent_l2().mean()
