"""Training the world generators: each family trains, exports a network its adapter loads, and a
killed run resumes to exactly the weights of an uninterrupted one."""
from __future__ import annotations

import json
import math

import pytest
import torch

from clipguide.errors import ConfigError
from clipguide.generators import build_generator, load_network
from clipguide.generators import training as T
from clipguide.generators.base import to_unit

TINY = {"vqgan": {"ch": 32, "ch_mult": [1, 1], "embed_dim": 8, "n_embed": 32, "z_channels": 8, "attn_resolutions": []},
        "stylegan": {"style_dim": 32, "n_mlp": 2, "channel_max": 32, "d_channels": 16},
        "diffusion": {"block_out_channels": [16, 32], "norm_num_groups": 8},
        "autoencoder": {"block_out_channels": [8, 16], "norm_num_groups": 8, "latent_channels": 4}}


def _cfg(family, out, **kw):
    args = dict(size=32, steps=6, batch_size=4, save_every=3, warmup=2, out_dir=str(out), arch=TINY[family])
    args.update(kw)
    return T.GeneratorTrainConfig.from_args(family, [], **args)


@pytest.mark.parametrize("family", T.FAMILIES)
def test_each_family_trains_and_its_export_steers(family, tmp_path):
    path = T.train_generator(_cfg(family, tmp_path / family), progress=False)
    net = load_network(family, str(path))
    gen = build_generator(family, network=net, size=32, seed=0)
    img = gen()
    assert img.shape == (1, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    card = (tmp_path / family / "MODEL_CARD.md").read_text()
    assert f"clipguide train-generator {family}" in card and "parameters" in card
    assert (tmp_path / family / "samples.png").stat().st_size > 100
    rows = (tmp_path / family / "metrics.jsonl").read_text().splitlines()
    assert len(rows) >= 2


AVERAGED_BF16 = {"arch": {**TINY["diffusion"], "ema": 0.5}, "precision": "bf16"}


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A tiny exported autoencoder (f = 2, 4 latent channels) for latent diffusion runs."""
    return T.train_generator(_cfg("autoencoder", tmp_path_factory.mktemp("ae") / "run"), progress=False)


def test_an_autoencoder_trains_and_a_diffusion_model_denoises_its_latents(autoencoder, tmp_path):
    """The autoencoder exports a diffusers AutoencoderKL folder with its latents' scaling factor;
    a diffusion run given it (arch.vae) trains a UNet on its latents and exports a latent pipeline
    the diffusion adapter loads and steers at the picture size; a pixel init is refused."""
    from clipguide.generators.diffusion import DiffusionModel

    vae = T.load_autoencoder(autoencoder)
    x = torch.rand(2, 3, 32, 32)
    model = DiffusionModel(unet=None, scheduler=None, vae=vae)
    z = model.encode(x)
    assert z.shape == (2, 4, 16, 16)
    scale = vae.config.scaling_factor
    assert math.isfinite(scale) and scale > 0 and scale != 1.0
    assert (autoencoder.parent / "samples.png").stat().st_size > 100
    assert "clipguide train-generator autoencoder" in (autoencoder.parent / "MODEL_CARD.md").read_text()
    path = T.train_generator(_cfg("diffusion", tmp_path / "ldm", arch={**TINY["diffusion"], "vae": str(autoencoder)}),
                             progress=False)
    net = load_network("diffusion", str(path))
    assert net.latent and net.unet.config.in_channels == 4 and net.unet.config.sample_size == 16
    assert not net.scheduler.config.clip_sample                 # latents are not clipped to [-1, 1]
    img = build_generator("diffusion", network=net, seed=0)()
    assert img.shape == (1, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    pixel = T.train_generator(_cfg("diffusion", tmp_path / "pixel", steps=1), progress=False)
    with pytest.raises(ConfigError, match="pixel UNet"):
        T.train_generator(_cfg("diffusion", tmp_path / "mixed", steps=1, init=str(pixel),
                               arch={**TINY["diffusion"], "vae": str(autoencoder)}), progress=False)
    again = _cfg("autoencoder", tmp_path / "again", steps=1, init=str(autoencoder))
    fam = T._FAMILIES["autoencoder"](again, torch.Generator().manual_seed(5))
    fam.start_from(T._init_network(again))
    exported = {k: v.float() for k, v in vae.state_dict().items()}
    assert all(torch.equal(v, exported[k]) for k, v in fam.vae.state_dict().items())
    with pytest.raises(SystemExit, match="latent diffusion"):         # bundled only inside a pipeline
        _bundle_tool().bundle_generator(autoencoder.parent)
    with pytest.raises(ConfigError, match="no autoencoder at"):
        T.train_generator(_cfg("diffusion", tmp_path / "none", arch={**TINY["diffusion"], "vae": str(tmp_path)}),
                          progress=False)


def test_a_vqgan_is_the_autoencoder_of_a_latent_diffusion_run(tmp_path):
    """arch.vae may name a VQGAN file: the run denoises its latents as the equal diffusers VQModel,
    scaled to unit variance on the run's first batch, and exports a pipeline whose vae decodes as
    the VQGAN does."""
    vq_path = T.train_generator(_cfg("vqgan", tmp_path / "vq", steps=2), progress=False)
    vqgan = load_network("vqgan", str(vq_path)).float()
    cfg = _cfg("diffusion", tmp_path / "ldm", steps=2, arch={**TINY["diffusion"], "vae": str(vq_path)})
    path = T.train_generator(cfg, progress=False)
    net = load_network("diffusion", str(path))
    assert type(net.vae).__name__ == "VQModel" and net.unet.config.in_channels == 8
    from clipguide.train.data import BatchStream, open_source

    first = BatchStream(open_source(cfg.data), cfg.batch_size, cfg.size, cfg.seed).batch(0)[0].float() / 127.5 - 1
    with torch.no_grad():
        std = float(vqgan.encode(first).std())
        assert net.vae.config.scaling_factor == pytest.approx(1 / std, rel=2e-3)
        z = vqgan.quantize.lookup(torch.randint(32, (1, 16, 16), generator=torch.Generator().manual_seed(0)))
        torch.testing.assert_close(net.decode(z * net.vae.config.scaling_factor), to_unit(vqgan.decode(z)),
                                   atol=1e-4, rtol=0)


def test_a_text_conditional_diffusion_run_draws_captions(tmp_path):
    """arch.condition names the CLIP whose caption embeddings (times sqrt(width)) are the UNet's
    class label, a share cond_drop of them zeros; the export names that model, and the adapter
    draws prompts with classifier-free guidance."""
    import clipguide
    from clipguide.guide.steer import model_hash

    cfg = _cfg("diffusion", tmp_path / "text", steps=2, arch={**TINY["diffusion"], "condition": "default",
                                                             "cond_drop": 0.5})
    fam = T._FAMILIES["diffusion"](cfg, torch.Generator().manual_seed(0))
    labels = fam._labels(["a red star"] * 64)
    norms = labels.norm(dim=1)
    dropped = norms == 0
    assert 10 < int(dropped.sum()) < 54                       # about half of 64
    torch.testing.assert_close(norms[~dropped], torch.full_like(norms[~dropped], math.sqrt(192)))
    path = T.train_generator(cfg, progress=False)
    meta = json.loads((path / "clipguide.json").read_text())["text_condition"]
    assert meta == {"model": "default", "model_hash": model_hash(clipguide.load("default")),
                    "scale": math.sqrt(192), "cfg_scale": T._Diffusion.cfg_scale}
    net = load_network("diffusion", str(path))
    assert net.text_conditional and net.unet.config.class_embed_type == "identity"
    gen = build_generator("diffusion", network=net, size=32, seed=0, sample_steps=2)
    with torch.no_grad():
        plain = gen()
        gen.condition("a red star")
        assert not torch.allclose(gen(), plain)
    for bad, match in [({"condition": 3}, "arch.condition"), ({"cond_drop": 1.0}, "cond_drop")]:
        with pytest.raises(ConfigError, match=match):
            _cfg("diffusion", tmp_path / "bad", arch={**TINY["diffusion"], **bad})


@pytest.mark.parametrize("family,extra", [(f, {}) for f in T.TRAINABLE] + [("diffusion", AVERAGED_BF16),
                                                                         ("diffusion", "latent"), ("diffusion", "text")],
                         ids=list(T.TRAINABLE) + ["diffusion-ema-bf16", "diffusion-latent", "diffusion-text"])
def test_a_killed_run_resumes_to_the_same_weights(family, extra, tmp_path, monkeypatch, request):
    if extra == "latent":
        extra = {"arch": {**TINY["diffusion"], "vae": str(request.getfixturevalue("autoencoder"))}}
    if extra == "text":
        extra = {"arch": {**TINY["diffusion"], "condition": "default"}}
    straight = _cfg(family, tmp_path / "straight", **extra)
    T.train_generator(straight, progress=False)
    ref = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["family"]["nets"]

    broken = _cfg(family, tmp_path / "broken", **extra)
    real_step = T._FAMILIES[family].step
    calls = {"n": 0}

    def dying_step(self, x, step, captions):
        calls["n"] += 1
        if calls["n"] == 5:                                  # killed after the checkpoint of step 3
            raise KeyboardInterrupt
        return real_step(self, x, step, captions)

    monkeypatch.setattr(T._FAMILIES[family], "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        T.train_generator(broken, progress=False)
    monkeypatch.setattr(T._FAMILIES[family], "step", real_step)
    with pytest.raises(ConfigError, match="--resume"):
        T.train_generator(broken, progress=False)
    T.train_generator(broken, progress=False, resume=True)
    got = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=False)["family"]["nets"]
    for net in ref:
        for k in ref[net]:
            assert torch.equal(ref[net][k], got[net][k]), (family, net, k)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not one of"):
        T.GeneratorTrainConfig.from_args("gan", [])
    with pytest.raises(ConfigError, match="arch keys"):
        T.GeneratorTrainConfig.from_args("vqgan", ["arch.layers=3"])
    with pytest.raises(ConfigError, match="power of two"):
        T.GeneratorTrainConfig.from_args("stylegan", ["size=48"])
    cfg = T.GeneratorTrainConfig.from_args("diffusion", ["steps=10", "arch.layers_per_block=2"])
    assert cfg.steps == 10 and cfg.architecture["layers_per_block"] == 2 and cfg.batch_size > 0
    assert "--set arch.layers_per_block=2" in T.command_line(cfg)


def test_diffusion_targets_schedules_and_moving_average(tmp_path):
    """v-prediction with a cosine schedule, under bf16 autocast, trains and exports the moving
    average, which the loader reads back with the same prediction type; bad values are refused by
    name."""
    arch = {**TINY["diffusion"], "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2", "ema": 0.5}
    cfg = _cfg("diffusion", tmp_path / "v", arch=arch, steps=4, precision="bf16")
    path = T.train_generator(cfg, progress=False)
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=False)["family"]["nets"]
    unet, ema = state["unet"], state["ema"]
    assert any(not torch.equal(unet[k], ema[k]) for k in unet)        # the average lags the weights
    net = load_network("diffusion", str(path))
    assert net.scheduler.config.prediction_type == "v_prediction"
    assert net.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    exported = net.unet.state_dict()
    k = next(iter(k for k in ema if ema[k].is_floating_point() and ema[k].abs().sum() > 0))
    assert torch.allclose(exported[k].float(), ema[k].half().float())
    img = build_generator("diffusion", network=net, size=32, seed=0)()
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    # the v target the trainer fits is what the loader's split() turns back into noise and picture
    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    sched = net.scheduler
    v, xt = sched.get_velocity(x0, noise, t), sched.add_noise(x0, noise, t)
    for i in range(2):
        eps, clean = net.split(v[i:i + 1], xt[i:i + 1], sched.alphas_cumprod[t[i]].float())
        assert torch.allclose(eps, noise[i:i + 1], atol=1e-4) and torch.allclose(clean, x0[i:i + 1], atol=1e-4)
    for key, bad, message in (("prediction_type", "noise", "prediction_type"),
                              ("beta_schedule", "cubic", "beta_schedule"), ("ema", 1.0, "ema")):
        with pytest.raises(ConfigError, match=message):
            T.GeneratorTrainConfig.from_args("diffusion", [f"arch.{key}={json.dumps(bad)}"])
    with pytest.raises(ConfigError, match="precision"):
        T.GeneratorTrainConfig.from_args("diffusion", ["precision=fp8"])
    with pytest.raises(ConfigError, match="ema"):
        T.GeneratorTrainConfig.from_args("diffusion", ['arch.ema="0.99x"'])


def test_a_checkpoint_from_before_a_new_setting_resumes(tmp_path):
    """Settings added later (precision) take their defaults when an older checkpoint lacks them."""
    cfg = _cfg("diffusion", tmp_path / "old", steps=3)
    T.train_generator(cfg, progress=False)
    ckpt = tmp_path / "old" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["precision"]
    torch.save(state, ckpt)
    T.train_generator(_cfg("diffusion", tmp_path / "old", steps=3), progress=False, resume=True)
    with pytest.raises(ConfigError, match="another configuration"):
        T.train_generator(_cfg("diffusion", tmp_path / "old", steps=3, precision="bf16"), progress=False, resume=True)


def test_a_snapshot_exports_a_run_part_way(tmp_path, monkeypatch):
    """--snapshot exports the last checkpoint with the run's own settings into snapshot-STEP, which
    loads and steers and can be bundled; the run then resumes as if nothing happened."""
    cfg = _cfg("diffusion", tmp_path / "run", steps=6)
    with pytest.raises(ConfigError, match="no checkpoint"):
        T.train_generator(cfg, progress=False, snapshot=True)
    calls = {"n": 0}
    real_step = T._Diffusion.step

    def dying_step(self, x, step, captions):
        calls["n"] += 1
        if calls["n"] == 4:                                  # killed after the checkpoint of step 3
            raise KeyboardInterrupt
        return real_step(self, x, step, captions)

    T._Diffusion.step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            T.train_generator(cfg, progress=False)
    finally:
        T._Diffusion.step = real_step
    other = _cfg("diffusion", tmp_path / "run", steps=99, lr=0.5)   # the run's settings win for a snapshot
    path = T.train_generator(other, progress=False, snapshot=True)
    assert path.parent == tmp_path / "run" / "snapshot-000003"
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert "a snapshot after 3 of them" in card and "6 x batch 4" in card
    img = build_generator("diffusion", network=load_network("diffusion", str(path)), size=32, seed=0)()
    assert img.shape == (1, 3, 32, 32)
    assert not (tmp_path / "run" / "world-diffusion").exists()
    T.train_generator(cfg, progress=False, resume=True)
    assert (tmp_path / "run" / "world-diffusion").exists()
    # tools/bundle.py takes a snapshot folder too (into a scratch assets folder, not the package's)
    import clipguide.generators as generators

    bundle = _bundle_tool()
    monkeypatch.setattr(bundle, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(generators, "ASSETS", tmp_path / "assets")
    bundle.bundle_generator(path.parent)
    assert generators.has_bundled_generator("diffusion")
    assert build_generator("diffusion", size=32, seed=0)().shape == (1, 3, 32, 32)   # the bundled one
    card = (tmp_path / "assets" / "world-diffusion.md").read_text()
    assert "a snapshot after 3 of them" in card and "(world-diffusion-samples.png)" in card


def _bundle_tool():
    """tools/bundle.py as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bundle", Path(__file__).parents[1] / "tools" / "bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", T.FAMILIES)
def test_a_run_starts_from_an_exported_network(family, tmp_path):
    """init=PATH: the exported (fp16) weights start the trained net and its moving average; a
    network of another architecture is refused with the differing tensors named."""
    first = T.train_generator(_cfg(family, tmp_path / "first", steps=2), progress=False)
    exported = {k: v.float() for k, v in load_network(family, str(first)).state_dict().items()} \
        if family != "diffusion" else {k: v.float() for k, v in load_network(family, str(first)).unet.state_dict().items()}
    cfg = _cfg(family, tmp_path / "second", steps=1, init=str(first))
    fam = T._FAMILIES[family](cfg, torch.Generator().manual_seed(5))
    fam.start_from(T._init_network(cfg))
    for name in fam.init_targets:
        if name in fam.nets:
            own = fam.nets[name].state_dict()
            assert all(torch.equal(own[k], exported[k]) for k in own), (family, name)
    T.train_generator(cfg, progress=False)                    # and a run from it trains and exports
    assert f"--set init={first}" in (tmp_path / "second" / "MODEL_CARD.md").read_text()
    wider = {k: (v * 2 if isinstance(v, int) and not isinstance(v, bool) and k in ("ch", "channel_max", "style_dim")
                 else v) for k, v in TINY[family].items()}
    if family == "diffusion":
        wider["block_out_channels"] = [c * 2 for c in TINY[family]["block_out_channels"]]
    with pytest.raises(ConfigError, match="does not match"):
        T.train_generator(_cfg(family, tmp_path / "third", steps=1, init=str(first), arch=wider), progress=False)


def test_a_diffusion_init_must_share_the_noise_schedule(tmp_path):
    first = T.train_generator(_cfg("diffusion", tmp_path / "first", steps=1), progress=False)
    arch = {**TINY["diffusion"], "prediction_type": "v_prediction"}
    with pytest.raises(ConfigError, match="prediction_type"):
        T.train_generator(_cfg("diffusion", tmp_path / "v", steps=1, init=str(first), arch=arch), progress=False)


@pytest.mark.parametrize("arch", ["RN-nano", "ViT-nano"])
def test_a_feature_discriminator_reads_a_frozen_clip(arch, tmp_path):
    """arch.feature_d: heads on a frozen CLIP image tower (either kind) join the discriminator;
    the heads learn and are checkpointed, the tower is neither trained nor saved, the generator's
    gradient passes through the tower, and a killed run still resumes exactly."""
    import clipguide
    from clipguide.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"] * 5, vocab_size=600, context_length=16)
    clip = clipguide.create_model(arch, tokenizer=tok).eval()
    path = clipguide.save(clip, tmp_path / "clip.safetensors")
    tower = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    cfg = _cfg("stylegan", tmp_path / "fd", arch={**TINY["stylegan"], "feature_d": str(path), "feature_d_weight": 0.5})
    fam = T._StyleGAN(cfg, torch.Generator().manual_seed(0))
    assert "fdisc" in fam.nets and fam.nets["fdisc"].heads
    heads = {k: v.clone() for k, v in fam.fdisc.state_dict().items()}
    assert not any(k.startswith("_tower") or "visual" in k for k in heads)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    logits = fam.fdisc(x)
    assert logits.shape[0] == 4 and logits.shape[1] > 1 and torch.isfinite(logits).all()
    for step in range(2):
        metrics = fam.step(x, step)
        assert metrics["f_loss"] > 0 and all(map(math.isfinite, metrics.values()))
    assert any(not torch.equal(heads[k], v) for k, v in fam.fdisc.state_dict().items())      # the heads learn
    tuned = fam.fdisc._tower[0].visual.state_dict()
    assert all(torch.equal(tower[k], tuned[k]) for k in tower)                               # the tower does not
    # the feature heads alone move the generator (the pixel discriminator switched off)
    fam.gen.zero_grad()
    out = fam.fdisc(fam._fake(2))
    out.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fam.gen.parameters())
    # a full run: checkpointed heads, resumable, and refused settings
    T.train_generator(cfg, progress=False)
    saved = torch.load(tmp_path / "fd" / "checkpoint.pt", weights_only=False)["family"]["nets"]
    assert set(saved["fdisc"]) == set(heads)
    T.train_generator(cfg, progress=False, resume=True)
    for bad, message in (("arch.feature_d=3", "feature_d"), ("arch.feature_d_weight=-1", "feature_d_weight")):
        with pytest.raises(ConfigError, match=message):
            T.GeneratorTrainConfig.from_args("stylegan", [bad])
