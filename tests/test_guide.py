"""Guidance: prompts, distances, cutouts and CLIPLoss on tiny models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clipguide
from clipguide.errors import InputError
from clipguide.guide import (CLIPLoss, Cutouts, Prompt, cosine_distance, directional_distance, parse_prompts,
                             spherical_distance)
from clipguide.tokenizer import Tokenizer

CAPTIONS = ["a red circle", "a blue square", "a gothic church", "blurry", "a green star", "a photo of {}"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tok = Tokenizer.train(CAPTIONS * 4 + ["a b c d e f g h i j k l m n o p"] * 3, vocab_size=600, context_length=16)
    return clipguide.create_model("ViT-nano", tokenizer=tok).eval()


# --- prompts ---------------------------------------------------------------------------------------
def test_prompt_syntax():
    ps = parse_prompts("a gothic church:1 | blurry:-0.5 | sky:0.3:0.8 | style: ink drawing:2")
    assert [(p.text, p.weight) for p in ps[:3]] == [("a gothic church", 1.0), ("blurry", -0.5), ("sky", 0.3)]
    assert ps[2].stop == 0.8 and ps[0].stop == -math.inf
    assert ps[3].text == "style: ink drawing" and ps[3].weight == 2.0
    assert parse_prompts([("a", 2.0), Prompt("b", -1.0)])[0].weight == 2.0


@pytest.mark.parametrize("bad, match", [("", "empty"), ("a | ", "empty"), ("a:0 | b:0", "zero"), ([], "no prompts"),
                                        ([3], "cannot read")])
def test_bad_prompts(bad, match):
    with pytest.raises(InputError, match=match):
        parse_prompts(bad)


# --- distances -------------------------------------------------------------------------------------
def test_distances():
    x = F.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(spherical_distance(x, x), torch.zeros(5), atol=1e-6)
    assert torch.allclose(spherical_distance(x, -x), torch.full((5,), math.pi ** 2 / 2), atol=5e-3)  # arcsin(1): ill-conditioned
    assert torch.allclose(cosine_distance(x, -x), torch.full((5,), 2.0), atol=1e-6)
    y = F.normalize(torch.randn(5, 8), dim=-1)
    # spherical distance is monotone in the angle
    assert ((spherical_distance(x, y) > spherical_distance(x, x)).all())
    src_i, src_t = F.normalize(torch.randn(8), dim=0), F.normalize(torch.randn(8), dim=0)
    tgt_t = F.normalize(torch.randn(8), dim=0)
    good = src_i + 0.5 * (tgt_t - src_t)
    bad = src_i - 0.5 * (tgt_t - src_t)
    assert directional_distance(good, src_i, tgt_t, src_t) < directional_distance(bad, src_i, tgt_t, src_t)


# --- cutouts ---------------------------------------------------------------------------------------
def test_cutouts_shapes_gradients_and_replay():
    cut = Cutouts(size=32, n=8, rotate=10, perspective=0.05, noise=0.05)
    x = torch.rand(2, 3, 50, 70, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    params = cut.sample(2, 50, 70, g)
    y = cut.apply(x, params)
    assert y.shape == (16, 3, 32, 32)
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0
    again = cut.apply(x.detach(), cut.sample(2, 50, 70, torch.Generator().manual_seed(1)))
    assert torch.equal(y.detach(), again)
    other = cut.apply(x.detach(), cut.sample(2, 50, 70, torch.Generator().manual_seed(2)))
    assert not torch.equal(y.detach(), other)


def test_overview_view_is_the_image():
    x = torch.rand(1, 3, 32, 32)
    cut = Cutouts(size=32, n=1, overview=1, flip=0.0, jitter=0.0, supersample=1)
    assert torch.allclose(cut(x), x, atol=1e-5)
    flipped = Cutouts(size=32, n=1, overview=1, flip=1.0, jitter=0.0, supersample=1)
    assert torch.allclose(flipped(x), x.flip(-1), atol=1e-5)


def test_inner_cut_matches_a_crop():
    """A cut of half the side at a known place equals the crop resized (sampled at pixel centres)."""
    x = torch.rand(1, 3, 64, 64)
    cut = Cutouts(size=32, n=1, overview=0, flip=0.0, jitter=0.0, min_size=0.5, size_power=1.0, supersample=1)
    params = cut.sample(1, 64, 64, torch.Generator().manual_seed(0))
    params.homography[..., 0, 0] = 0.5
    params.homography[..., 1, 1] = 0.5
    params.homography[..., 0, 2] = -0.5
    params.homography[..., 1, 2] = -0.5
    y = cut.apply(x, params)
    ref = F.avg_pool2d(x[..., :32, :32], 1)
    # bilinear at the centres of 32 output pixels over a 32-pixel crop lands on pixel centres exactly
    assert torch.allclose(y, ref, atol=1e-5)


def test_cutouts_bad_arguments():
    with pytest.raises(InputError):
        Cutouts(n=0)
    with pytest.raises(InputError):
        Cutouts(n=2, overview=3)
    with pytest.raises(InputError):
        Cutouts(padding="wrap")


# --- CLIPLoss --------------------------------------------------------------------------------------
class LossBattery:
    form = "spherical"

    def make(self, model, prompts="a red circle", **kw):
        if self.form == "directional":
            kw.setdefault("source_text", "a blue square")
            kw.setdefault("source_image", torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5)))
        return CLIPLoss(model, prompts, loss=self.form, cutouts=Cutouts(size=32, n=4), **kw)

    def test_gradient_reaches_the_image(self, model):
        x = torch.rand(2, 3, 40, 40, requires_grad=True)
        loss = self.make(model)(x, torch.Generator().manual_seed(0))
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

    def test_model_weights_stay_frozen(self, model):
        fn = self.make(model)
        assert all(not p.requires_grad for p in fn.parameters())

    def test_deterministic_with_a_generator(self, model):
        fn = self.make(model)
        x = torch.rand(1, 3, 40, 40)
        a = fn(x, torch.Generator().manual_seed(3))
        b = fn(x, torch.Generator().manual_seed(3))
        assert torch.equal(a, b)

    def test_descending_the_loss_lowers_it(self, model):
        fn = self.make(model)
        x = torch.rand(1, 3, 32, 32).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        first = None
        for step in range(15):
            loss = fn(x.clamp(0, 1), torch.Generator().manual_seed(step))
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert fn(x.clamp(0, 1), torch.Generator().manual_seed(0)).item() < first

    def test_batch_of_one_equals_batch_of_n_without_random_views(self, model):
        fn = self.make(model)
        fn.cutouts = None
        x = torch.rand(3, 3, 32, 32)
        fn(x)
        many = fn.last["per_image"]
        for i in range(3):
            fn(x[i:i + 1])
            assert torch.allclose(fn.last["per_image"][0], many[i], atol=1e-6)


class TestSpherical(LossBattery):
    form = "spherical"


class TestCosine(LossBattery):
    form = "cosine"


class TestDirectional(LossBattery):
    form = "directional"


def test_weights_and_negative_prompts_move_the_embedding_the_right_way(model):
    """Optimising towards 'a red circle' raises its similarity; a negative weight lowers it."""
    def similarity_after(prompts):
        torch.manual_seed(0)
        fn = CLIPLoss(model, prompts, cutouts=None)
        x = torch.full((1, 3, 32, 32), 0.5).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.02)
        for _ in range(20):
            loss = fn(x.clamp(0, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        target = model.encode_text(model.tokenize(["a red circle"]), normalize=True)
        with torch.no_grad():
            img = model.encode_image(model.preprocess(x.clamp(0, 1)), normalize=True)
        return float(img @ target.T)

    with torch.no_grad():
        start = float(model.encode_image(model.preprocess(torch.full((1, 3, 32, 32), 0.5)), normalize=True)
                      @ model.encode_text(model.tokenize(["a red circle"]), normalize=True).T)
    assert similarity_after("a red circle") > start
    assert similarity_after("a red circle:-1 | a blue square") < start


def test_stop_floor_stops_the_pull(model):
    fn = CLIPLoss(model, [Prompt("a red circle", 1.0, stop=10.0)], cutouts=None)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    fn(x).backward()
    assert torch.all(x.grad == 0)


def test_ensemble_weights(model):
    torch.manual_seed(1)
    other = clipguide.create_model("ViT-nano", tokenizer=model.tokenizer).eval()
    x = torch.rand(1, 3, 32, 32)
    a = CLIPLoss(model, "a red circle", cutouts=None)(x)
    b = CLIPLoss(other, "a red circle", cutouts=None)(x)
    both = CLIPLoss([(model, 3.0), (other, 1.0)], "a red circle", cutouts=None)(x)
    assert torch.allclose(both, 0.75 * a + 0.25 * b, atol=1e-6)


def test_long_prompts_are_chunked_not_cut(model):
    long = " ".join(["a red circle and a blue square"] * 6)
    fn = CLIPLoss(model, long, cutouts=None)
    cut_short = CLIPLoss(model, long[:40], cutouts=None)
    assert not torch.allclose(fn._targets[0][0], cut_short._targets[0][0])


def test_targets_are_cached(model, monkeypatch):
    fn = CLIPLoss(model, "a red circle", cutouts=Cutouts(size=32, n=2))
    calls = []
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: calls.append(1))
    fn(torch.rand(1, 3, 32, 32))
    assert calls == []


def test_value_range(model):
    x = torch.rand(1, 3, 32, 32)
    a = CLIPLoss(model, "a red circle", cutouts=None)(x)
    b = CLIPLoss(model, "a red circle", cutouts=None, value_range=(-1, 1))(x * 2 - 1)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.full((1, 3, 8, 8), float("inf")), "NaN or Inf"),
    (torch.rand(1, 3, 8, 8) * 255, "value_range"),
    (torch.rand(1, 4, 8, 8), "3 colour channels"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
])
def test_bad_images(model, bad, match):
    with pytest.raises(InputError, match=match):
        CLIPLoss(model, "a red circle", cutouts=None)(bad)


def test_bad_construction(model):
    with pytest.raises(InputError, match="not one of"):
        CLIPLoss(model, "a", loss="l2")
    with pytest.raises(InputError, match="source_text"):
        CLIPLoss(model, "a", loss="directional")
    with pytest.raises(InputError, match="empty"):
        CLIPLoss(model, "")
    with pytest.raises(Exception, match="no file or known model"):
        CLIPLoss("no-such-model", "a red circle")


def test_score_report_and_adversarial_flag(model):
    from clipguide.guide import FourierImage, score, steer

    torch.manual_seed(3)
    judge = clipguide.create_model("ViT-nano", tokenizer=model.tokenizer).eval()
    prompts = ["a red circle", "a blue square"]
    gen = FourierImage(32, 2, generator=torch.Generator().manual_seed(0))
    start = gen().detach()
    fn = CLIPLoss(model, "a red circle", cutouts=None)
    result = steer(gen, fn, steps=15, lr=0.1, progress=False)
    same = score(result.images, prompts, guide=model, judge=model, initial_images=start)
    other = score(result.images, prompts, guide=model, judge=judge, initial_images=start)
    s = same.summary()
    assert s["n"] == 2 and 0 <= s["judge_top1"] <= 1 and s["adversarial_share"] is not None
    # guided by the model that judges: never flagged; the flag needs the guide score to rise
    assert not any(same.adversarial)
    assert len(other.adversarial) == 2
    assert same.oracle_passed[0] in (True, False)          # world captions get oracle checks


def test_score_reports_the_unguided_baseline(model):
    """The pictures before guidance are scored by the same judge and oracle; the margin is the
    difference of the correct shares."""
    from clipguide.guide import score

    judge = clipguide.create_model("ViT-nano", tokenizer=model.tokenizer).eval()
    prompts = ["a red circle", "a blue square", "a gothic church at night"]
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    same = score(images, prompts, guide=model, judge=judge, initial_images=images)
    s = same.summary()
    assert same.unguided_judge_correct == same.judge_correct
    assert same.unguided_oracle_passed == same.oracle_passed
    assert s["margin"] == 0 and s["unguided_correct"] == s["correct"]
    gray = torch.full_like(images, 0.5)                     # nothing drawn: the oracle finds no object
    before = score(images, prompts, guide=model, judge=judge, initial_images=gray)
    assert before.unguided_oracle_passed[:2] == [False, False]
    # three equal pictures get one judge choice: at most one of three different prompts is right
    assert sum(before.unguided_judge_correct) <= 1
    assert before.judge_correct == same.judge_correct       # the guided side does not depend on the start
    # no judge: the oracle alone decides, before as after
    alone = score(images, prompts, guide=model, initial_images=gray).summary()
    assert alone["unguided_judge_top1"] == 1.0 and alone["unguided_oracle_pass"] is not None
    blind = score(images, prompts, guide=model, judge=judge, initial_images=gray, oracle=False).summary()
    assert blind["unguided_oracle_pass"] is None and blind["oracle_pass"] is None
    assert "margin" not in score(images, prompts, guide=model, judge=judge).summary()
    with pytest.raises(InputError, match="one per prompt"):
        score(images, prompts, guide=model, judge=judge, initial_images=gray[:2])


def test_margin_is_counted_not_rounded():
    from clipguide.guide.score import ScoreReport

    r = ScoreReport(["a", "b", "c"], [0.0] * 3, [0.0] * 3, judge_correct=[True, True, False],
                    oracle_passed=[True, None, True], unguided_judge_correct=[True, True, True],
                    unguided_oracle_passed=[False, None, False])
    s = r.summary()                                         # correct: the judge right and no oracle failure
    assert (s["correct"], s["unguided_correct"], s["margin"]) == (0.6667, 0.3333, 0.3333)
    r.judge_correct, r.oracle_passed = [True, False, False], [None] * 3
    r.unguided_judge_correct, r.unguided_oracle_passed = [True, True, False], [None] * 3
    s = r.summary()                                         # 1/3 - 2/3; the rounded shares would give -0.3334
    assert (s["correct"], s["unguided_correct"], s["margin"]) == (0.3333, 0.6667, -0.3333)


def test_run_options_are_checked_against_the_generator():
    from clipguide.guide import FourierImage
    from clipguide.guide.suite import check_run_options

    gen = FourierImage(16, 1)
    check_run_options(gen, {"optimizer": "sgd"})            # the base run() hands it to steer()
    with pytest.raises(InputError, match="guidance_scale"):
        check_run_options(gen, {"guidance_scale": 1.0})
    with pytest.raises(InputError, match="own argument"):
        check_run_options(gen, {"steps": 3})


@pytest.mark.parametrize("arch", ["ViT-nano", "RN-nano"])
def test_bf16_guidance_gradient_matches_fp32(model, arch):
    """A frozen bf16 model keeps bf16 weights (no per-step casts); its gradient stays close to fp32's."""
    import copy

    torch.manual_seed(0)
    base = clipguide.create_model(arch, tokenizer=model.tokenizer).eval()
    S = base.config.vision.image_size
    x = torch.rand(1, 3, S + 8, S + 8)

    def grad(m):
        fn = CLIPLoss(m, "a red circle", cutouts=Cutouts(size=S, n=8))
        xx = x.clone().requires_grad_(True)
        fn(xx, torch.Generator().manual_seed(0)).backward()
        return xx.grad, fn

    g32, _ = grad(copy.deepcopy(base))
    g16, fn = grad(copy.deepcopy(base).set_precision("bf16"))
    assert fn.model0.dtype == torch.bfloat16
    assert F.cosine_similarity(g32.flatten(), g16.flatten(), dim=0) > 0.99


