"""Editing a real image by text: start every generator from the image, steer it toward the prompt
(or along the direction from a source text to the prompt, as in StyleGAN-NADA), and keep what should
not change close to the original.

    result = edit_image(clip, image, "a church at night", source="a church at day")
    result.save("night.png")

Preservation: the pixels stay near the original (squared distance, weight `preserve`: 1 unless
given, 0 for the colour grade, which cannot draw or move anything), and the latent stays near the
image's own latent (weight `latent_weight`, for generators that have one).
A mask (1 = may change, soft values blend) limits the edit to a region: every picture the loss sees,
and the result, is the generated picture inside the mask over the original outside it, so nothing
outside the mask changes, whatever the generator. The generator's own picture is also held near the
original outside the mask (weight `outside`): where its parameters act on the whole picture (a
colour grade's matrix, a StyleGAN latent) that keeps the change to what only the mask holds, so a
loose mask's margin of background does not take the new colour along with the object.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..preprocess import check_images


def _fit_size(generator: str, image: torch.Tensor, size: int | None, network) -> tuple[int, int]:
    """The size an edit works at: `size`, else the image's own (capped at 256 px), as the generator
    can make it (see generators.working_size)."""
    from ..generators import working_size

    h, w = image.shape[-2:]
    if size is None:
        scale = min(1.0, 256 / max(h, w))
        h, w = max(8, round(h * scale)), max(8, round(w * scale))
    else:
        h = w = size
    return working_size(generator, network, (h, w))


class _Masked:
    """A loss of the composite mask * images + (1 - mask) * original; keeps the wrapped loss's
    prompts and models visible for the provenance."""

    def __init__(self, loss_fn, original: torch.Tensor, mask: torch.Tensor):
        self.loss_fn, self.original, self.mask = loss_fn, original, mask
        for name in ("prompts", "members", "loss_form"):
            setattr(self, name, getattr(loss_fn, name, None))

    def composite(self, images: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(images)
        return m * images + (1 - m) * self.original.to(images)

    def __call__(self, images, generator=None):
        return self.loss_fn(self.composite(images), generator=generator)


def _redraw_from_prior(gen, prior, model, prompt, source: str | None, region: torch.Tensor | None, seed: int):
    """Start `gen` (started from the image) from the prior's redraw of its latent for `prompt`;
    returns the loaded prior."""
    from ..generators.prior import check_guide, load_prior, prompt_embedding
    from .suite import prior_generator, prior_latent_of

    prior = load_prior(prior)
    if not isinstance(prompt, str):
        raise InputError("an edit with a prior takes one prompt string (weights inside it: 'a | b:0.5')")
    latent = prior_latent_of(gen, prior)
    check_guide(prior, model)
    target = prompt_embedding(model, [prompt])
    before = prompt_embedding(model, [source]) if source else None
    cells = None
    if region is not None:                        # the latent cells the mask touches
        cells = F.adaptive_max_pool2d((region > 0.5).float(), tuple(latent.shape[-2:]))[:, 0] > 0
    gen.set_start(prior.redraw(latent.detach(), target, before, cells, prior_generator(seed)))
    return prior


def edit_image(model, image: torch.Tensor, prompt, *, source: str | None = None, generator: str = "fourier",
               mask: torch.Tensor | None = None, preserve: float | None = None, outside: float = 10.0,
               latent_weight: float = 0.0, steps: int = 100, lr: float = 0.05, cutouts: int = 16, seed: int = 0,
               size: int | None = None, strength: float | None = None, network=None, generator_model=None,
               generator_options: dict | None = None, progress: bool = True, frame_every: int = 0, callback=None,
               callback_every: int = 1, run_options: dict | None = None, prior=None):
    """Edit `image` (1, 3, H, W) in [0, 1] toward `prompt` with guide `model`. With `source` (what the
    image shows now) the loss is directional. `strength` is how far up its schedule a diffusion edit
    takes the image (in (0, 1]; default: all the way for DDIM inversion, 0.6 for SDEdit's noise).
    `callback(StepInfo)` runs every `callback_every` steps; `run_options` go to the generator's
    run() (diffusion: guidance_scale, and edit_start "inversion" or "noise", how the image is taken
    up the schedule; the mask, as the generator's region, is held at every sampling step).
    `prior`: a token prior (generators.prior) first redraws part of the image's codes for the
    prompt (those under the mask, or without one those it finds unlikely for the prompt against the
    source text), and guidance goes on from there. Returns a SteerResult whose provenance records
    the edit."""
    from ..generators import build_generator, edit_preserve, load_network
    from .augment import Cutouts
    from .loss import CLIPLoss
    from .regularisers import l2_to

    image = check_images(image)
    if image.dim() != 4 or image.shape[0] != 1:
        raise InputError(f"edit one image at a time: got a batch of shape {tuple(image.shape)}")
    preserve = edit_preserve(generator, preserve)
    if preserve < 0 or latent_weight < 0 or outside < 0:
        raise InputError("preserve, outside and latent_weight must be >= 0")
    if network is None:
        network = load_network(generator, generator_model)
    hw = _fit_size(generator, image, size, network)
    target = F.interpolate(image, size=hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1) \
        if tuple(image.shape[-2:]) != tuple(hw) else image
    region = None
    if mask is not None:
        m = mask.float()
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[:1][None] if m.shape[0] in (1, 3, 4) else m[None, :1]
        if m.dim() != 4:
            raise InputError(f"mask must be (H, W), (1, H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
        m = m[:, :1]
        if m.max() > 1 or m.min() < 0:
            raise InputError("mask values must be in [0, 1] (1 = may change)")
        region = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
        if region.max() < 1e-3:
            raise InputError("the mask is empty: nothing may change (white marks the region to edit)")
    options = dict(generator_options or {})
    gen = build_generator(generator, size=hw, seed=seed, init=target,
                          network=network, **options)
    if source is not None and not source.strip():
        raise InputError("source text is empty: describe what the image shows now, or leave it out")
    # a text-conditional network draws the target, reading the image as the source
    gen.condition(prompt if isinstance(prompt, str) else None, source)
    gen.restrict(region)
    clip_size = model.config.vision.image_size
    kind = "directional" if source else "spherical"
    loss = CLIPLoss(model, prompt, loss=kind, source_text=source, source_image=target if source else None,
                    cutouts=Cutouts(size=clip_size, n=cutouts, min_size=0.5, noise=0.05, flip=0.0))
    if region is not None:
        loss = _Masked(loss, target, region)
    regs = [(lambda x: l2_to(x if region is None else loss.composite(x), target), preserve)] if preserve else []
    if outside and region is not None:
        keep = 1 - region                                     # made once, not at every step
        regs.append((lambda x: l2_to(x, target, keep), outside))
    settings = {"edit": True, "source": source, "generator": generator, "size": list(hw), "preserve": preserve,
                "outside": outside if region is not None else 0.0, "latent_weight": latent_weight,
                "masked": mask is not None, "cutouts": cutouts}
    if prior is not None:
        prior = _redraw_from_prior(gen, prior, model, prompt, source, region, seed)
        settings["prior"] = prior.source
    def composited(info):                                 # the caller sees the composite too
        info.images = loss.composite(info.images)
        return callback(info)

    from .suite import check_run_options

    check_run_options(gen, run_options)
    shown = composited if region is not None and callback is not None else callback
    result = gen.run(loss, steps=steps, lr=lr, seed=seed, regularisers=regs, latent_weight=latent_weight,
                     strength=strength, progress=progress, frame_every=frame_every, settings=settings,
                     callback=shown, callback_every=callback_every, **(run_options or {}))
    if region is not None:
        with torch.no_grad():
            result.images = loss.composite(result.images)
            result.last_images = loss.composite(result.last_images)
            result.frames = [loss.composite(f) for f in result.frames]
    return result
