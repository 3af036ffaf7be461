"""The bundled models: present, small, described, and trained (they read held-out world pictures far
better than chance; the full figures are in their model cards, from `clipguide eval`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipguide
from clipguide.world.tasks import get_task

ASSETS = Path(clipguide.__file__).parent / "assets"
BUNDLED = clipguide.bundled_models()


def test_budget_and_cards():
    total = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert total < 64 * 2**20
    assert "default" in BUNDLED
    for name in BUNDLED:
        card = (ASSETS / f"{name}.md").read_text()
        assert f"clipguide train --config {name}" in card and "training time" in card
        assert '"retrieval"' in card and (ASSETS / f"{name}-curves.png").is_file()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_reads_held_out_pictures(name):
    model = clipguide.load(name)
    if name == "default":
        assert model.config.vision.image_size == 64 and model.num_parameters() <= 10_000_000
    accuracies = {}
    for task_name in ("colour_shape", "scene", "relation"):
        task = get_task(task_name, split="eval")
        items = task.items(48, seed=0)
        images = torch.stack([it.image for it in items])
        with torch.no_grad():
            feats = model.encode_image(model.preprocess(images), normalize=True)
            right = 0
            for f, it in zip(feats, items):
                text = model.encode_text(model.tokenize(list(it.candidates)), normalize=True)
                right += int((text @ f).argmax() == it.label)
        accuracies[task_name] = right / len(items)
        chance = 1 / len(items[0].candidates)
        assert accuracies[task_name] > min(0.5, 4 * chance), (task_name, accuracies)


def test_bundled_default_guides_by_name(tmp_path):
    from clipguide.guide.suite import guided_image

    model = clipguide.load("default")
    res = guided_image(model, "a red circle", steps=3, cutouts=2, progress=False)
    assert res.images.shape == (1, 3, 64, 64)
    path = res.save(tmp_path / "x.png")
    from PIL import Image
    with Image.open(path) as im:
        prov = json.loads(im.text["clipguide"])
    assert prov["models"][0]["hash"]



def _bundled_generator_families():
    from clipguide.generators import BUNDLED

    return [f for f in BUNDLED if clipguide.has_bundled_generator(f)]


def _world_pictures(n):
    from clipguide.world import World, WorldConfig

    return torch.stack([World(WorldConfig(seed=123)).sample(i).image for i in range(n)])


def _with_random_weights(net):
    import copy

    scrambled = copy.deepcopy(net)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in getattr(scrambled, "unet", scrambled).parameters():     # a diffusion pipeline's UNet
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return scrambled


@pytest.mark.parametrize("family", _bundled_generator_families())
def test_bundled_generator_starts_from_a_world_picture(family):
    """A bundled generator has a card with its command, and starting from a world picture gives it
    back closely (by its encoder or by inversion; a VQGAN with random weights is off by RMS 0.35)."""
    from clipguide.generators import BUNDLED, build_generator, load_network

    stem = BUNDLED[family].removesuffix(".safetensors")
    card = (ASSETS / f"{stem}.md").read_text()
    assert f"clipguide train-generator {family}" in card and "training time" in card
    real = _world_pictures(4)
    with torch.no_grad():
        back = build_generator(family, network=load_network(family), batch=4, init=real, seed=0)()
    assert back.shape == real.shape and 0 <= back.min() and back.max() <= 1
    assert float((back - real).pow(2).mean().sqrt()) < 0.12


def test_bundled_diffusion_draws_world_like_pictures():
    """The bundled diffusion network's unguided pictures are smooth like world renders and closer to
    them in the judge's feature space than the pictures of the same network with random weights."""
    from clipguide.generators import build_generator, load_network
    from clipguide.guide.regularisers import total_variation

    judge = clipguide.load("judge")
    real = _world_pictures(48)

    def features(x):
        with torch.no_grad():
            return judge.encode_image(judge.preprocess(x), normalize=True).mean(dim=0)

    trained = load_network("diffusion")
    pictures = {}
    for name, net in (("trained", trained), ("random", _with_random_weights(trained))):
        with torch.no_grad():
            pictures[name] = build_generator("diffusion", network=net, batch=6, seed=0)()
        assert pictures[name].shape == (6, 3, 64, 64)
        assert 0 <= pictures[name].min() and pictures[name].max() <= 1
    real_tv = total_variation(real).mean()
    assert total_variation(pictures["trained"]).mean() < 4 * real_tv < total_variation(pictures["random"]).mean()
    target = features(real)
    assert (features(pictures["trained"]) - target).norm() < (features(pictures["random"]) - target).norm()
