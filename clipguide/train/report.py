"""Pictures for a model card: training curves from metrics.jsonl and zero-shot confusion matrices
on the world's held-out tasks. Needs matplotlib (pip install matplotlib)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ClipguideError
from ..models import CLIP


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClipguideError("model-card pictures need matplotlib: pip install matplotlib") from None
    return plt


def plot_curves(metrics_path: str | Path, out: str | Path) -> Path:
    """Loss, logit scale and throughput against the step."""
    plt = _pyplot()
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    if not train:
        raise ClipguideError(f"{metrics_path} has no training records")
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0].set(title="contrastive loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["logit_scale"] for r in train], lw=1)
    axes[1].set(title="logit scale (1 / temperature)", xlabel="step")
    axes[2].plot(steps, [r["samples_per_s"] for r in train], lw=1)
    axes[2].set(title="samples / s", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@torch.no_grad()
def plot_confusion(model: CLIP, out: str | Path, n: int = 400, seed: int = 0) -> Path:
    """One confusion matrix per held-out zero-shot task (rows: truth, columns: prediction)."""
    from .evaluate import world_zero_shot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(22, 6.2), gridspec_kw={"width_ratios": [2.2, 1, 1, 1.6]})
    for ax, task in zip(axes, ("colour_shape", "count", "relation", "scene")):
        r = world_zero_shot(model, task, n=n, seed=seed, return_predictions=True)
        classes = r["classes"]
        truth, pred = r["labels"], r["predictions"]
        shown = sorted(set(truth) | set(pred))
        index = {c: i for i, c in enumerate(shown)}
        m = torch.zeros(len(shown), len(shown))
        for t, p in zip(truth, pred):
            m[index[t], index[p]] += 1
        m = m / m.sum(dim=1, keepdim=True).clamp(min=1)
        ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1)
        names = [classes[i] for i in shown]
        ax.set_xticks(range(len(shown)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(shown)), names, fontsize=6)
        ax.set_title(f"{task}: top-1 {r['top1']:.1%} (n={r['n']})", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
