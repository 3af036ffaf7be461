"""The bundled models: present, small, described, and trained (they read held-out world pictures far
better than chance; the full figures are in their model cards, from `clipguide eval`)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import clipguide
from clipguide.generators.quality import world_renders
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


@pytest.mark.parametrize("family", _bundled_generator_families())
def test_bundled_generator_starts_from_a_world_picture(family):
    """A bundled generator has a card with its command and, started from a world picture (its
    encoder, DDIM inversion, or inversion by optimisation), gives the picture back closely: the
    loading and start paths work on the shipped network (a VQGAN with random weights is off by RMS
    0.35; for diffusion the inversion does most of it, and the sampling test below checks training)."""
    from clipguide.generators import BUNDLED, build_generator, load_network

    stem = BUNDLED[family].removesuffix(".safetensors")
    card = (ASSETS / f"{stem}.md").read_text()
    assert f"clipguide train-generator {family}" in card and "training time" in card
    real = world_renders(4)
    gen = build_generator(family, network=load_network(family), batch=4, init=real, seed=0)  # may optimise
    with torch.no_grad():
        back = gen()
    assert back.shape == real.shape and 0 <= back.min() and back.max() <= 1
    assert float((back - real).pow(2).mean().sqrt()) < 0.12


def _unguided(family: str, networks: dict, batch: int) -> dict:
    """Unguided pictures (seed 0) of each named network of a family, checked for shape and range."""
    from clipguide.generators.quality import unguided_samples

    pictures = {}
    for name, net in networks.items():
        pictures[name] = unguided_samples(family, batch, net, batch=batch, seed=0)
        assert pictures[name].shape == (batch, 3, 64, 64)
        assert 0 <= pictures[name].min() and pictures[name].max() <= 1
    return pictures


def _closer_to_world_than_flat_and_untrained(pictures: dict, real: torch.Tensor) -> None:
    """In the judge's feature space (mean embedding), the trained network's pictures are closer to
    world renders than a flat picture of the world's mean colour and than the untrained network's."""
    from clipguide.guide.score import _image

    judge = clipguide.load("judge")
    target = _image(judge, real).mean(dim=0)
    flat = real.mean(dim=(0, 2, 3), keepdim=True).expand_as(pictures["trained"])
    distance = {name: float((_image(judge, x).mean(dim=0) - target).norm()) for name, x in
                (("trained", pictures["trained"]), ("flat", flat), ("untrained", pictures["untrained"]))}
    assert distance["trained"] < distance["flat"] and distance["trained"] < distance["untrained"], distance


def test_bundled_diffusion_draws_world_like_pictures():
    """The bundled diffusion network's unguided (unconditional) pictures are smooth like world
    renders and, in the judge's feature space, closer to them than a flat picture of the world's
    mean colour and than the pictures of the same UNet untrained (diffusers' own initialisation,
    decoded by the same trained VQGAN, so smooth as well: measured total variation 0.0014 trained,
    0.0042 untrained, 0.0056 world renders; judge distances 0.68, 0.96, flat 0.94)."""
    import dataclasses

    from diffusers import UNet2DModel

    from clipguide.generators import load_network
    from clipguide.guide.regularisers import total_variation

    real = world_renders(48)
    trained = load_network("diffusion")
    torch.manual_seed(0)
    unet = UNet2DModel.from_config(trained.unet.config).to(next(trained.unet.parameters()).dtype).eval()
    untrained = dataclasses.replace(trained, unet=unet, _ddim_cache={})
    pictures = _unguided("diffusion", {"trained": trained, "untrained": untrained}, batch=6)
    real_tv = total_variation(real).mean()
    assert total_variation(pictures["trained"]).mean() < 4 * real_tv
    _closer_to_world_than_flat_and_untrained(pictures, real)


def test_bundled_diffusion_draws_the_prompt_it_reads():
    """The bundled diffusion network reads the bundled guide's text embeddings: without CLIP
    guidance (20 DDIM steps, its own classifier-free guidance) its pictures of the held-out suite's
    prompts are matched by the judge to their own prompt far above chance (1 in 52), and its
    unconditional pictures from the same noise are not (measured: 22 and 3)."""
    from clipguide.generators import load_network
    from clipguide.generators.diffusion import ddim_sample
    from clipguide.guide.score import judge_choice
    from clipguide.guide.suite import world_prompt_suite

    net, judge = load_network("diffusion"), clipguide.load("judge")
    assert net.text_conditional and net.text_model.config.embed_dim == clipguide.load("default").config.embed_dim
    prompts = world_prompt_suite()
    noise = torch.randn(len(prompts), net.channels, 16, 16, generator=torch.Generator().manual_seed(0))
    hits = {}
    with torch.no_grad():
        for label in ("text", "none"):
            models = [net.conditioned(p if label == "text" else None) for p in prompts]
            pictures = torch.cat([m.decode(ddim_sample(m, noise[i:i + 1], 20)) for i, m in enumerate(models)])
            hits[label] = int((judge_choice(judge, pictures, prompts) == torch.arange(len(prompts))).sum())
    assert hits["text"] >= 16 and hits["none"] <= 4, hits


def test_bundled_diffusion_edits_by_reading_the_picture_as_its_source():
    """Edits with the bundled diffusion network at its defaults (DDIM inversion under the source
    caption, its own drawing of the target, CLIP guidance; 50 steps, 8 cutouts): the judge, which
    never guides, takes most of 6 (2 of each kind) for the target (measured: 4), nothing outside
    the masks moves, and the night edits redraw the whole picture."""
    from clipguide.guide.edit_study import edit_cases, edit_study

    cases = edit_cases(6)
    report, _ = edit_study(clipguide.load("default"), clipguide.load("judge"), cases, generator="diffusion",
                           steps=50, cutouts=8, progress=False)
    assert sum(report.applied) >= 3 and not any(report.applied_before), report.applied
    for case, rmse in zip(cases, report.kept_rmse):
        assert rmse > 0.1 if case.kind == "night" else rmse == 0.0, (case.kind, rmse)


def test_bundled_stylegan_draws_world_like_pictures():
    """The bundled StyleGAN2's unguided pictures are, in the judge's feature space, closer to world
    renders than a flat picture of the world's mean colour and than the pictures of the same
    architecture untrained."""
    from clipguide.generators import load_network
    from clipguide.generators.stylegan import StyleGAN2Generator

    trained = load_network("stylegan")
    untrained = StyleGAN2Generator(trained.config, generator=torch.Generator().manual_seed(0)).eval()
    pictures = _unguided("stylegan", {"trained": trained, "untrained": untrained}, batch=8)
    _closer_to_world_than_flat_and_untrained(pictures, world_renders(48))


@pytest.mark.parametrize("name, least", [("bundled-vqgan", 5)])
def test_bundled_vqgan_prior_draws_the_prompt_it_reads(name, least):
    """A bundled text prior, read by the bundled guide and decoded by the bundled VQGAN, draws
    pictures of the held-out suite's prompts that the independent judge matches to their own prompt
    far above chance (1 in 52) and an untrained prior's pictures do not (measured: 11)."""
    from clipguide.generators import build_generator, load_network
    from clipguide.generators.prior import build_prior, check_prior_for, load_prior, prior_latent
    from clipguide.guide.score import judge_choice
    from clipguide.guide.suite import world_prompt_suite

    guide, judge, prior = clipguide.load("default"), clipguide.load("judge"), load_prior(name)
    gen = build_generator("vqgan", network=load_network("vqgan"))
    check_prior_for(prior, "vqgan", gen.latent, gen.codebook)
    assert prior.config.guide == "default" and prior.config.embed_dim == guide.config.embed_dim
    with pytest.raises(clipguide.InputError, match="another model"):          # the judge is as wide
        prior_latent(prior, judge, ["a red star"])
    torch.manual_seed(0)
    untrained = build_prior(prior.config).eval()
    untrained.load_state_dict({**untrained.state_dict(), **{k: v for k, v in prior.named_buffers()}})
    prompts = world_prompt_suite()
    truth = torch.arange(len(prompts))
    hits = {}
    with torch.no_grad():
        for label, p in (("trained", prior), ("untrained", untrained)):
            pictures = gen.decode(prior_latent(p, guide, prompts, torch.Generator().manual_seed(0)))
            hits[label] = int((judge_choice(judge, pictures, prompts) == truth).sum())
    assert hits["trained"] >= least and hits["untrained"] <= 2, hits
