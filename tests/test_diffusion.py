"""Diffusion guidance through diffusers: pipeline directories written by the tests in the diffusers
layout (a pixel UNet2DModel pipeline and a tiny Stable-Diffusion-layout latent pipeline)."""
from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from batteries import GeneratorBattery  # noqa: E402
from clipguide.errors import CheckpointError, InputError  # noqa: E402
from clipguide.generators.diffusion import DiffusionLatent, ddim_invert, ddim_sample, load_diffusion  # noqa: E402
from clipguide.generators.base import SEARCH_SEED_OFFSET  # noqa: E402


def _unet(**kw):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw)


def _save_pipeline(root, components: dict, class_name: str):
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for name, obj in components.items():
        if obj is None:
            index[name] = [None, None]
            continue
        obj.save_pretrained(root / name)
        lib = "transformers" if type(obj).__module__.startswith("transformers") else "diffusers"
        index[name] = [lib, type(obj).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    sched = diffusers.DDIMScheduler(num_train_timesteps=100)
    return _save_pipeline(tmp_path_factory.mktemp("ddpm") / "pipe", {"unet": _unet(), "scheduler": sched},
                          "DDPMPipeline")


@pytest.fixture(scope="module")
def pixel_model(pixel_dir):
    return load_diffusion(pixel_dir)


def _clip_tokenizer(root):
    """A byte-level CLIP tokenizer with no merges: every character is a token (enough to encode text)."""
    import transformers

    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]   # byte-level alphabet
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=8), len(vocab)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    import transformers

    base = tmp_path_factory.mktemp("sd")
    tok, vocab = _clip_tokenizer(base / "tok-src")
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8))
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    unet = diffusers.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                          layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                                          attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    return _save_pipeline(base / "pipe", {"vae": vae, "unet": unet, "scheduler": sched, "text_encoder": text,
                                          "tokenizer": tok, "safety_checker": None, "feature_extractor": None},
                          "StableDiffusionPipeline")


class TestDiffusionBattery(GeneratorBattery):
    init_tolerance = 0.15        # DDIM inversion with a few steps of an untrained UNet is approximate

    @pytest.fixture(autouse=True)
    def _model(self, pixel_model):
        self.model = pixel_model

    def build(self, batch=1, seed=0, init=None):
        return DiffusionLatent(self.model, size=16, batch=batch, init=init, sample_steps=3,
                               generator=torch.Generator().manual_seed(seed))

    def init_image(self):
        return super().init_image()[..., :16, :16]


def _redness(images, generator=None):
    """A differentiable stand-in for a CLIP loss: distance to pure red."""
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return (images - red).pow(2).mean()


@pytest.mark.parametrize("space", ["clean", "noise"])
def test_guidance_lowers_the_loss_ddim_and_ddpm(pixel_model, space):
    for sched in ("ddim", "ddpm"):
        gen = DiffusionLatent(pixel_model, size=16, batch=2, generator=torch.Generator().manual_seed(1))
        free = gen.run(_redness, steps=6, guidance_scale=0.0, scheduler=sched, progress=False, seed=3)
        guided = gen.run(_redness, steps=6, guidance_scale=1.0, scheduler=sched, progress=False, seed=3,
                         guidance_space=space)
        assert guided.images.shape == (2, 3, 16, 16) and 0 <= guided.images.min() and guided.images.max() <= 1
        assert _redness(guided.images) < _redness(free.images) - 0.02, (sched, space)
        assert guided.steps == 6 and guided.provenance["sampler"] == sched
        assert guided.provenance["guidance_space"] == space


