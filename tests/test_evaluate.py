"""Evaluation is honest: a perfect stub scores 1, a random model scores at chance, ranks are right."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clipguide
from clipguide.train import evaluate as ev
from clipguide.tokenizer import Tokenizer


class StubModel:
    """Image i embeds as the one-hot of its label; a text embeds as the one-hot of its vocabulary id."""

    def __init__(self, texts: list[str], dim: int = 64, noise: float = 0.0):
        self.vocab = {t: i for i, t in enumerate(texts)}
        self.dim = dim
        self.noise = noise
        self.logit_scale = torch.tensor(math.log(100.0))
        self.config = clipguide.get_config("ViT-nano")
        self.preprocess = lambda x: x
        self.current_texts: list[str] = []

    def encode_image(self, x, normalize=True):
        labels = x[:, 0, 0, 0].long()
        e = F.one_hot(labels, self.dim).float()
        return F.normalize(e + self.noise * torch.randn_like(e), dim=-1)

    def tokenize(self, texts, truncate=False):
        ids = torch.tensor([self.vocab[t.split("|")[-1]] for t in texts])
        return ids[:, None]

    def encode_text(self, ids, normalize=True):
        return F.one_hot(ids[:, 0], self.dim).float()


def _images(labels):
    x = torch.zeros(len(labels), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(labels, dtype=torch.float)
    return x


def test_zero_shot_shared_and_per_item_candidates():
    classes = [f"c{i}" for i in range(10)]
    model = StubModel(classes)
    labels = [3, 1, 4, 1, 5, 9, 2, 6]
    assert ev.zero_shot(model, _images(labels), labels, classes)["top1"] == 1.0
    wrong = [(l + 1) % 10 for l in labels]
    r = ev.zero_shot(model, _images(labels), wrong, classes)
    assert r["top1"] == 0.0
    # per-item candidates: the truth is candidate 0 of each item's own list
    per_item = [[classes[l], classes[(l + 1) % 10], classes[(l + 2) % 10]] for l in labels]
    assert ev.zero_shot(model, _images(labels), [0] * len(labels), per_item)["top1"] == 1.0
    assert ev.zero_shot(model, _images(labels), [1] * len(labels), per_item)["top1"] == 0.0


def test_templates_are_averaged():
    classes = ["a", "b"]
    model = StubModel(["a", "b"])
    r = ev.zero_shot(model, _images([0, 1]), [0, 1], classes, templates=("x|{}", "y|{}"))
    assert r["top1"] == 1.0


def test_retrieval_ranks():
    caps = [f"t{i}" for i in range(20)]
    model = StubModel(caps)
    labels = list(range(20))
    r = ev.retrieval(model, _images(labels), caps)
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0
    shifted = caps[1:] + caps[:1]
    r = ev.retrieval(model, _images(labels), shifted)
    assert r["image_to_text_R@1"] == 0.0 and r["text_to_image_R@1"] == 0.0
    assert r["image_to_text_R@5"] == 1.0       # the true caption is second, after its neighbour


def test_linear_probe_separates_separable_features():
    model = StubModel([], noise=0.05)
    g = torch.Generator().manual_seed(0)
    ytr = torch.randint(0, 5, (200,), generator=g).tolist()
    yte = torch.randint(0, 5, (100,), generator=g).tolist()
    r = ev.linear_probe(model, _images(ytr), ytr, _images(yte), yte)
    assert r["top1"] >= 0.95


@pytest.fixture(scope="module")
def random_world_model():
    from clipguide.world import World

    captions = World(seed=0).captions(range(3000))
    tok = Tokenizer.train(captions, vocab_size=800, context_length=32)
    torch.manual_seed(0)
    cfg = clipguide.get_config("ViT-nano").replace(**{"vision.image_size": 64, "text.context_length": 32,
                                                        "text.vocab_size": tok.vocab_size})
    return clipguide.create_model(cfg, tokenizer=tok).eval()


@pytest.mark.parametrize("task, chance", [("colour_shape", 1 / 96), ("count", 1 / 4), ("relation", 1 / 4),
                                          ("scene", 1 / 23)])
def test_random_model_scores_at_chance(random_world_model, task, chance):
    n = 300
    r = ev.world_zero_shot(random_world_model, task, n=n, seed=1, return_predictions=True)
    # a random model may prefer one candidate, which scores that candidate's frequency (held-out
    # counts are 3 in 3 of 7 pairs): allow a wide binomial band above the best constant guess, far
    # below what a trained model reaches
    labels = r["labels"]
    constant = max(labels.count(k) for k in set(labels)) / len(labels)
    assert r["top1"] <= max(chance, constant) + 0.12, r
    assert r["top5"] <= min(1.0, 5 * chance + 0.2) or chance * 5 >= 1, r


def test_random_model_retrieval_at_chance(random_world_model):
    r = ev.world_retrieval(random_world_model, n=200)
    assert r["image_to_text_R@1"] <= 0.05 and r["text_to_image_R@1"] <= 0.05