def test_score_says_what_the_judge_chose_and_which_checks_failed(model):
    """Each row names the caption the judge chose and the oracle's failed checks: a render passes
    every check, the same render under a caption of another colour fails the colour check."""
    from clipguide.guide import score
    from clipguide.world import World
    from clipguide.world.captions import detailed_caption

    w = World(seed=5, split="all", kinds={"object": 1})
    k = next(i for i in range(50) if "red" not in detailed_caption(w.attrs(i)))
    image, attrs = w.sample(k).image, w.attrs(k)
    right = detailed_caption(attrs)                     # every attribute named: size, place, background
    wrong = right.replace(f" {attrs['colour']} {attrs['shape']}", f" red {attrs['shape']}")
    images = torch.stack([image, image])
    report = score(images, [right, wrong], guide=model, judge=model, suite=[right, wrong, "a gothic church"])
    assert report.oracle_failed[0] == [] and report.oracle_passed[0] is True
    # no red part is there: the colour fails, and with it the count of red parts; the place holds
    assert report.oracle_failed[1] == ["colour", "count"] and report.oracle_passed[1] is False
    assert report.judge_choice[0] == report.judge_choice[1]                  # one picture, one choice
    assert report.judge_choice[0] in (right, wrong, "a gothic church")
    assert report.judge_correct == [report.judge_choice[0] == right, report.judge_choice[0] == wrong]