def test_guidance_stop_and_recurrence(pixel_model):
    """guidance_stop=0 is unguided sampling; guiding only the first half lands between none and all;
    recurrence repeats each guided step (one loss evaluation more per repeat) and is seeded."""
    gen = DiffusionLatent(pixel_model, size=16, batch=2, generator=torch.Generator().manual_seed(1))
    run = lambda **kw: gen.run(_redness, steps=6, progress=False, seed=3, **{"guidance_scale": 1.0, **kw})  # noqa: E731
    free = gen.run(_redness, steps=6, guidance_scale=0.0, progress=False, seed=3).images
    assert torch.equal(run(guidance_stop=0.0).images, free)
    half, full = _redness(run(guidance_stop=0.5).images), _redness(run().images)
    assert full < half < _redness(free)
    calls = {"n": 0}

    def counted(images, generator=None):
        calls["n"] += 1
        return _redness(images)

    again = gen.run(counted, steps=6, guidance_scale=1.0, progress=False, seed=3, recurrence=3, guidance_stop=0.5)
    assert calls["n"] == 3 * 3 + 3 and again.steps == 6
    assert torch.equal(again.images, run(recurrence=3, guidance_stop=0.5).images)
    assert _redness(again.images) < _redness(free)
    for bad in ({"guidance_space": "latent"}, {"guidance_stop": 1.5}, {"recurrence": 0}, {"recurrence": 1.5},
                {"guidance_scale": float("nan")}):
        with pytest.raises(InputError):
            run(**bad)


def test_same_seed_same_result_and_ddpm_uses_the_seed(pixel_model):
    gen = DiffusionLatent(pixel_model, size=16, generator=torch.Generator().manual_seed(1))
    a = gen.run(_redness, steps=4, scheduler="ddpm", seed=5, progress=False).images
    b = gen.run(_redness, steps=4, scheduler="ddpm", seed=5, progress=False).images
    c = gen.run(_redness, steps=4, scheduler="ddpm", seed=6, progress=False).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_image_start_is_inverted_on_first_use_only(pixel_model, monkeypatch):
    """DiffusionLatent(init=...) inverts its image when the latent is first used (forward,
    latent_l2), once, as the model was built; an edit's run() never needs that inversion."""
    import clipguide.generators.diffusion as D

    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    calls = []
    real = D.ddim_invert
    monkeypatch.setattr(D, "ddim_invert", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    gen = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=4)
    gen.run(_redness, guidance_scale=0.0, progress=False)
    assert calls == []
    first = gen()
    expected = real(pixel_model, pixel_model.encode(init), 4)
    assert torch.allclose(gen.latent.detach(), expected, atol=1e-6) and torch.equal(gen.start, gen.latent.detach())
    assert torch.equal(gen(), first) and (gen.latent_l2() == 0).all() and calls == [1]
    other = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=4)
    assert (other.latent_l2() == 0).all() and len(calls) == 2
    ready = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=4)
    ready.prepare()                                    # what a caller reading .start directly calls first
    assert torch.allclose(ready.start, expected, atol=1e-6) and len(calls) == 3
    given = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=4)
    given.set_start(torch.ones_like(expected))         # a start given replaces the inversion, never undone
    given()
    assert torch.equal(given.latent.detach(), torch.ones_like(expected)) and len(calls) == 3


def test_sdedit_strength_controls_how_far_an_edit_goes(pixel_model):
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    gen = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=8)
    run = lambda **kw: gen.run(_redness, guidance_scale=0.0, progress=False, **kw).images   # noqa: E731
    near, far = run(strength=0.25, edit_start="noise"), run(strength=0.9, edit_start="noise")
    inverted = run(strength=0.9)                                  # the default start: DDIM inversion
    assert (near - init).abs().mean() < (far - init).abs().mean()
    assert (inverted - init).abs().mean() < (far - init).abs().mean()
    assert (run(strength=1.0) - init).abs().mean() < (run(strength=1.0, edit_start="noise") - init).abs().mean()
    with pytest.raises(InputError, match="edit_start"):
        run(edit_start="latent")


