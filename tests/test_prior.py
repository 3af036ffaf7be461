"""Text priors (clipguide.generators.prior): where a generator's latent starts for a prompt."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import clipguide
from clipguide.cli import main
from clipguide.errors import CheckpointError, ConfigError, InputError, WeightsNotFoundError
from clipguide.generators import build_generator
from clipguide.generators.prior import (LatentPrior, PriorConfig, PriorTrainConfig, TokenPrior, check_prior_for,
                                        load_prior, prior_latent, prompt_embedding, save_prior, train_prior)
from clipguide.generators.vqgan import save_vqgan
from clipguide.guide.steer import model_hash
from clipguide.guide.suite import PRIOR_SEED_OFFSET, guided_eval, guided_image, start_from_prior
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


# --- the token prior: samples a VQGAN's code grid ----------------------------------------------------
def _token_prior(nano, net, **fields) -> TokenPrior:
    config = PriorConfig(**{"embed_dim": nano.config.embed_dim, "channels": 4, "grid": 16, "width": 16,
                            "kind": "tokens", "codes": 16, "depth": 1, "heads": 2, "sample_steps": 4, **fields})
    torch.manual_seed(0)
    prior = TokenPrior(config).eval()
    with torch.no_grad():
        prior.codebook.copy_(net.codebook)
    return prior


def _draw(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_token_prior_samples_code_vectors_from_its_seed(nano):
    net = tiny_net()
    prior = _token_prior(nano, net)
    logits = prior(torch.full((3, 256), prior.mask_id), torch.randn(3, nano.config.embed_dim))
    assert logits.shape == (3, 256, 16)
    a, b, c = (prior_latent(prior, nano, ["a red star"] * 2, _draw(s)) for s in (0, 0, 1))
    assert a.shape == (2, 4, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)         # seeded draws
    assert not torch.equal(a[0], a[1])                          # two draws of one prompt differ
    assert torch.equal(net.quantize.lookup(net.quantize.nearest(a)), a)    # every place holds a code vector
    # the draws follow the network's logits: a head that favours code 5 fills the grid with it
    with torch.no_grad():
        prior.head.weight.zero_()
        prior.head.bias.fill_(-20).index_fill_(0, torch.tensor([5]), 20.0)
    codes = prior.sample_codes(prompt_embedding(nano, ["a red star"]), _draw(0))
    assert codes.shape == (1, 16, 16) and (codes == 5).all()


@pytest.mark.parametrize("fields, match", [({"codes": 0}, "codebook size"), ({"heads": 3}, "multiple of heads"),
                                           ({"family": "stylegan"}, "has none"), ({"kind": "gan"}, "kind must be"),
                                           ({"cfg_scale": -1.0}, "cfg_scale")])
def test_token_prior_config_is_checked(fields, match):
    with pytest.raises(ConfigError, match=match):
        PriorConfig(**{"embed_dim": 8, "channels": 4, "grid": 16, "width": 16, "kind": "tokens", "codes": 16,
                       "heads": 2, **fields}).validate()


def test_token_prior_round_trip_and_start(nano, tmp_path):
    net = tiny_net()
    prior = _token_prior(nano, net)
    back = load_prior(save_prior(prior, tmp_path / "t.safetensors"))
    assert isinstance(back, TokenPrior) and back.config == prior.config
    assert torch.allclose(back.codebook, prior.codebook, atol=1e-2)
    e, codes = prompt_embedding(nano, ["two blue circles"]), torch.randint(0, 17, (1, 256))
    assert torch.allclose(back(codes, e), prior(codes, e), atol=0.05)
    # a picture starts from the prior's draw for its seed, and a search chooses among more draws
    gen = build_generator("vqgan", network=net, size=32, seed=0)
    start_from_prior(gen, prior, nano, "a red star", seed=3)
    want = prior_latent(prior, nano, ["a red star"], _draw(3 + PRIOR_SEED_OFFSET))
    assert torch.equal(gen.start, want) and torch.equal(gen.latent.detach(), want)
    drafts = []
    propose = gen.proposer
    gen.set_proposer(lambda n, g: drafts.append(propose(n, g)) or drafts[-1])
    gen.choose_start(lambda images, generator=None: images.mean(), 4, seed=0)
    (drawn,) = drafts
    candidates = torch.cat([want, drawn])
    brightness = torch.stack([gen.decode(z[None]).mean() for z in candidates])
    assert drawn.shape == (3, 4, 16, 16)
    assert torch.equal(gen.start, candidates[int(brightness.argmin())][None])
    # another network's codebook is refused
    other = build_generator("vqgan", network=tiny_net(seed=1), size=32, seed=0)
    with pytest.raises(InputError, match="another VQGAN network"):
        start_from_prior(other, prior, nano, "a red star")


def test_train_token_prior_learns_the_codes(tmp_path, nano):
    cfg = _tiny_run(tmp_path, nano, kind="tokens", depth=1, heads=2, steps=60, lr=3e-3)
    prior = load_prior(train_prior(cfg, progress=False))
    assert isinstance(prior, TokenPrior) and prior.config.codes == 16 and prior.config.guide_hash == model_hash(nano)
    assert torch.allclose(prior.codebook, tiny_net().codebook, atol=1e-2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < math.log(16) - 0.3, rows         # better than a uniform guess of the codes
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "(tokens)" in card and "--set kind=tokens" in card
    with pytest.raises(ConfigError, match="VQGAN's codes"):
        PriorTrainConfig.from_args(["kind=tokens"], family="stylegan")


def _favouring(prior: TokenPrior, code: int) -> TokenPrior:
    """`prior` made to predict `code` everywhere, whatever it reads."""
    with torch.no_grad():
        prior.head.weight.zero_()
        prior.head.bias.fill_(-20).index_fill_(0, torch.tensor([code]), 20.0)
    return prior


def test_token_prior_redraws_only_what_an_edit_changes(nano):
    net = tiny_net()
    prior = _favouring(_token_prior(nano, net), 5)
    e = prompt_embedding(nano, ["a red star"])
    codes = torch.full((1, 16, 16), 3)
    codes[0, :4] = 5
    where = torch.zeros(1, 16, 16, dtype=torch.bool)
    where[0, 8:, 8:] = True
    drawn = prior.sample_codes(e, _draw(0), codes, where)
    assert (drawn[where] == 5).all() and torch.equal(drawn[~where], codes[~where])       # inpainting
    # without a region, the codes unlikely for the target are redrawn: here every 3, none of the 5s
    assert torch.equal(prior.unlikely(codes, e), codes == 3)
    assert not prior.unlikely(codes, e, source=e).any()          # relative to the same text nothing changes
    latent = net.quantize.lookup(codes)
    assert torch.equal(prior.nearest(latent), codes)
    edited = prior.redraw(latent, e, generator=_draw(0))
    assert torch.equal(edited, net.quantize.lookup(torch.full((1, 16, 16), 5)))
    assert torch.equal(prior.redraw(latent, e, region=where, generator=_draw(0)),
                       net.quantize.lookup(codes.masked_fill(where, 5)))
    with pytest.raises(InputError, match="cannot redraw"):
        LatentPrior(PriorConfig(embed_dim=nano.config.embed_dim, channels=4, grid=16, width=16)).redraw(latent, e)


def test_edit_with_a_token_prior_redraws_under_the_mask(nano):
    from clipguide.guide.edit import edit_image

    net = tiny_net()
    prior = _favouring(_token_prior(nano, net), 5)
    image = torch.rand(1, 3, 32, 32, generator=_draw(2))
    mask = torch.zeros(32, 32)
    mask[16:, 16:] = 1                                         # the lower right quarter: cells 8.. of 16
    result = edit_image(nano, image, "a red star", generator="vqgan", network=net, mask=mask, steps=1, lr=1e-9,
                        cutouts=2, progress=False, prior=prior)
    gen = build_generator("vqgan", network=net, size=32, init=image)
    codes = gen.codes()
    codes[:, 8:, 8:] = 5
    with torch.no_grad():
        want = gen.decode(net.quantize.lookup(codes))
    m = mask[None, None]
    assert torch.allclose(result.images, m * want + (1 - m) * image, atol=1e-4)
    assert result.provenance["prior"] == "in memory"
    with pytest.raises(InputError, match="cannot redraw"):
        edit_image(nano, image, "a red star", generator="vqgan", network=net, steps=1, progress=False,
                   prior=LatentPrior(PriorConfig(embed_dim=nano.config.embed_dim, channels=4, grid=16, width=16)))


def test_cli_edit_with_a_prior_that_cannot_redraw_is_refused(tmp_path, capsys):
    from clipguide.preprocess import save_image

    save_image(torch.rand(3, 64, 64, generator=_draw(0)), tmp_path / "in.png")
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--prompt", "a red star", "--generator", "vqgan",
                 "--prior", "bundled", "--steps", "1", "--out", str(tmp_path / "out.png")]) == 2
    assert "cannot redraw" in capsys.readouterr().err and not (tmp_path / "out.png").exists()
