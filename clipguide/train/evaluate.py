"""Evaluation of a CLIP: zero-shot classification with prompt templates and ensembling, image-text
retrieval, and a linear probe. Each function returns a dict (and `clipguide eval` prints it as a
JSON line); `world_eval_fn` bundles the procedural world's held-out tasks for the trainer."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models import CLIP


@torch.no_grad()
def image_features(model: CLIP, images: torch.Tensor | Sequence[torch.Tensor], batch: int = 256) -> torch.Tensor:
    """Normalised features of float images (N, 3, H, W) in [0, 1] -> (N, E)."""
    if not torch.is_tensor(images):
        images = torch.stack(list(images))
    device = model.logit_scale.device
    out = [model.encode_image(model.preprocess(images[i:i + batch].to(device)), normalize=True)
           for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


@torch.no_grad()
def text_features(model: CLIP, texts: Sequence[str], batch: int = 512) -> torch.Tensor:
    """Normalised features of texts -> (N, E); texts longer than the context are truncated."""
    out = [model.encode_text(model.tokenize(list(texts[i:i + batch]), truncate=True), normalize=True)
           for i in range(0, len(texts), batch)]
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


def class_embeddings(model: CLIP, candidates: Sequence[str], templates: Sequence[str] = ("{}",),
                     wordings: Callable[[str], Sequence[str]] | None = None) -> torch.Tensor:
    """One embedding per candidate: the mean of the normalised embeddings of its prompts (each of
    its `wordings(candidate)`, by default the candidate alone, in every template), renormalised."""
    groups = [[t.format(w) for w in (wordings(c) if wordings else (c,)) for t in templates] for c in candidates]
    feats = text_features(model, [text for g in groups for text in g])
    if not groups:
        return feats
    means = torch.stack([f.mean(dim=0) for f in feats.split([len(g) for g in groups])])
    return F.normalize(means, dim=-1)


def zero_shot(model: CLIP, images: torch.Tensor, labels: Sequence[int],
              candidates: Sequence[Sequence[str]] | Sequence[str], templates: Sequence[str] = ("{}",),
              return_predictions: bool = False,
              wordings: Callable[[str], Sequence[str]] | None = None) -> dict:
    """Top-1 / top-5 accuracy. `candidates` is one list of class prompts shared by every image, or
    one list per image (tasks whose candidates depend on what the image shows). Each candidate is
    embedded as the mean over `templates` and, if given, its `wordings` (see class_embeddings)."""
    img = image_features(model, images)
    labels_t = torch.as_tensor(list(labels))
    if len(candidates) and isinstance(candidates[0], str):
        per_item = [list(candidates)] * len(labels_t)                       # one list shared by all
    else:
        per_item = [list(c) for c in candidates]
    if len(per_item) != len(labels_t):
        raise ValueError(f"{len(per_item)} candidate lists for {len(labels_t)} images")
    # every distinct candidate embedded once, in large batches
    unique = sorted({c for cs in per_item for c in cs})
    emb = class_embeddings(model, unique, templates, wordings)               # (U, E)
    where = {c: i for i, c in enumerate(unique)}
    widths = {len(cs) for cs in per_item}
    if len(widths) != 1:
        raise ValueError("every image needs the same number of candidates")
    index = torch.tensor([[where[c] for c in cs] for cs in per_item])      # (N, C)
    logits = torch.einsum("ne,nce->nc", img, emb[index])                    # (N, C)
    ranks = (logits > logits.gather(1, labels_t[:, None])).sum(dim=1)
    n = max(1, len(labels_t))
    out = {"top1": round((ranks < 1).sum().item() / n, 4), "top5": round((ranks < 5).sum().item() / n, 4),
           "n": len(labels_t)}
    if return_predictions:
        out["predictions"] = logits.argmax(dim=1).tolist()
    return out


def retrieval(model: CLIP, images: torch.Tensor, captions: Sequence[str]) -> dict:
    """Recall@1/5/10 for image->text and text->image over paired lists (pair i is the truth)."""
    img = image_features(model, images)
    txt = text_features(model, captions)
    sim = img @ txt.T                                                       # (N, N)
    truth = sim.diagonal()
    i2t_rank = (sim > truth[:, None]).sum(dim=1)
    t2i_rank = (sim.T > truth[:, None]).sum(dim=1)
    n = max(1, len(captions))
    out = {}
    for k in (1, 5, 10):
        out[f"image_to_text_R@{k}"] = round((i2t_rank < k).sum().item() / n, 4)
        out[f"text_to_image_R@{k}"] = round((t2i_rank < k).sum().item() / n, 4)
    out["n"] = len(captions)
    return out


def linear_probe(model: CLIP, train_images: torch.Tensor, train_labels: Sequence[int], test_images: torch.Tensor,
                 test_labels: Sequence[int], weight_decay: float = 1e-4, steps: int = 200) -> dict:
    """Multinomial logistic regression on frozen image features (L-BFGS, full batch)."""
    xtr, xte = image_features(model, train_images), image_features(model, test_images)
    ytr, yte = torch.as_tensor(list(train_labels)), torch.as_tensor(list(test_labels))
    classes = int(max(ytr.max(), yte.max())) + 1
    torch.manual_seed(0)
    head = torch.nn.Linear(xtr.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), ytr) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc = (head(xte).argmax(dim=1) == yte).float().mean().item()
    return {"top1": round(acc, 4), "n_train": len(ytr), "n_test": len(yte)}


# ---------------------------------------------------------------------------------------------------
# the procedural world's held-out evaluation
# ---------------------------------------------------------------------------------------------------
def world_zero_shot(model: CLIP, task_name: str, n: int = 500, seed: int = 0, ensemble: bool = True,
                    return_predictions: bool = False) -> dict:
    from ..world.tasks import get_task

    task = get_task(task_name)
    items = task.items(n, seed=seed, size=model.config.vision.image_size)
    images = torch.stack([it.image for it in items])
    labels = [it.label for it in items]
    if task.per_item:
        candidates: Sequence = [it.candidates for it in items]
    else:
        candidates = items[0].candidates if items else task.prompts
    templates = task.templates if ensemble else ("{}",)
    out = zero_shot(model, images, labels, candidates, templates, return_predictions,
                    task.wordings if ensemble else None)
    if return_predictions:
        out["labels"] = labels
        out["classes"] = list(task.classes)
    return out


def world_retrieval(model: CLIP, n: int = 1000, seed: int = 0) -> dict:
    from ..world.tasks import retrieval_pairs

    pairs = retrieval_pairs(n, seed=seed, size=model.config.vision.image_size)
    return retrieval(model, torch.stack([p[0] for p in pairs]), [p[1] for p in pairs])


def world_linear_probe(model: CLIP, n: int = 500, seed: int = 0) -> dict:
    """Linear probe on the held-out colour-shape classes: fit on n images, test on n others."""
    from ..world.tasks import get_task

    task = get_task("colour_shape")
    size = model.config.vision.image_size
    train = task.items(n, seed=seed + 1, size=size)
    test = task.items(n, seed=seed + 2, size=size)
    return linear_probe(model, torch.stack([i.image for i in train]), [i.label for i in train],
                        torch.stack([i.image for i in test]), [i.label for i in test])


def world_eval(model: CLIP, n: int = 500, retrieval_n: int = 1000, seed: int = 0,
               tasks: Sequence[str] = ("colour_shape", "count", "relation", "scene")) -> dict:
    """Zero-shot (with and without template ensembling) on each held-out task, and retrieval."""
    out: dict = {}
    for name in tasks:
        ens = world_zero_shot(model, name, n, seed, ensemble=True)
        single = world_zero_shot(model, name, n, seed, ensemble=False)
        out[name] = {**ens, "top1_single_prompt": single["top1"]}
    if retrieval_n:
        out["retrieval"] = world_retrieval(model, retrieval_n, seed)
    return out


def world_eval_fn(n: int = 500, retrieval_n: int = 1000) -> Callable[[CLIP], dict]:
    """The trainer's evaluation hook for world data."""
    def run(model: CLIP) -> dict:
        return world_eval(model, n=n, retrieval_n=retrieval_n)
    return run