def test_a_region_keeps_the_rest_of_the_image_on_its_own_path(pixel_model):
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    region = torch.zeros(16, 16)
    region[4:12, 4:12] = 1
    inside = region.bool()
    for start in ("inversion", "noise"):
        gen = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=6)
        run = lambda: gen.run(_redness, strength=0.8, guidance_scale=1.0, progress=False, edit_start=start)  # noqa: E731
        free = run().images
        gen.restrict(region)
        held = run()
        out = held.images[0]
        assert held.provenance["region"] is True and held.provenance["edit_start"] == start
        torch.testing.assert_close(out[:, ~inside], init[0][:, ~inside], atol=1e-5, rtol=0)   # the image, exactly
        assert (free[0][:, ~inside] - init[0][:, ~inside]).abs().mean() > 1e-3                 # which it was not
        assert (out[:, inside] - init[0][:, inside]).abs().mean() > 1e-3                       # the region is redrawn
        # ... around what stays at every step, not cut out of the free picture at the end
        assert (out[:, inside] - free[0][:, inside]).abs().mean() > 1e-4
        gen.restrict(None)
        torch.testing.assert_close(run().images, free)
    gen = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=6)
    gen.restrict(region * 0.5)                               # a soft region: held only where it is 0
    soft = gen.run(_redness, strength=0.8, guidance_scale=1.0, progress=False).images[0]
    torch.testing.assert_close(soft[:, ~inside], init[0][:, ~inside], atol=1e-5, rtol=0)
    assert (soft[:, inside] - init[0][:, inside]).abs().mean() > 1e-3

    def stop_at_two(info):
        if info.step == 1:
            raise KeyboardInterrupt
    stopped = gen.run(_redness, strength=0.8, guidance_scale=1.0, progress=False, callback=stop_at_two)
    assert stopped.stopped and stopped.steps == 2
    torch.testing.assert_close(stopped.images[0][:, ~inside], init[0][:, ~inside], atol=1e-5, rtol=0)
    for bad, match in [(torch.full((16, 16), 2.0), "values must be in"), (torch.ones(3, 1, 16, 16), "the batch"),
                       (torch.ones(2, 16, 16), "got \\(2, 16, 16\\)")]:
        with pytest.raises(InputError, match=match):
            gen.restrict(bad)
    pair = DiffusionLatent(pixel_model, size=16, init=init, batch=2, sample_steps=4)
    pair.restrict(torch.stack([region, 1 - region])[:, None])                # one region per picture
    both = pair.run(_redness, strength=0.8, guidance_scale=1.0, progress=False).images
    torch.testing.assert_close(both[0][:, ~inside], init[0][:, ~inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1][:, inside], init[0][:, inside], atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="init="):
        DiffusionLatent(pixel_model, size=16, sample_steps=4).restrict(region)


def test_a_ddpm_edit_starts_from_noise_and_ddim_from_the_inversion(pixel_model):
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    gen = DiffusionLatent(pixel_model, size=16, init=init, sample_steps=4)
    ddpm = gen.run(_redness, scheduler="ddpm", guidance_scale=0.0, progress=False).provenance
    ddim = gen.run(_redness, guidance_scale=0.0, progress=False).provenance
    assert (ddpm["edit_start"], ddpm["strength"]) == ("noise", 0.6)
    assert (ddim["edit_start"], ddim["strength"]) == ("inversion", 1.0)
    assert "edit_start" not in DiffusionLatent(pixel_model, size=16, sample_steps=4).run(
        _redness, guidance_scale=0.0, progress=False).provenance


def test_a_region_on_a_latent_pipeline_holds_the_latent_cells_it_does_not_touch(latent_dir):
    model = load_diffusion(latent_dir)
    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    region = torch.zeros(32, 32)
    region[:, :15] = 1                                  # touches latent columns 0-7 (2 pixels a cell)
    gen = DiffusionLatent(model, size=32, init=init, sample_steps=3)
    decoded, decode = [], gen.model.decode
    gen.model.decode = lambda x0: (decoded.append(x0.detach()), decode(x0))[1]   # the latents the sampler decodes
    with torch.no_grad():
        own = model.encode(init)
    gen.run(_redness, guidance_scale=1.0, progress=False)
    free = decoded[-1]
    gen.restrict(region)
    gen.run(_redness, guidance_scale=1.0, progress=False)
    held = decoded[-1]
    torch.testing.assert_close(held[..., 8:], own[..., 8:])                    # the image's own latent
    assert (free[..., 8:] - own[..., 8:]).abs().mean() > 1e-2                  # which the free sample is not
    assert (held[..., :8] - own[..., :8]).abs().mean() > 1e-2                  # the region is redrawn


def test_ddim_inversion_round_trip_improves_with_steps(pixel_model):
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    errs = []
    for steps in (2, 20):
        with torch.no_grad():
            back = ddim_sample(pixel_model, ddim_invert(pixel_model, x0, steps), steps)
        errs.append((back - x0).abs().mean().item())
    assert errs[1] < errs[0] and errs[1] < 0.1


