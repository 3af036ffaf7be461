"""An editing study on rendered world pictures: does a text edit apply, and does the rest of the
picture stay put?

    cases = edit_cases(30)                         # colour changes, "at night", church -> gothic church
    report, edited = edit_study(guide, judge, cases, generator="fourier")
    report.summary()     # share applied by the judge, L2 and SSIM of the part that should not change

Each case knows the truth because the world renders it: the source picture, the picture the edit
should produce (the same render parameters with one thing changed), and so the region that should
change (where the two renders differ, dilated by a pixel or two; for the church, the rectangle
around the largest such part, so that the mask does not carry the new outline). A colour change
and the gothic church are edited with that region as the mask; "at night" changes every pixel and
is measured by the structural similarity of the whole picture. "Applied" means the judge, which never guides,
prefers the target text to the source text for the edited picture. Since a judge can be fooled too
(a church recoloured grey passes for a gothic one), each edit is also checked against the truth:
"toward the truth" means the edited picture closes at least a fifth of the gap between the
original and the rendered edit, both in RMS and in structure (1 - SSIM; where the structure need
not change, an SSIM of 0.9 keeps it), in the region (the whole picture for "at night"), so that
neither a region washed flat nor a bare recolouring counts."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError

EDIT_KINDS = ("colour", "night", "gothic")


@dataclass
class EditCase:
    kind: str
    image: torch.Tensor              # (3, H, W) in [0, 1]
    target_image: torch.Tensor       # what the edit should produce (rendered)
    source: str                      # what the picture shows
    target: str                      # the edit
    region: torch.Tensor             # (H, W) 1 where the true edit changes pixels
    masked: bool                     # whether the edit is given the region as its mask


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, window: int = 7) -> float:
    """Structural similarity of two images (3, H, W) in [0, 1] on their luminance (Gaussian window,
    the usual constants), averaged where `mask` (H, W) is 1."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    x, y = (a * w).sum(0)[None, None], (b * w).sum(0)[None, None]
    sigma = window / 6
    k = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma ** 2))
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    k = k[None, None]
    blur = lambda t: F.conv2d(F.pad(t, [window // 2] * 4, mode="reflect"), k)      # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    s = s[0, 0]
    if mask is None:
        return float(s.mean())
    m = mask.float()
    return float((s * m).sum() / m.sum().clamp(min=1))


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs().amax(0) > 0.02).float()


def _grow(mask: torch.Tensor, grow: int = 2) -> torch.Tensor:
    return (F.max_pool2d(mask[None, None], 2 * grow + 1, stride=1, padding=grow)[0, 0] > 0).float()


def largest_part(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected part of a 0/1 mask (H, W), as a 0/1 mask of the same shape."""
    from ..world.oracle import components

    labels, n = components((mask > 0).cpu().numpy())
    if n == 0:
        return torch.zeros(mask.shape)
    sizes = torch.from_numpy(labels).flatten().bincount(minlength=n + 1)[1:]
    return torch.from_numpy(labels == int(sizes.argmax()) + 1).float()


def box_of(mask: torch.Tensor) -> torch.Tensor:
    """The smallest axis-aligned rectangle that holds every 1 of a 0/1 mask (H, W)."""
    out = torch.zeros_like(mask, dtype=torch.float32)
    rows, cols = (mask > 0).any(1).nonzero()[:, 0], (mask > 0).any(0).nonzero()[:, 0]
    if len(rows):
        out[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1
    return out


def edit_cases(n: int = 30, seed: int = 0, size: int = 64, kinds: Sequence[str] = EDIT_KINDS) -> list[EditCase]:
    """`n` cases, the kinds taken in turn, from training-split world pictures of seed `seed`."""
    from ..world import World

    unknown = sorted(set(kinds) - set(EDIT_KINDS))
    if unknown or not kinds:
        raise InputError(f"edit kinds {unknown or kinds} are not among {EDIT_KINDS}")
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    world = World(seed=seed, split="train", size=size)
    cases: list[EditCase] = []
    index = 0
    while len(cases) < n:
        kind = kinds[len(cases) % len(kinds)]
        while True:
            index += 1
            spec, attrs = world.spec(index), world.attrs(index)
            case = _try_case(kind, spec, attrs, index, size)
            if case is not None:
                cases.append(case)
                break
            if index > 200_000:
                raise InputError(f"no world picture fits an edit of kind {kind!r}")
    return cases


def _case(kind: str, spec, attrs: dict, index: int, size: int) -> EditCase | None:
    """The edit of kind `kind` of one world picture, or None where the picture does not fit it."""
    from ..world import render
    from ..world.captions import scene_phrase
    from ..world.vocab import COLOURS, PALETTE, with_article

    if kind == "colour":
        if attrs["kind"] != "object" or spec.background.kind not in ("neutral", "plain"):
            return None
        shape = spec.shapes[0]
        options = [c for c in COLOURS if c != shape.colour and c != spec.background.colour
                   and c not in ("gray", "white", "black")]
        new = options[index % len(options)]
        edited = dataclasses.replace(spec, shapes=(dataclasses.replace(shape, colour=new, rgb=PALETTE[new]),))
        source, target = with_article(f"{shape.colour} {shape.shape}"), with_article(f"{new} {shape.shape}")
        masked = True
    elif kind == "night":
        land = spec.landscape
        if attrs["kind"] != "scene" or land.condition != "day" or land.backdrop is not None:
            return None
        edited = dataclasses.replace(spec, landscape=dataclasses.replace(land, condition="night"))
        source, target = scene_phrase(land.obj, "day"), scene_phrase(land.obj, "night")
        masked = False
    else:
        land = spec.landscape
        if attrs["kind"] != "scene" or land.obj != "church" or land.backdrop is not None:
            return None
        edited = dataclasses.replace(spec, landscape=dataclasses.replace(land, obj="gothic church"))
        source, target = scene_phrase("church", land.condition), scene_phrase("gothic church", land.condition)
        masked = True
    a, b = render(spec, size), render(edited, size)
    changed = _changed(a, b)
    # For the church, the rectangle the two buildings stand in, not their outline: a mask shaped
    # like the new spires would draw them by itself. Only the largest changed part counts (before
    # growing it), since snowflakes fall elsewhere in the two renders.
    region = _grow(box_of(largest_part(changed)) if kind == "gothic" else changed)
    return EditCase(kind, a, b, source, target, region, masked)


def _try_case(*args):
    """A case, or None where the world has no such edit (the sun is never drawn at night)."""
    try:
        return _case(*args)
    except InputError:
        return None


@dataclass
class EditReport:
    cases: list[EditCase]
    applied: list[bool]                 # judge prefers the target text for the edited picture
    applied_before: list[bool]          # ... and for the original (should be False)
    kept_rmse: list[float]              # RMS change where nothing should change (whole picture for "night")
    kept_ssim: list[float]
    seconds: list[float] = field(default_factory=list)
    toward_truth: list[bool] = field(default_factory=list)   # a fifth of the way to the rendered edit
    truth_rmse: list[tuple[float, float]] = field(default_factory=list)    # (original, edited) to the rendered edit
    truth_ssim: list[tuple[float, float]] = field(default_factory=list)

    def summary(self) -> dict:
        out: dict = {"n": len(self.cases)}
        for kind in [None, *EDIT_KINDS]:
            idx = [i for i, c in enumerate(self.cases) if kind is None or c.kind == kind]
            if not idx:
                continue
            key = "all" if kind is None else kind
            out[key] = {"n": len(idx),
                        "applied": round(sum(self.applied[i] for i in idx) / len(idx), 4),
                        "applied_before_edit": round(sum(self.applied_before[i] for i in idx) / len(idx), 4),
                        **({"toward_truth": round(sum(self.toward_truth[i] for i in idx) / len(idx), 4),
                            "applied_and_toward_truth": round(sum(self.applied[i] and self.toward_truth[i]
                                                                  for i in idx) / len(idx), 4)}
                           if self.toward_truth else {}),
                        "kept_rmse_max": round(max(self.kept_rmse[i] for i in idx), 4),
                        "kept_rmse_mean": round(sum(self.kept_rmse[i] for i in idx) / len(idx), 4),
                        "kept_ssim_min": round(min(self.kept_ssim[i] for i in idx), 4),
                        "kept_ssim_mean": round(sum(self.kept_ssim[i] for i in idx) / len(idx), 4)}
        if self.seconds:
            out["seconds_per_edit"] = round(sum(self.seconds) / len(self.seconds), 2)
        return out


@torch.no_grad()
def _source_target_text(judge, cases: Sequence[EditCase]) -> torch.Tensor:
    texts = [t for c in cases for t in (c.source, c.target)]
    return judge.encode_text(judge.tokenize(texts, truncate=True), normalize=True).view(len(cases), 2, -1)


@torch.no_grad()
def _prefers_target(judge, images: torch.Tensor, text: torch.Tensor) -> list[bool]:
    """Per image: does the judge find it closer to its target text than to its source text?"""
    img = judge.encode_image(judge.preprocess(images), normalize=True)
    sims = (img[:, None] * text).sum(-1)                                   # (N, 2)
    return (sims[:, 1] > sims[:, 0]).tolist()


def edit_study(guide, judge, cases: Sequence[EditCase], *, generator: str = "fourier", steps: int = 100,
               lr: float = 0.05, cutouts: int = 16, preserve: float | None = None, seed: int = 0,
               progress: bool = True, generator_model=None, generator_options: dict | None = None, **edit_options
               ) -> tuple[EditReport, torch.Tensor]:
    """Edit every case with `guide` (directional: from its source text to its target), then judge.
    Returns the report and the edited pictures (N, 3, H, W)."""
    from ..generators import load_network
    from .edit import edit_image

    if not cases:
        raise InputError("no edit cases")
    network = load_network(generator, generator_model)
    if edit_options.get("prior") is not None:
        from ..generators.prior import load_prior

        edit_options["prior"] = load_prior(edit_options["prior"])          # once, shared by every case
    edited, seconds = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), desc="edit study", unit="edit", dynamic_ncols=True)
    for k, case in enumerate(cases):
        result = edit_image(guide, case.image[None], case.target, source=case.source, generator=generator,
                            mask=case.region if case.masked else None, preserve=preserve, steps=steps, lr=lr,
                            cutouts=cutouts, seed=seed + k, network=network, generator_options=generator_options,
                            size=case.image.shape[-1], progress=False, **edit_options)
        out = result.images[0]
        if out.shape[-2:] != case.image.shape[-2:]:
            out = F.interpolate(out[None], size=case.image.shape[-2:], mode="bilinear", align_corners=False)[0]
        edited.append(out.clamp(0, 1))
        seconds.append(result.seconds)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    pics = torch.stack(edited)
    return judge_edits(judge, cases, pics, seconds), pics


def judge_edits(judge, cases: Sequence[EditCase], pics: torch.Tensor, seconds: Sequence[float] = ()) -> EditReport:
    """Score edited pictures (N, 3, H, W), one per case: the judge's verdict before and after, how
    much of what should stay did, and whether each moved toward the rendered truth."""
    if len(pics) != len(cases):
        raise InputError(f"{len(pics)} edited pictures for {len(cases)} cases")
    originals = torch.stack([c.image for c in cases])
    text = _source_target_text(judge, cases)                              # encoded once for both checks
    applied = _prefers_target(judge, pics, text)
    before = _prefers_target(judge, originals, text)
    rmse, kept, truth, truth_rmse, truth_ssim = [], [], [], [], []
    for c, out in zip(cases, pics):
        keep = None if c.kind == "night" else 1 - c.region
        rmse.append(_rms(out, c.image, keep))
        kept.append(ssim(out, c.image, keep))
        where = None if c.kind == "night" else c.region
        truth_rmse.append((_rms(c.image, c.target_image, where), _rms(out, c.target_image, where)))
        truth_ssim.append((ssim(c.image, c.target_image, where), ssim(out, c.target_image, where)))
        truth.append(_toward(truth_rmse[-1], truth_ssim[-1]))
    return EditReport(list(cases), applied, before, rmse, kept, list(seconds), truth, truth_rmse, truth_ssim)


def _toward(rmse: tuple[float, float], similarity: tuple[float, float], share: float = 0.2,
            same_structure: float = 0.9) -> bool:
    """Given (original, edited) RMS and SSIM to the rendered edit: does the edit close at least
    `share` of the gap both in RMS and in structure (1 - SSIM)? Where the structure need not change
    (a colour of the same lightness), an SSIM of `same_structure` or more counts as keeping it."""
    return (rmse[1] <= (1 - share) * rmse[0]
            and 1 - similarity[1] <= max((1 - share) * (1 - similarity[0]), 1 - same_structure))


def _rms(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Root mean square difference of two images (3, H, W), where `mask` (H, W) is 1 (everywhere
    without one): the square root of the editing regulariser `l2_to`."""
    from .regularisers import l2_to

    return float(l2_to(a[None], b[None], None if mask is None else mask[None, None]).sqrt())