def test_whole_picture_losses_see_each_picture_once_unaugmented(model):
    """whole_picture_losses: per-picture losses of one whole view each, equal to a CLIPLoss without
    cutouts, without gradients, and not drawn from the cutouts (the same whatever the generator)."""
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    cut = CLIPLoss(model, "a red circle | a blue square:0.5", cutouts=Cutouts(size=32, n=4, min_size=0.3))
    whole = cut.whole_picture_losses(x)
    plain = CLIPLoss(model, "a red circle | a blue square:0.5", cutouts=None)
    plain(x)
    assert whole.shape == (3,) and not whole.requires_grad
    assert torch.allclose(whole, plain.last["per_image"], atol=1e-6)
    cut(x, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(cut.last["per_image"], whole, atol=1e-4)     # the augmented views differ


def test_a_search_ranks_whole_pictures_or_augmented_views():
    """ranking_losses: "whole" uses the loss's whole-picture losses when it has them, "augmented"
    its own views (the loss called with the seeded generator); an unknown view is refused."""
    from clipguide.generators.base import check_search_view, ranking_losses

    class Both:
        def __init__(self):
            self.last = {}

        def __call__(self, images, generator=None):
            self.seed = generator.initial_seed()
            per = images.flatten(1).mean(1) + 1.0
            self.last = {"per_image": per}
            return per.mean()

        def whole_picture_losses(self, images):
            return images.flatten(1).mean(1)

    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(ranking_losses(Both(), x, 0, "whole"), x.flatten(1).mean(1))
    both = Both()
    assert torch.allclose(ranking_losses(both, x, 5, "augmented"), x.flatten(1).mean(1) + 1.0)
    assert both.seed == 5                                    # the views are drawn from the seed given
    only_views = lambda images, generator=None: images.flatten(1).mean(1)[:1].mean()   # noqa: E731
    assert torch.allclose(ranking_losses(only_views, x[:1], 0, "whole"), x[:1].mean().reshape(1))
    with pytest.raises(InputError, match="search_view"):
        check_search_view("crops")


def test_score_encodes_many_pictures_in_chunks_with_the_same_result(model, monkeypatch):
    """score's encoders take a large batch a chunk at a time (memory stays bounded) and give what
    one picture at a time gives; the augmented score draws its views chunk by chunk."""
    import importlib

    S = importlib.import_module("clipguide.guide.score")         # the module (clipguide.guide.score is the function)
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = S._text(model, ["a red circle"] * 7)
    whole = S._image(model, x)
    monkeypatch.setattr(S, "CHUNK", 3)
    assert torch.allclose(S._image(model, x), whole, atol=1e-5)
    assert torch.allclose(whole, torch.cat([S._image(model, x[i:i + 1]) for i in range(7)]), atol=1e-5)
    aug = S._augmented(model, x, text)
    assert aug.shape == (7,) and torch.equal(aug, S._augmented(model, x, text))
    from clipguide.preprocess import resize_center_crop

    size = model.config.vision.image_size                # views that are the whole picture: each chunk's pictures
    monkeypatch.setattr(S, "Cutouts", lambda n, **kw: (  # must meet their own texts
        lambda images, rng: resize_center_crop(images, size).repeat_interleave(n, dim=0)))
    own = S._text(model, ["a red circle", "a blue square", "a gothic church", "a tree at night", "two red crosses",
                          "a house in the snow", "three black hexagons"])
    expected = (S._image(model, x) * own).sum(dim=-1)
    assert torch.allclose(S._augmented(model, x, own, n=2), expected, atol=1e-5)
