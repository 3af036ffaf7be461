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


def test_wordings_are_averaged_with_the_templates():
    # text i embeds as one-hot(i): "a" alone is axis 0; with its wordings it is the mean of 0 and 2
    model = StubModel(["a", "b", "a2", "b2"])
    plain = ev.class_embeddings(model, ["a", "b"])
    assert torch.allclose(plain, F.one_hot(torch.tensor([0, 1]), 64).float())
    words = {"a": ("a", "a2"), "b": ("b",)}
    emb = ev.class_embeddings(model, ["a", "b"], templates=("x|{}", "y|{}"), wordings=words.__getitem__)
    expect = F.normalize(torch.stack([F.one_hot(torch.tensor(0), 64) + F.one_hot(torch.tensor(2), 64),
                                      F.one_hot(torch.tensor(1), 64)]).float(), dim=-1)
    assert torch.allclose(emb, expect)
    # an image lying on axis 2 (the wording "a2") is read as "a", not "b"
    x = _images([2])
    assert ev.zero_shot(model, x, [0], ["a", "b"], wordings=words.__getitem__)["top1"] == 1.0
    assert ev.zero_shot(model, x, [1], ["a", "b"], wordings=words.__getitem__)["top1"] == 0.0


@pytest.mark.parametrize("task", ["colour_shape", "count", "relation", "scene"])
def test_world_wordings_restate_the_class(task):
    from clipguide.world.parse import parse_caption
    from clipguide.world.tasks import get_task
    from clipguide.world.vocab import INVERSE_RELATION

    t = get_task(task)
    items = t.items(40, seed=3)
    several = 0
    for it in items:
        for c in it.candidates:
            words = t.wordings(c)
            assert words[0] == c and len(set(words)) == len(words)
            truth = {k: v for k, v in parse_caption(c).items() if k != "count" or task == "count"}
            for w in words:               # every wording reads back as the same class
                back = parse_caption(w)
                if back.get("kind") == "relation" and back["objects"] != truth["objects"]:
                    back = {"kind": "relation", "objects": back["objects"][::-1],     # said the other way
                            "relation": INVERSE_RELATION[back["relation"]]}
                assert {k: back.get(k) for k in truth} == truth, (c, w)
            several += len(words) > 1
    assert several > 0
    assert t.wordings("something else entirely") == ("something else entirely",)


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
