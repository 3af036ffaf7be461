"""Honest scoring of guided images: the guide model's score, an independent judge model's choice
among the suite's captions, the guide's score under augmentation, and the world oracle's checks.
A run whose guide score rises while the judge's does not is flagged as adversarial: the pixels fool
the model that guided them, not a second one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import InputError
from ..models import CLIP
from .augment import Cutouts


@torch.no_grad()
def _text(model: CLIP, texts: Sequence[str]) -> torch.Tensor:
    return model.encode_text(model.tokenize(list(texts), truncate=True), normalize=True)


# pictures encoded at once: scoring thousands (a search probe's) in one batch would hold every
# view's activations together
CHUNK = 64


@torch.no_grad()
def _image(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.encode_image(model.preprocess(part), normalize=True) for part in images.split(CHUNK)])


@torch.no_grad()
def clip_score(model: CLIP, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity of each image with its prompt: (B,)."""
    return (_image(model, images) * _text(model, prompts)).sum(dim=-1)


@torch.no_grad()
def augmented_score(model: CLIP, images: torch.Tensor, prompts: Sequence[str], n: int = 16, seed: int = 1234
                    ) -> torch.Tensor:
    """Mean cosine similarity over `n` random views (other draws than any guidance used): (B,)."""
    return _augmented(model, images, _text(model, prompts), n, seed)


@torch.no_grad()
def _augmented(model: CLIP, images: torch.Tensor, text: torch.Tensor, n: int = 16, seed: int = 1234
               ) -> torch.Tensor:
    size = model.config.vision.image_size
    cut, rng = Cutouts(size=size, n=n, overview=1, noise=0.05, jitter=0.05), torch.Generator().manual_seed(seed)
    out = []
    for part, part_text in zip(images.split(CHUNK), text.split(CHUNK)):
        emb = model.encode_image(model.preprocess.normalize(cut(part, rng)), normalize=True).view(part.shape[0], n, -1)
        out.append((emb * part_text[:, None]).sum(dim=-1).mean(dim=1))
    return torch.cat(out)


def check_candidates(prompts: Sequence[str], candidates: Sequence[str]) -> None:
    """The judge picks each prompt's picture's caption among `candidates`: every prompt must be one."""
    known = set(candidates)
    missing = [p for p in prompts if p not in known]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise InputError(f"{len(missing)} of the prompts are not among the judge's candidate captions ({shown}): "
                         "add them to the candidates, or let the judge choose among the prompts themselves")


@torch.no_grad()
def judge_choice(judge: CLIP, images: torch.Tensor, candidates: Sequence[str]) -> torch.Tensor:
    """Index of the candidate caption the judge finds closest, per image: (B,)."""
    return (_image(judge, images) @ _text(judge, candidates).T).argmax(dim=-1)


@dataclass
class ScoreReport:
    prompts: list[str]
    guide: list[float]
    augmented: list[float]
    judge_correct: list[bool]
    oracle_passed: list[bool | None]            # None where the oracle has nothing to check
    adversarial: list[bool] = field(default_factory=list)
    # the same judge and oracle on the pictures before guidance (the generator's unguided samples)
    unguided_judge_correct: list[bool] = field(default_factory=list)
    unguided_oracle_passed: list[bool | None] = field(default_factory=list)
    # why: the caption the judge chose for each picture, and the oracle's checks that failed
    judge_choice: list[str] = field(default_factory=list)
    oracle_failed: list[list[str]] = field(default_factory=list)

    def summary(self) -> dict:
        n = max(1, len(self.prompts))
        out = {"n": len(self.prompts),
               "guide_score": round(sum(self.guide) / n, 4),
               "augmented_score": round(sum(self.augmented) / n, 4),
               **_rates(self.judge_correct, self.oracle_passed),
               "adversarial_share": round(sum(self.adversarial) / n, 4) if self.adversarial else None}
        if self.unguided_judge_correct:
            before = _rates(self.unguided_judge_correct, self.unguided_oracle_passed)
            out.update({f"unguided_{k}": v for k, v in before.items()})
            out["margin"] = round((_n_correct(self.judge_correct, self.oracle_passed)
                                   - _n_correct(self.unguided_judge_correct, self.unguided_oracle_passed)) / n, 4)
        return out


