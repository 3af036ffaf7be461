"""CLIPLoss: how far images are from text and image prompts, as judged by one or several CLIP models
through augmented views. A torch Module, differentiable with respect to the images.

    loss_fn = CLIPLoss(model, "a gothic church:1 | blurry:-0.5", cutouts=Cutouts(n=16))
    loss = loss_fn(images)          # images (B, 3, H, W) in [0, 1]
    loss.backward()

Target embeddings are computed once, when the module is built (or when prompts change)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models import CLIP
from .augment import Cutouts
from .losses import DISTANCES, directional_distance
from .prompts import Prompt, parse_prompts

LOSS_FORMS = ("spherical", "cosine", "directional")


@dataclass
class _Member:
    model: CLIP
    weight: float


def _members(models) -> list[_Member]:
    from ..checkpoints import load

    if isinstance(models, (CLIP, str)):
        models = [models]
    out = []
    for m in models:
        w = 1.0
        if isinstance(m, tuple):
            m, w = m
        if isinstance(m, str):
            m = load(m)
        if not isinstance(m, CLIP):
            raise InputError(f"CLIPLoss needs clipguide CLIP models (or names / paths to load), got {type(m).__name__}")
        out.append(_Member(m, float(w)))
    if not out:
        raise InputError("CLIPLoss needs at least one model")
    if sum(m.weight for m in out) <= 0:
        raise InputError("the model weights of an ensemble must sum to more than zero")
    return out


@torch.no_grad()
def encode_text_long(model: CLIP, text: str, templates: Sequence[str] = ("{}",)) -> torch.Tensor:
    """Normalised embedding of `text` averaged over `templates`. A text longer than the context is
    split into word chunks that fit, and their embeddings are averaged: nothing is cut silently."""
    tok = model.tokenizer
    limit = model.config.text.context_length - 2
    embs = []
    for t in templates:
        full = t.format(text)
        if tok.count_tokens(full) <= limit:
            chunks = [full]
        else:
            chunks, words = [], full.split()
            current: list[str] = []
            for w in words:
                trial = " ".join(current + [w])
                if current and tok.count_tokens(trial) > limit:
                    chunks.append(" ".join(current))
                    current = [w]
                else:
                    current.append(w)
            if current:
                chunks.append(" ".join(current))
        e = model.encode_text(model.tokenize(chunks, truncate=True), normalize=True)
        embs.append(F.normalize(e.mean(dim=0), dim=-1))
    return F.normalize(torch.stack(embs).mean(dim=0), dim=-1)


@torch.no_grad()
def encode_image_prompt(model: CLIP, image: torch.Tensor) -> torch.Tensor:
    """Normalised embedding of an image prompt (3, H, W) or (B, 3, H, W) in [0, 1] (B averaged)."""
    x = model.preprocess(image.to(model.logit_scale.device))
    return F.normalize(model.encode_image(x, normalize=True).mean(dim=0), dim=-1)


class CLIPLoss(nn.Module):
    """Weighted distance of images to prompts, averaged over augmented views and models.

    Args:
        models: a CLIP, a name/path to load, or a list of those, optionally as (model, weight) pairs.
        prompts: ``"text:weight:stop | ..."``, Prompt objects, (text, weight) tuples or image tensors.
        loss: "spherical" (default), "cosine" or "directional" (needs `source_text` and
            `source_image`: the edit from source to image should follow source_text -> prompt).
        cutouts: a Cutouts module, an int (views per image with default settings) or None (the
            whole image, resized, one view).
        templates: prompt templates averaged for each text prompt, e.g. ("{}", "a photo of {}").
        value_range: the range of the images given to forward (default (0, 1)).
    """

    def __init__(self, models, prompts, *, loss: str = "spherical", cutouts: Cutouts | int | None = 16,
                 templates: Sequence[str] = ("{}",), value_range: tuple[float, float] = (0.0, 1.0),
                 source_text: str | None = None, source_image: torch.Tensor | None = None):
        super().__init__()
        if loss not in LOSS_FORMS:
            raise InputError(f"loss {loss!r} is not one of {LOSS_FORMS}")
        lo, hi = value_range
        if not hi > lo:
            raise InputError(f"value_range {value_range} must be (low, high) with high > low")
        self.loss_form = loss
        self.value_range = (float(lo), float(hi))
        self.templates = tuple(templates)
        self.members = _members(models)
        for i, m in enumerate(self.members):
            m.model.eval().requires_grad_(False)
            m.model.freeze_low_precision()
            self.add_module(f"model{i}", m.model)
        self.cutouts = cutouts if isinstance(cutouts, Cutouts) or cutouts is None else Cutouts(n=int(cutouts))
        if loss == "directional" and (source_text is None or source_image is None):
            raise InputError("loss='directional' needs source_text (what the image shows now) and "
                             "source_image (the image before the edit)")
        self.source_text, self.source_image = source_text, source_image
        self.last: dict = {}
        self.set_prompts(prompts)

    # --- targets ----------------------------------------------------------------------------------
    def set_prompts(self, prompts) -> None:
        """Replace the prompts; their embeddings are computed now, once, for every model."""
        self.prompts: list[Prompt] = parse_prompts(prompts)
        self._targets = []
        for m in self.members:
            embs = [encode_text_long(m.model, p.text, self.templates) if p.text is not None
                    else encode_image_prompt(m.model, p.image) for p in self.prompts]
            src = None
            if self.loss_form == "directional":
                src = (encode_text_long(m.model, self.source_text, self.templates),
                       encode_image_prompt(m.model, self.source_image))
            self._targets.append((torch.stack(embs), src))                 # (P, E)
        dev = self.members[0].model.logit_scale.device
        self._weights = torch.tensor([p.weight for p in self.prompts], device=dev)
        self._stops = torch.tensor([p.stop for p in self.prompts], device=dev)

    # --- forward ----------------------------------------------------------------------------------
    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() not in (3, 4):
            raise InputError(f"CLIPLoss expects images (B, 3, H, W), got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.shape[1] != 3:
            raise InputError(f"CLIPLoss expects 3 colour channels, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(f"CLIPLoss expects float images in {self.value_range}, got {images.dtype}")
        if not torch.isfinite(images).all():
            raise InputError("the images contain NaN or Inf: the optimisation diverged (lower the learning "
                             "rate) or the input is broken")
        lo, hi = self.value_range
        margin = 0.5 * (hi - lo)
        mn, mx = float(images.detach().min()), float(images.detach().max())
        if mn < lo - margin or mx > hi + margin:
            raise InputError(f"images span [{mn:.3g}, {mx:.3g}], far outside the declared value_range "
                             f"{self.value_range}; pass value_range=(low, high) to CLIPLoss")
        return (images - lo) / (hi - lo)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean loss over the batch (a scalar); per-image losses are in `self.last['per_image']`."""
        return self._loss(images, generator, self.cutouts)

    def whole_picture_losses(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) losses of whole pictures (one view each, resized and centre-cropped, no augmentation),
        without gradients. A search among starts ranks by them: a cutout can crop away the object a
        prompt places or counts, so augmented views rank where-and-how-many prompts worse."""
        with torch.no_grad():
            self._loss(images, None, None)
        return self.last["per_image"]

    def _loss(self, images: torch.Tensor, generator: torch.Generator | None, cutouts: Cutouts | None) -> torch.Tensor:
        images = self._check(images)
        B = images.shape[0]
        total = images.new_zeros(B)
        total_weight = sum(m.weight for m in self.members)
        views_by_size: dict[int, torch.Tensor] = {}
        details = []
        for m, (targets, src) in zip(self.members, self._targets):
            size = m.model.config.vision.image_size
            if size not in views_by_size:
                if cutouts is None:
                    from ..preprocess import resize_center_crop

                    views_by_size[size] = resize_center_crop(images, size)
                else:
                    cutouts.size = size
                    views_by_size[size] = cutouts(images, generator)
            views = views_by_size[size]
            n = views.shape[0] // B
            emb = m.model.encode_image(m.model.preprocess.normalize(views), normalize=True)   # (B*n, E)
            emb = emb.view(B, n, 1, -1)
            if self.loss_form == "directional":
                src_text, src_img = src
                dist = directional_distance(emb, src_img, targets[None, None], src_text)       # (B, n, P)
            else:
                dist = DISTANCES[self.loss_form](emb, targets[None, None])                      # (B, n, P)
            signed = dist * self._weights.sign()
            floored = torch.maximum(signed, self._stops)
            per_prompt = (self._weights.abs() * floored).mean(dim=1)                            # (B, P)
            total = total + m.weight / total_weight * per_prompt.sum(dim=1)
            details.append(dist.detach().mean(dim=(0, 1)))
        self.last = {"per_image": total.detach(),
                     "distance": {p.label: float(torch.stack(details)[:, i].mean()) for i, p in enumerate(self.prompts)}}
        return total.mean()
