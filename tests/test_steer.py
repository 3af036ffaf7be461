"""Image parameterizations (the shared generator battery) and the steering loop."""
from __future__ import annotations

import json

import pytest
import torch

import clipguide
from clipguide.errors import InputError
from clipguide.guide import (CLIPLoss, Cutouts, FourierImage, GradedImage, PixelImage, StopSteering, l2_to,
                             range_penalty, saturation, steer, total_variation)
from clipguide.tokenizer import Tokenizer

from batteries import GeneratorBattery


class TestPixels(GeneratorBattery):
    def build(self, batch=1, seed=0, init=None):
        return PixelImage(32, batch, init=init, generator=torch.Generator().manual_seed(seed))


class TestFourier(GeneratorBattery):
    def build(self, batch=1, seed=0, init=None):
        return FourierImage(32, batch, init=init, generator=torch.Generator().manual_seed(seed))


class TestGrade(GeneratorBattery):
    """The colour grade starts from its image; the battery's seeds choose the image."""

    def build(self, batch=1, seed=0, init=None):
        if init is None:
            init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        return GradedImage(32, batch, init=init)


def _square(x0: int) -> torch.Tensor:
    img = torch.full((1, 3, 32, 32), 0.6)
    img[..., 8:24, x0:x0 + 16] = torch.tensor([0.9, 0.2, 0.1]).view(1, 3, 1, 1)
    return img


def test_grade_recolours_but_cannot_draw_or_move():
    """Steered toward a darker, bluer copy of its picture, the grade gets there; toward the same
    picture with the square moved, it cannot (12 numbers per picture move colours, not shapes)."""
    image = _square(4)
    night = (image * torch.tensor([0.3, 0.35, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.0, 0.02, 0.12]).view(1, 3, 1, 1))
    moved = _square(12)
    errors = {}
    for name, target in (("night", night), ("moved", moved)):
        gen = GradedImage(32, 1, init=image)
        res = steer(gen, lambda x, generator=None: ((x - target) ** 2).mean(), steps=300, lr=0.05, progress=False)
        errors[name] = float((res.images - target).abs().mean())
    assert errors["night"] < 0.01 < (moved - image).abs().mean() * 0.5 < errors["moved"]
    with pytest.raises(InputError, match="recolours an image"):
        GradedImage(32, 1)
    with pytest.raises(InputError, match="starts from an image"):
        GradedImage(32, 1, init=image).choose_start(lambda x, generator=None: x.mean(), 2)


# --- regularisers ------------------------------------------------------------------------------------
def test_regularisers():
    flat = torch.full((2, 3, 8, 8), 0.5)
    noisy = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert (total_variation(flat) == 0).all() and (total_variation(noisy) > 0).all()
    assert (range_penalty(flat) == 0).all() and (range_penalty(flat + 1) > 0).all()
    grey = torch.full((1, 3, 4, 4), 0.3)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    assert saturation(grey) == 0 and saturation(red) == 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    edited = flat.clone()
    edited[..., 4:] = 0                                       # change only outside the mask
    assert l2_to(edited[:1], flat[:1], mask) == 0 and l2_to(edited[:1], flat[:1]) > 0


# --- the loop ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loss_fn():
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"] * 5, vocab_size=600, context_length=16)
    model = clipguide.create_model("ViT-nano", tokenizer=tok).eval()
    return CLIPLoss(model, "a red circle | a blue square:-0.3", cutouts=Cutouts(size=32, n=4, noise=0.05))


def _run(loss_fn, seed=0, steps=6, **kw):
    gen = FourierImage(32, 1, generator=torch.Generator().manual_seed(seed))
    return steer(gen, loss_fn, steps=steps, lr=0.05, seed=seed, progress=False, **kw)


def test_same_seed_is_bit_identical(loss_fn):
    a, b = _run(loss_fn, seed=1), _run(loss_fn, seed=1)
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, _run(loss_fn, seed=2).images)


def test_loss_goes_down(loss_fn):
    r = _run(loss_fn, steps=25)
    assert r.best_loss < r.losses[0] and r.steps == 25 and r.stopped is None


def test_callback_can_stop_and_best_is_kept(loss_fn):
    seen = []

    def cb(info):
        seen.append(info.step)
        if info.step == 3:
            raise StopSteering("enough")

    r = _run(loss_fn, steps=10, callback=cb)
    assert seen == [0, 1, 2, 3] and "enough" in r.stopped and r.images.shape == (1, 3, 32, 32)


def test_interrupt_returns_best_so_far(loss_fn):
    def cb(info):
        if info.step == 2:
            raise KeyboardInterrupt

    r = _run(loss_fn, steps=10, callback=cb)
    assert r.stopped.startswith("interrupted") and r.steps == 3


def test_non_finite_loss_stops_with_last_good_image(loss_fn):
    calls = {"n": 0}

    def bad_loss(images, generator=None):
        calls["n"] += 1
        value = loss_fn(images, generator=generator)
        return value * float("nan") if calls["n"] == 4 else value

    r = _run(bad_loss, steps=10)
    assert "non-finite" in r.stopped and r.steps == 3 and torch.isfinite(r.images).all()


def test_saves_timelapse_and_provenance(loss_fn, tmp_path):
    from PIL import Image

    r = _run(loss_fn, steps=6, frame_every=2, save_every=3, out_dir=tmp_path / "steps")
    png = r.save(tmp_path / "out.png")
    with Image.open(png) as im:
        prov = json.loads(im.text["clipguide"])
    assert prov["seed"] == 0 and prov["prompts"][0]["text"] == "a red circle"
    assert prov["prompts"][1]["weight"] == -0.3 and len(prov["models"][0]["hash"]) == 16
    assert prov["clipguide_version"] == clipguide.__version__
    gif = r.save_timelapse(tmp_path / "t.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 3
    assert len(list((tmp_path / "steps").glob("*.png"))) == 2


def test_bad_arguments(loss_fn):
    gen = PixelImage(8)
    with pytest.raises(InputError):
        steer(gen, loss_fn, steps=0, progress=False)
    with pytest.raises(InputError):
        steer(gen, loss_fn, lr=-1, progress=False)
    with pytest.raises(InputError, match="optimizer"):
        steer(gen, loss_fn, optimizer="lion", progress=False)
    with pytest.raises(InputError, match="no parameters"):
        steer(torch.nn.Identity(), loss_fn, progress=False)