def test_prediction_types_split_and_join(pixel_model):
    x, out, ab = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor(0.3)
    cfg = pixel_model.scheduler.config
    old = cfg.prediction_type
    try:
        for kind in ("epsilon", "sample", "v_prediction"):
            pixel_model.scheduler.register_to_config(prediction_type=kind)
            eps, x0 = pixel_model.split(out, x, ab)
            torch.testing.assert_close(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x)      # x = a x0 + s eps
            torch.testing.assert_close(pixel_model.join(eps, x0, ab), out)
    finally:
        pixel_model.scheduler.register_to_config(prediction_type=old)


def test_latent_pipeline_in_the_stable_diffusion_layout(latent_dir):
    model = load_diffusion(latent_dir, prompt="a church")
    assert model.latent and model.scale_factor == 2 and model.conditioning.shape == (1, 8, 16)
    gen = DiffusionLatent(model, size=32, batch=2, generator=torch.Generator().manual_seed(0), sample_steps=3)
    res = gen.run(_redness, steps=3, guidance_scale=1.0, progress=False)
    assert res.images.shape == (2, 3, 32, 32)
    gen().mean().backward()
    assert gen.latent.grad is not None and gen.latent.grad.abs().sum() > 0
    with pytest.raises(InputError, match="multiple"):
        DiffusionLatent(model, size=31)


