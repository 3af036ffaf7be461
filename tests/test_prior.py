"""Text priors (clipguide.generators.prior): where a generator's latent starts for a prompt."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import clipguide
from clipguide.cli import main
from clipguide.errors import CheckpointError, ConfigError, InputError, WeightsNotFoundError
from clipguide.generators import build_generator
from clipguide.generators.prior import (LatentPrior, PriorConfig, PriorTrainConfig, check_prior_for, load_prior,
                                        prior_latent, prompt_embedding, save_prior, train_prior)
from clipguide.generators.vqgan import save_vqgan
from clipguide.guide.steer import model_hash
from clipguide.guide.suite import guided_eval, guided_image
from clipguide.tokenizer import Tokenizer
from clipguide.world import World

from test_vqgan import tiny_net


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    tok = Tokenizer.train(World(seed=0).captions(range(300)), vocab_size=600, context_length=32)
    return clipguide.create_model("ViT-nano", tokenizer=tok).eval()


def test_prior_maps_embeddings_to_latents_in_generator_units():
    prior = LatentPrior(PriorConfig(embed_dim=12, channels=4, grid=16, width=16))
    prior.mean.fill_(3.0)
    prior.std.fill_(0.001)
    z = prior(torch.randn(5, 12))
    assert z.shape == (5, 4, 16, 16)
    assert (z - 3.0).abs().max() < 0.1                          # the buffers scale the output
    with pytest.raises(InputError, match=r"reads \(12,\) embeddings"):
        prior(torch.randn(5, 10))


@pytest.mark.parametrize("fields, match", [({"grid": 12}, "power of two"), ({"width": 20}, "multiple of 8"),
                                           ({"channels": 0}, "positive integer")])
def test_prior_config_refuses_bad_shapes(fields, match):
    with pytest.raises(ConfigError, match=match):
        PriorConfig(**{"embed_dim": 8, "channels": 4, "grid": 8, "width": 16, **fields}).validate()


def test_save_load_round_trip_and_bad_files(tmp_path):
    prior = LatentPrior(PriorConfig(embed_dim=8, channels=4, grid=8, width=16, guide="nano"))
    with torch.no_grad():
        prior.std.fill_(2.0)
    path = save_prior(prior, tmp_path / "p.safetensors")
    back = load_prior(path)
    assert back.config == prior.config
    e = torch.randn(3, 8)
    assert torch.allclose(back(e), prior(e), atol=0.05)        # fp16 on disk
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_prior(tmp_path / "missing.safetensors")
    other = tmp_path / "vqgan.safetensors"
    save_vqgan(tiny_net(), other)
    with pytest.raises(CheckpointError, match="is not a prior"):
        load_prior(other)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_prior(tmp_path / "junk.safetensors")


def test_prompt_embedding_weighs_positive_parts(nano):
    a, b = prompt_embedding(nano, ["a red star", "a blue circle"])
    mixed = prompt_embedding(nano, ["a red star | a blue circle:3 | blurry:-1"])[0]
    want = torch.nn.functional.normalize(a + 3 * b, dim=-1)
    assert torch.allclose(mixed, want, atol=1e-5)
    with pytest.raises(InputError, match="no positive text part"):
        prompt_embedding(nano, ["blurry:-1"])


def test_prior_start_is_what_the_generator_starts_from(nano, tmp_path):
    net = tiny_net()
    prior = LatentPrior(PriorConfig(embed_dim=nano.config.embed_dim, channels=4, grid=16, width=16))
    gen = build_generator("vqgan", network=net, size=32, seed=0)
    z = prior_latent(prior, nano, ["a red star"])
    check_prior_for(prior, "vqgan", gen.latent)
    gen.set_start(z)
    assert torch.equal(gen.latent.detach(), z) and torch.equal(gen.start, z)
    assert gen.latent_l2().item() == 0
    with pytest.raises(InputError, match="predicts vqgan latents; the generator is stylegan"):
        check_prior_for(prior, "stylegan", gen.latent)
    with pytest.raises(InputError, match="another network or picture size"):
        check_prior_for(prior, "vqgan", torch.zeros(1, 4, 8, 8))
    with pytest.raises(InputError, match="does not fit"):
        gen.set_start(torch.zeros(1, 4, 8, 8))
    wide = LatentPrior(PriorConfig(embed_dim=nano.config.embed_dim + 1, channels=4, grid=16, width=16))
    with pytest.raises(InputError, match="train a prior for this one"):
        prior_latent(wide, nano, ["a red star"])
    # a guide of the same width but other weights is refused when the prior knows its guide
    other = clipguide.create_model("ViT-nano", tokenizer=nano.tokenizer).eval()
    known = LatentPrior(dataclasses.replace(prior.config, guide="nano", guide_hash=model_hash(nano)))
    assert prior_latent(known, nano, ["a red star"]).shape == (1, 4, 16, 16)
    with pytest.raises(InputError, match="the guide given is another model"):
        prior_latent(known, other, ["a red star"])
    # guided generation and the guided evaluation start where the prior says
    result = guided_image(nano, "a red star", generator="vqgan", network=net, size=32, steps=1, lr=1e-9, cutouts=2,
                          progress=False, prior=prior)
    want = gen().detach()
    assert torch.allclose(result.images, want, atol=1e-5)
    assert result.provenance["prior"] == "in memory"
    with pytest.raises(InputError, match="either an init image or a text prior"):
        guided_image(nano, "a red star", generator="vqgan", network=net, size=32, steps=1, prior=prior,
                     init=torch.rand(1, 3, 32, 32), progress=False)
    save_vqgan(net, tmp_path / "vq.safetensors")
    prompts = ["a red star", "two blue circles"]
    _, pictures = guided_eval(nano, nano, prompts, generator="vqgan", steps=1, lr=1e-9, cutouts=2, size=32, progress=False,
                              prior=prior, generator_model=tmp_path / "vq.safetensors")
    with torch.no_grad():
        want = gen.decode(prior_latent(prior, nano, prompts))
    assert torch.allclose(pictures, want, atol=1e-4)


def _tiny_run(tmp_path, nano, **overrides) -> PriorTrainConfig:
    guide = tmp_path / "nano.safetensors"
    if not guide.exists():
        clipguide.save(nano, guide)
        save_vqgan(tiny_net(), tmp_path / "vq.safetensors")
    fields = {"guide": str(guide), "generator_model": str(tmp_path / "vq.safetensors"), "data": "world:seed=3",
              "pairs": 120, "size": 32, "width": 16, "steps": 60, "batch_size": 16, "lr": 3e-3, "warmup": 5,
              "save_every": 20, "log_every": 20, "out_dir": str(tmp_path / "run"), **overrides}
    return PriorTrainConfig(**fields)


def test_train_prior_learns_resumes_and_exports(tmp_path, nano):
    cfg = _tiny_run(tmp_path, nano, steps=40)
    path = train_prior(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40]
    with pytest.raises(ConfigError, match="pass --resume"):
        train_prior(cfg, progress=False)
    (tmp_path / "run" / "checkpoint.pt").rename(tmp_path / "kept.pt")      # as if killed before a checkpoint
    with pytest.raises(ConfigError, match="encoded with other settings"):
        train_prior(_tiny_run(tmp_path, nano, pairs=60), progress=False)
    (tmp_path / "kept.pt").rename(tmp_path / "run" / "checkpoint.pt")
    path = train_prior(_tiny_run(tmp_path, nano, steps=120), resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60, 80, 100, 120]        # continued, not restarted
    prior = load_prior(path)
    assert prior.config.family == "vqgan" and prior.config.grid == 16 and prior.config.channels == 4
    assert prior.config.guide_hash == model_hash(nano)
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "text prior" in card and f"--out {tmp_path / 'run'}" in card and "--set steps=120" in card
    # the exported prior predicts latents on the scale of the generator's own
    pairs = torch.load(tmp_path / "run" / "pairs.pt")
    assert pairs["latents"].shape == (120, 4, 16, 16) and pairs["embeddings"].shape == (120, nano.config.embed_dim)
    z, want = prior(pairs["embeddings"].float()), pairs["latents"].float()
    assert 0.3 < z.std() / want.std() < 1.5
    # it fits its training pairs better than their per-channel mean does (standardised MSE 1)
    std = want[:108].std(dim=(0, 2, 3), keepdim=True)
    fit = (((z - want) / std)[:108] ** 2).mean().item()
    assert fit < 0.93, fit


def test_train_prior_settings_are_checked():
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        PriorTrainConfig.from_args(["steps=0"])
    with pytest.raises(ConfigError, match="not one of"):
        PriorTrainConfig.from_args([], family="gan")
    with pytest.raises(ConfigError):
        PriorTrainConfig.from_args(["colour=red"])
    with pytest.raises(ConfigError, match="key=value"):
        PriorTrainConfig.from_args(["steps"])


def test_cli_prior_errors_are_clear(tmp_path, capsys):
    assert main(["generate", "a red star", "--out", str(tmp_path / "x.png"), "--generator", "vqgan",
                 "--prior", str(tmp_path / "none.safetensors"), "--steps", "1"]) == 2
    assert "prior" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