def _n_correct(judge_correct: Sequence[bool], oracle_passed: Sequence[bool | None]) -> int:
    return sum(bool(j) and (o is None or o) for j, o in zip(judge_correct, oracle_passed))


def _rates(judge_correct: Sequence[bool], oracle_passed: Sequence[bool | None]) -> dict:
    """judge_top1, oracle_pass (over the prompts the oracle can check) and correct (both hold)."""
    n = max(1, len(judge_correct))
    checked = [o for o in oracle_passed if o is not None]
    return {"judge_top1": round(sum(judge_correct) / n, 4),
            "oracle_pass": round(sum(checked) / len(checked), 4) if checked else None,
            "correct": round(_n_correct(judge_correct, oracle_passed) / n, 4)}


def score(images: torch.Tensor, prompts: Sequence[str], guide: CLIP, judge: CLIP | None = None,
          suite: Sequence[str] | None = None, initial_images: torch.Tensor | None = None,
          oracle: bool = True) -> ScoreReport:
    """Score image i against prompt i. `suite`: the candidate captions the judge chooses among
    (default: the prompts themselves). `initial_images`: the images before guidance, to flag runs
    whose guide score rose while the judge's score of the prompt did not, and scored by the same
    judge and oracle as the unguided baseline (summary: unguided_* and margin)."""
    prompts = list(prompts)
    for name, batch in (("images", images), ("initial_images", initial_images)):
        if batch is not None and len(batch) != len(prompts):
            raise InputError(f"{name} has {len(batch)} pictures for {len(prompts)} prompts: give one per prompt")
    guide_text = _text(guide, prompts)                      # every text and image encoded once per model
    g = (_image(guide, images) * guide_text).sum(dim=-1)
    aug = _augmented(guide, images, guide_text)
    judge_correct = [True] * len(prompts)
    choice: list[str] = []
    adversarial: list[bool] = []
    unguided = [True] * len(prompts) if initial_images is not None else []   # no judge: only the oracle decides
    if judge is not None:
        cands = list(suite) if suite is not None else prompts
        check_candidates(prompts, cands)
        truth = torch.tensor([cands.index(p) for p in prompts])
        cand_text = _text(judge, cands)
        judge_image = _image(judge, images)
        chosen = (judge_image @ cand_text.T).argmax(dim=-1)
        judge_correct = (chosen == truth).tolist()
        choice = [cands[i] for i in chosen.tolist()]
        if initial_images is not None:
            judge_text = cand_text[truth]                   # the judge's embedding of each image's prompt
            g0 = (_image(guide, initial_images) * guide_text).sum(dim=-1)
            judge_image0 = _image(judge, initial_images)
            j0 = (judge_image0 * judge_text).sum(dim=-1)
            j1 = (judge_image * judge_text).sum(dim=-1)
            adversarial = [(a > b + 0.02) and not (d > c + 0.005) for a, b, c, d in
                           zip(g.tolist(), g0.tolist(), j0.tolist(), j1.tolist())]
            unguided = ((judge_image0 @ cand_text.T).argmax(dim=-1) == truth).tolist()
    passed, failed = _oracle(images, prompts, oracle)
    passed0 = _oracle(initial_images, prompts, oracle)[0] if initial_images is not None else []
    return ScoreReport(prompts, g.tolist(), aug.tolist(), judge_correct, passed, adversarial, unguided, passed0,
                       choice, failed)


def _oracle(images: torch.Tensor, prompts: Sequence[str],
            enabled: bool = True) -> tuple[list[bool | None], list[list[str]]]:
    """The world oracle's verdict on image i for prompt i (None where it cannot read the prompt, or
    everywhere when not `enabled`), and the names of the checks that failed."""
    from ..world import oracle as world_oracle
    from ..world.parse import parse_caption

    if not enabled:
        return [None] * len(prompts), [[] for _ in prompts]
    passed: list[bool | None] = []
    failed: list[list[str]] = []
    for image, p in zip(images, prompts):
        attrs = parse_caption(p)
        report = None if attrs is None else world_oracle.check(image, attrs)
        passed.append(None if report is None else bool(report.passed))
        failed.append([] if report is None else report.failed)
    return passed, failed