def test_clip_loss_guides_a_diffusion_model(pixel_model):
    import clipguide
    from clipguide.guide import CLIPLoss, Cutouts
    from clipguide.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"] * 8, vocab_size=600, context_length=16)
    clip = clipguide.create_model("ViT-nano", tokenizer=tok).eval()
    loss = CLIPLoss(clip, "a red circle", cutouts=Cutouts(4))
    res = DiffusionLatent(pixel_model, size=16, generator=torch.Generator().manual_seed(0)).run(
        loss, steps=3, progress=False)
    assert len(res.losses) == 3 and res.provenance["prompts"][0]["text"] == "a red circle"


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A pixel pipeline whose UNet reads the bundled 'default' CLIP's text embeddings (times 2) as
    its class label, with classifier-free guidance 3 by default."""
    import clipguide
    from clipguide.guide.steer import model_hash

    clip = clipguide.load("default")
    unet = _unet(class_embed_type="identity", time_embedding_dim=clip.config.embed_dim)
    root = _save_pipeline(tmp_path_factory.mktemp("text") / "pipe",
                          {"unet": unet, "scheduler": diffusers.DDIMScheduler(num_train_timesteps=100)},
                          "DDPMPipeline")
    (root / "clipguide.json").write_text(json.dumps({"text_condition": {
        "model": "default", "model_hash": model_hash(clip), "scale": 2.0, "cfg_scale": 3.0}}))
    return root


def test_a_text_conditional_unet_draws_the_prompt(text_dir):
    """The label is the text model's unit embedding times the scale; classifier-free guidance
    combines the conditional and unconditional (zero label) outputs; no prompt is the zero label."""
    model = load_diffusion(text_dir)
    assert model.text_conditional and model.cfg_scale == 3.0 and model.text_scale == 2.0
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(50)
    with torch.no_grad():
        emb = model.text_model.encode_text(model.text_model.tokenize(["a red star"]), normalize=True)
        cond = model.unet(x, t.expand(2), class_labels=2.0 * emb.expand(2, -1)).sample
        uncond = model.unet(x, t.expand(2), class_labels=torch.zeros(2, emb.shape[1])).sample
        star = model.conditioned("a red star")
        torch.testing.assert_close(star.predict(x, t), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.conditioned(None).predict(x, t), uncond)
        import dataclasses
        torch.testing.assert_close(dataclasses.replace(star, cfg_scale=1.0).predict(x, t), cond)
    assert model.label is None                             # conditioned() leaves the loaded model as it was
    gen = DiffusionLatent(model, size=16, generator=torch.Generator().manual_seed(0), sample_steps=3)
    with torch.no_grad():
        before = gen()
        gen.condition("a red star")
        red = gen()
        gen.condition("two blue circles")
        blue = gen()
        gen.condition(None)
        torch.testing.assert_close(gen(), before)
    assert not torch.allclose(red, blue) and not torch.allclose(red, before)
    plain = DiffusionLatent(model, size=16, generator=torch.Generator().manual_seed(0), sample_steps=3, cfg_scale=1.0)
    assert plain.model.cfg_scale == 1.0 and model.cfg_scale == 3.0
    with pytest.raises(InputError, match="cfg_scale"):
        DiffusionLatent(model, size=16, cfg_scale=-1.0)


def test_guided_pictures_are_drawn_for_their_prompt(text_dir):
    from clipguide.guide.suite import _generator

    model = load_diffusion(text_dir)
    gen, _ = _generator(model.text_model, "diffusion", 16, 0, network=model, prompt="a red star")
    expected = model.conditioned("a red star").label
    assert gen.model.label is not None and torch.equal(gen.model.label, expected)


def test_a_text_conditional_unet_needs_its_text_model(tmp_path, text_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(text_dir, bare)
    (bare / "clipguide.json").unlink()
    with pytest.raises(CheckpointError, match="names no text_condition model"):
        load_diffusion(bare)
    other = tmp_path / "other"
    shutil.copytree(text_dir, other)
    meta = json.loads((other / "clipguide.json").read_text())
    meta["text_condition"]["model_hash"] = "0" * 16
    (other / "clipguide.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="the model loaded by that name is another"):
        load_diffusion(other)


def test_bad_directories_say_what_is_wrong(tmp_path, pixel_dir):
    with pytest.raises(CheckpointError, match="no diffusion model"):
        load_diffusion(tmp_path / "nowhere")
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_diffusion(f)
    _unet().save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="single UNet2DModel"):
        load_diffusion(tmp_path / "bare")
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(pixel_dir, broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(CheckpointError, match="missing component.*scheduler"):
        load_diffusion(broken)
    index = json.loads((pixel_dir / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet1DModel"]
    odd = tmp_path / "odd"
    shutil.copytree(pixel_dir, odd)
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="UNet1DModel"):
        load_diffusion(odd)
    gen = DiffusionLatent(load_diffusion(pixel_dir), size=16)
    for bad, match in [({"strength": 0.0}, "strength"), ({"guidance_scale": -1}, "guidance_scale"),
                       ({"scheduler": "euler"}, "scheduler"), ({"steps": 0}, "steps")]:
        with pytest.raises(InputError, match=match):
            gen.run(_redness, progress=False, **bad)


def test_guidance_scale_on_the_command_line(pixel_dir, tmp_path, capsys):
    """`clipguide generate --guidance-scale / --guidance-stop` reach the diffusion sampler (they are in
    the PNG's provenance); other generators refuse them with a message."""
    from PIL import Image

    import clipguide
    from clipguide.cli import main
    from clipguide.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"] * 8, vocab_size=600, context_length=16)
    clip = clipguide.save(clipguide.create_model("ViT-nano", tokenizer=tok), tmp_path / "nano.safetensors")
    out = tmp_path / "d.png"
    args = ["generate", "a red circle", "--model", str(clip), "--out", str(out), "--steps", "2", "--cutouts", "2",
            "--size", "16", "--generator", "diffusion", "--generator-model", str(pixel_dir)]
    assert main(args + ["--guidance-scale", "2.5"]) == 0
    provenance = json.loads(Image.open(out).text["clipguide"])
    assert provenance["guidance_scale"] == 2.5 and provenance["sampler"] == "ddim"
    assert main(args[:-4] + ["--guidance-scale", "1"]) == 2
    assert "applies to --generator diffusion" in capsys.readouterr().err
    assert main(args + ["--guidance-scale", "-1"]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err
    # refused before any network loads (no bundled VQGAN here: that error would come first otherwise)
    vq = args[:-4] + ["--generator", "vqgan", "--generator-model", str(tmp_path / "missing.ckpt"), "--guidance-scale", "1"]
    assert main(vq) == 2
    assert "only applies to --generator diffusion (got vqgan)" in capsys.readouterr().err
    assert main(["eval", "--model", str(clip), "--guidance-scale", "1"]) == 2
    assert "not zero-shot" in capsys.readouterr().err
    assert main(args + ["--guidance-stop", "0.5"]) == 0
    provenance = json.loads(Image.open(out).text["clipguide"])
    assert provenance["guidance_stop"] == 0.5 and provenance["guidance_scale"] == 0.15   # the default scale
    for bad in ("1.5", "nan"):
        assert main(args + ["--guidance-stop", bad]) == 2
        assert "a number in [0, 1]" in capsys.readouterr().err
    assert main(args[:-4] + ["--guidance-stop", "0.5"]) == 2
    assert "--guidance-stop only applies to --generator diffusion" in capsys.readouterr().err


def test_cfg_scale_on_the_command_line(text_dir, tmp_path, capsys):
    """`--cfg-scale` reaches a text-conditional UNet (its provenance records it and that the prompt
    was drawn); other generators refuse it with a message, before anything loads."""
    from PIL import Image

    from clipguide.cli import main

    out = tmp_path / "t.png"
    args = ["generate", "a red star", "--model", "default", "--out", str(out), "--steps", "2", "--cutouts", "2",
            "--size", "16", "--generator", "diffusion", "--generator-model", str(text_dir)]
    assert main(args) == 0
    provenance = json.loads(Image.open(out).text["clipguide"])
    assert provenance["cfg_scale"] == 3.0 and provenance["text_conditioned"] is True
    assert main(args + ["--cfg-scale", "1.5"]) == 0
    assert json.loads(Image.open(out).text["clipguide"])["cfg_scale"] == 1.5
    assert main(args + ["--cfg-scale", "-2"]) == 2
    assert "--cfg-scale: cfg_scale (classifier-free guidance" in capsys.readouterr().err
    assert main(args[:-4] + ["--generator", "vqgan", "--generator-model", str(tmp_path / "missing.ckpt"),
                             "--cfg-scale", "2"]) == 2
    assert "--cfg-scale only applies to --generator diffusion (got vqgan)" in capsys.readouterr().err


def test_an_edit_inverts_the_image_under_its_source_text(text_dir, tmp_path, capsys):
    """A text-conditional network reads the image as the source text (inversion without
    classifier-free guidance) and draws the target; `--edit-start` reaches the sampler from the
    command line and only there."""
    from PIL import Image

    import clipguide
    from clipguide.cli import main
    from clipguide.guide.edit import edit_image

    model = load_diffusion(text_dir)
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    gen = DiffusionLatent(model, size=16, init=init, sample_steps=4)
    gen.condition("a red star", "a blue circle")
    assert torch.equal(gen.model.label, model.conditioned("a red star").label) and gen.model.cfg_scale == 3.0
    assert torch.equal(gen.inverter.label, model.conditioned("a blue circle").label) and gen.inverter.cfg_scale == 1.0
    read_as = lambda source: (gen.condition("a red star", source),                       # noqa: E731
                              gen.run(_redness, strength=0.9, guidance_scale=0.0, progress=False).images)[1]
    assert not torch.allclose(read_as("a blue circle"), read_as("a green square"))
    assert torch.equal(read_as("a blue circle"), read_as("a blue circle"))
    clip = clipguide.load("default")
    region = torch.zeros(16, 16)
    region[:8] = 1
    res = edit_image(clip, init, "a red star", source="a blue circle", generator="diffusion", network=model,
                     mask=region, steps=3, cutouts=2, progress=False, size=16)
    torch.testing.assert_close(res.images[0][:, 8:], init[0][:, 8:], atol=1e-5, rtol=0)
    assert res.provenance["region"] is True and res.provenance["edit_start"] == "inversion"
    assert res.provenance["strength"] == 1.0               # an inversion goes all the way up by default
    png = tmp_path / "in.png"
    Image.fromarray((init[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(png)
    out = tmp_path / "out.png"
    args = ["edit", "--image", str(png), "--prompt", "a red star", "--source", "a blue circle", "--out", str(out),
            "--steps", "2", "--cutouts", "2", "--generator", "diffusion", "--generator-model", str(text_dir)]
    assert main(args + ["--edit-start", "noise"]) == 0
    noised = json.loads(Image.open(out).text["clipguide"])
    assert noised["edit_start"] == "noise" and noised["strength"] == 0.6      # SDEdit stops part-way by default
    assert main(args + ["--strength", "0.3"]) == 0
    assert json.loads(Image.open(out).text["clipguide"])["strength"] == 0.3
    assert main(args[:-4] + ["--generator", "fourier", "--edit-start", "noise"]) == 2
    assert "--edit-start only applies to --generator diffusion" in capsys.readouterr().err
    assert main(["eval", "guided", "--generator", "diffusion", "--edit-start", "noise"]) == 2
    assert "--edit-start is for 'eval edits'" in capsys.readouterr().err


class _PerPicture:
    """_redness reporting each picture's value in `last["per_image"]`, as CLIPLoss does."""

    def __init__(self):
        self.last: dict = {}

    def __call__(self, images, generator=None):
        red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        per = (images - red).pow(2).flatten(1).mean(1)
        self.last = {"per_image": per.detach()}
        return per.mean()


def test_resampling_keeps_the_better_half_twice():
    from clipguide.generators.diffusion import _best_particles, _resample

    losses = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.5, 0.1, 0.9, 0.7]])
    assert _resample(losses).tolist() == [3, 1, 3, 1, 5, 4, 5, 4]
    assert _resample(torch.tensor([[2.0, 0.0, 1.0]])).tolist() == [1, 2, 1]        # an odd k keeps the upper half
    images = torch.arange(8.0).view(8, 1, 1, 1)
    assert _best_particles(images, losses.flatten(), 2).flatten().tolist() == [3.0, 5.0]


def _per(images):
    loss = _PerPicture()
    loss(images)
    return loss.last["per_image"]


def test_particles_let_the_loss_resample_samples(pixel_model):
    """particles=K samples K particles per picture, resampled by the loss at every guided step: by
    selection alone (guidance scale 0) the pictures come out redder than one sample's, and the
    picture returned is the one the loss ranks first."""
    gen = DiffusionLatent(pixel_model, size=16, batch=2, generator=torch.Generator().manual_seed(1))
    loss = _PerPicture()
    one = gen.run(loss, steps=6, guidance_scale=0.0, seed=3, progress=False)
    many = gen.run(loss, steps=6, guidance_scale=0.0, seed=3, progress=False, particles=8)
    assert many.images.shape == (2, 3, 16, 16) and many.provenance["particles"] == 8
    assert _redness(many.images) < _redness(one.images) - 0.01
    assert many.best_loss == pytest.approx(float(loss(many.images)), rel=1e-5)
    again = gen.run(loss, steps=6, guidance_scale=0.0, seed=3, progress=False, particles=8)
    assert torch.equal(again.images, many.images)
    guided = gen.run(loss, steps=6, guidance_scale=1.0, seed=3, progress=False, particles=4, scheduler="ddpm")
    assert _redness(guided.images) < _redness(one.images)
    with pytest.raises(InputError, match="per-picture"):
        gen.run(_redness, steps=2, progress=False, particles=2)
    edit = DiffusionLatent(pixel_model, size=16, init=torch.rand(1, 3, 16, 16), sample_steps=4)
    with pytest.raises(InputError, match="starts from an image"):
        edit.run(loss, strength=0.5, progress=False, particles=2)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match="particles"):
            gen.run(loss, steps=2, progress=False, particles=bad)


def test_search_starts_from_the_noise_whose_draft_the_loss_ranks_first(pixel_model):
    """search=N scores N starting noises by their unguided drafts (sample_steps DDIM steps) and
    samples from the best: unguided, with as many steps as the draft, the picture is that draft,
    the lowest of the N, never worse than the seeded noise's own."""
    build = lambda: DiffusionLatent(pixel_model, size=16, batch=2, sample_steps=5,  # noqa: E731
                                    generator=torch.Generator().manual_seed(1))
    loss = _PerPicture()
    seeded = build()
    one = seeded.run(loss, guidance_scale=0.0, seed=3, progress=False)
    with torch.no_grad():
        assert torch.allclose(one.images, seeded(), atol=1e-5)              # a run at scale 0 is the draft
    gen = build()
    rng = torch.Generator().manual_seed(3 + SEARCH_SEED_OFFSET)       # where the search draws its other starts
    with torch.no_grad():
        best = [float(_per(gen.decode(torch.cat([gen.latent.detach()[i:i + 1], gen.propose(7, rng)]))).min())
                for i in range(2)]
    searched = gen.run(loss, guidance_scale=0.0, seed=3, progress=False, search=8)
    assert searched.provenance["search"] == 8 and searched.provenance["search_view"] == "whole"
    assert _per(searched.images).tolist() == pytest.approx(best, abs=1e-4)
    assert (_per(searched.images) <= _per(one.images) + 1e-6).all()
    assert not torch.equal(gen.latent, seeded.latent) and torch.equal(gen.latent, gen.start)   # the start moved
    again = build().run(loss, guidance_scale=0.0, seed=3, progress=False, search=8)
    assert torch.equal(again.images, searched.images)
    edit = DiffusionLatent(pixel_model, size=16, init=torch.rand(1, 3, 16, 16), sample_steps=4)
    with pytest.raises(InputError, match="starts from an image"):
        edit.run(loss, strength=0.5, progress=False, search=2)
    with pytest.raises(InputError, match="search_view"):
        build().run(loss, progress=False, search=2, search_view="cutouts")
    fresh = build()
    with pytest.raises(InputError, match="particles"):                  # refused before the search moves the start
        fresh.run(loss, progress=False, search=4, particles=0)
    assert torch.equal(fresh.latent, seeded.latent)


class _WholeAndViews(_PerPicture):
    """A loss with whole-picture losses (redness) and augmented ones (blueness), as CLIPLoss has both."""

    def __call__(self, images, generator=None):
        blue = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
        per = (images - blue).pow(2).flatten(1).mean(1)
        self.last = {"per_image": per.detach()}
        return per.mean()

    def whole_picture_losses(self, images):
        return _per(images)


def test_a_search_sees_whole_pictures_or_the_loss_views(pixel_model):
    """search_view="whole" ranks the drafts by the loss's whole-picture losses, "augmented" by the
    loss itself: with losses that disagree, the two views choose the reddest and the bluest draft."""
    build = lambda: DiffusionLatent(pixel_model, size=16, sample_steps=5,  # noqa: E731
                                    generator=torch.Generator().manual_seed(1))
    gen = build()
    rng = torch.Generator().manual_seed(3 + SEARCH_SEED_OFFSET)
    with torch.no_grad():
        drafts = gen.decode(torch.cat([gen.latent.detach(), gen.propose(7, rng)]))
    red, blue = _per(drafts), _WholeAndViews()
    blue(drafts)
    blue = blue.last["per_image"]
    assert red.argmin() != blue.argmin()                  # the two views must disagree for the test to tell them apart
    run = lambda view: build().run(_WholeAndViews(), guidance_scale=0.0, seed=3, progress=False,  # noqa: E731
                                   search=8, search_view=view)
    assert torch.allclose(run("whole").images, drafts[red.argmin()][None], atol=1e-5)
    assert torch.allclose(run("augmented").images, drafts[blue.argmin()][None], atol=1e-5)


def test_command_line_search_and_particles(text_dir, tmp_path, capsys):
    """`generate --search N` chooses the start noise (how: --search-view), `--particles K` resamples
    side by side; both are in the PNG's provenance, and the flags are refused where they mean nothing."""
    from PIL import Image

    from clipguide.cli import main

    out = tmp_path / "s.png"
    common = ["generate", "a red star", "--generator", "diffusion", "--generator-model", str(text_dir), "--steps", "2",
              "--cutouts", "2", "--out", str(out)]
    assert main(common + ["--search", "3", "--particles", "2", "--search-view", "augmented"]) == 0
    shown = json.loads(Image.open(out).text["clipguide"])
    assert (shown["search"], shown["search_view"], shown["particles"]) == (3, "augmented", 2)
    assert main(common + ["--search-view", "whole"]) == 2
    assert "give --search N" in capsys.readouterr().err
    assert main(common[:3] + ["fourier"] + common[6:] + ["--particles", "2"]) == 2
    assert "--particles only applies to --generator diffusion" in capsys.readouterr().err
    assert main(common + ["--particles", "0"]) == 2
    assert "integer >= 1" in capsys.readouterr().err
