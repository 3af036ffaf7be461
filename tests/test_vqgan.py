"""VQGAN: taming-transformers checkpoints and YAML, parity with diffusers' VQModel, the generator
adapter, straight-through quantization, and clear failures on files of other families."""
from __future__ import annotations

import re
import sys
import types

import pytest
import torch

from batteries import GeneratorBattery
from clipguide.errors import CheckpointError, ConfigError, InputError
from clipguide.generators.base import from_unit
from clipguide.generators.vqgan import (
    DDConfig,
    VQGAN,
    VQGANConfig,
    VQGANLatent,
    infer_config,
    load_vqgan,
    save_vqgan,
)

# A tiny VQGAN in taming's YAML: two levels (32 and 64 channels, f = 2), attention at side 16 (the
# second encoder level and the first decoder level run there), 8 latent channels, a 4-dim codebook of 16.
TINY_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 4
    n_embed: 16
    ddconfig:
      double_z: false
      z_channels: 8
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: [16]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 250001
        disc_weight: 0.8
        codebook_weight: 1.0
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 3
"""


def tiny_config(quantizer: str = "vq") -> VQGANConfig:
    embed_dim = 8 if quantizer == "gumbel" else 4          # a GumbelVQ scores codes on z_channels features
    return VQGANConfig(embed_dim=embed_dim, n_embed=16, quantizer=quantizer,
                       ddconfig=DDConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                                         resolution=32, z_channels=8))


def tiny_net(seed: int = 0, quantizer: str = "vq") -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(tiny_config(quantizer)).eval()


@pytest.fixture(scope="module")
def net() -> VQGAN:
    return tiny_net()


def images(batch: int = 1, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def with_training_keys(sd: dict) -> dict:
    """A state dict as taming's trainer saves it: discriminator and LPIPS weights beside the model."""
    out = dict(sd)
    out["loss.logvar"] = torch.zeros(())
    out["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    out["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(8, 3, 3, 3)
    return out


# --- taming checkpoints and YAML ------------------------------------------------------------------
def test_lightning_checkpoint_with_yaml_loads_and_reconstructs(tmp_path, net):
    ckpt, yaml_path = tmp_path / "last.ckpt", tmp_path / "model.yaml"
    torch.save({"state_dict": with_training_keys(net.state_dict()), "global_step": 5, "epoch": 1,
                "pytorch-lightning_version": "1.0.8"}, ckpt)
    yaml_path.write_text(TINY_YAML)
    loaded = load_vqgan(ckpt, yaml_path)
    assert loaded.config == tiny_config() and not loaded.training
    assert loaded.state_dict().keys() == net.state_dict().keys()         # loss.* dropped, nothing else
    x = from_unit(images(2))
    with torch.no_grad():
        rec = loaded(x)
        assert rec.shape == (2, 3, 32, 32)
        torch.testing.assert_close(rec, net(x))
    # without the YAML the architecture comes from the tensor shapes (resolution is nominal)
    inferred = load_vqgan(ckpt)
    assert inferred.config.ddconfig.ch_mult == (1, 2) and inferred.config.n_embed == 16
    with torch.no_grad():
        torch.testing.assert_close(inferred(x), rec)


def test_config_reads_taming_yaml_from_text_path_or_mapping(tmp_path):
    assert VQGANConfig.from_yaml(TINY_YAML) == tiny_config()
    (tmp_path / "m.yaml").write_text(TINY_YAML)
    assert VQGANConfig.from_yaml(tmp_path / "m.yaml") == tiny_config()
    assert VQGANConfig.from_yaml(str(tmp_path / "m.yaml")) == tiny_config()
    assert VQGANConfig.from_json(tiny_config().to_json()) == tiny_config()
    with pytest.raises(ConfigError, match="no config file"):
        VQGANConfig.from_yaml(str(tmp_path / "missing.yaml"))


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match=r"unknown key.*'chanels'"):
        VQGANConfig.from_yaml(TINY_YAML.replace("ch: 32", "ch: 32\n      chanels: 3"))
    with pytest.raises(ConfigError, match="Net2NetTransformer.*not supported"):
        VQGANConfig.from_yaml(TINY_YAML.replace("taming.models.vqgan.VQModel",
                                                "taming.models.cond_transformer.Net2NetTransformer"))
    with pytest.raises(ConfigError, match="double_z"):
        VQGANConfig.from_yaml(TINY_YAML.replace("double_z: false", "double_z: true"))
    with pytest.raises(ConfigError, match="multiple of 32"):
        VQGANConfig.from_yaml(TINY_YAML.replace("ch: 32", "ch: 24"))
    with pytest.raises(ConfigError, match="lacks.*n_embed"):
        VQGANConfig.from_yaml(TINY_YAML.replace("    n_embed: 16\n", ""))
    with pytest.raises(ConfigError, match="taming-transformers config"):
        VQGANConfig.from_yaml("just: text")
    with pytest.raises(ConfigError, match="unknown key"):
        VQGANConfig.from_dict({**tiny_config().to_dict(), "heads": 2})


def test_gumbel_vq_loads_and_its_latent_is_made_of_code_vectors(tmp_path):
    gumbel = tiny_net(quantizer="gumbel")
    assert {"quantize.proj.weight", "quantize.embed.weight"} <= gumbel.state_dict().keys()
    path = tmp_path / "gumbel.pt"
    torch.save(gumbel.state_dict(), path)
    text = TINY_YAML.replace("VQModel", "GumbelVQ").replace("embed_dim: 4", "embed_dim: 8")
    training_only = "    kl_weight: 1.0e-08\n    temperature_scheduler_config: {}\n"
    text = text.replace("    lossconfig:", training_only + "    lossconfig:")
    assert load_vqgan(path, text).config.quantizer == "gumbel"
    loaded = load_vqgan(path)                                            # inferred from proj / embed
    assert loaded.config.quantizer == "gumbel"
    with torch.no_grad():
        z = loaded.encode(from_unit(images()))
        torch.testing.assert_close(loaded.quantize_st(z), z)            # already on the codebook
    with pytest.raises(CheckpointError, match="GumbelVQ"):
        load_vqgan(path, TINY_YAML)


# --- parity with diffusers' VQModel ---------------------------------------------------------------
def taming_to_diffusers(sd: dict, levels: int) -> dict:
    """Our (taming-layout) keys -> diffusers VQModel keys; attention 1x1 convs become linear layers."""
    rules = [
        (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets."),
        (r"^decoder\.up\.(\d+)\.attn\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.attentions."),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0."),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    ]
    attn_names = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        m = re.match(r"(.*\.attentions\.\d+\.)(norm|q|k|v|proj_out)\.(weight|bias)$", key)
        if m:
            key = f"{m[1]}{attn_names[m[2]]}.{m[3]}"
            if value.dim() == 4:
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def test_parity_with_diffusers_vqmodel(net):
    diffusers = pytest.importorskip("diffusers")
    dd = net.config.ddconfig
    theirs = diffusers.VQModel(
        in_channels=3, out_channels=3, latent_channels=dd.z_channels, vq_embed_dim=net.config.embed_dim,
        num_vq_embeddings=net.config.n_embed, block_out_channels=tuple(dd.widths),
        layers_per_block=dd.num_res_blocks, norm_num_groups=32, act_fn="silu", sample_size=dd.resolution,
        # attention follows the blocks of the side-16 level: encoder level 1, decoder level 1 (their first)
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    ).eval()
    theirs.load_state_dict(taming_to_diffusers(net.state_dict(), len(dd.ch_mult)), strict=True)
    x = from_unit(images(2))
    with torch.no_grad():
        z = net.encode(x)
        torch.testing.assert_close(z, theirs.encode(x).latents, atol=1e-5, rtol=1e-5)
        _, _, (_, _, their_codes) = theirs.quantize(z)
        assert torch.equal(net.codes(z).flatten(), their_codes.flatten())
        z_q = net.quantize_st(z)
        torch.testing.assert_close(net.decode(z_q), theirs.decode(z_q, force_not_quantize=True).sample,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(net(x), theirs(x).sample, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dd", [
    DDConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32, z_channels=8),
    DDConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, attn_resolutions=(32, 8), resolution=32, z_channels=4)])
def test_to_diffusers_builds_the_equal_vqmodel(dd):
    """to_diffusers() is the VQModel a latent pipeline carries: the same weights as the independent
    key mapping above, the same encodings, codes and decodings, and the scaling factor recorded."""
    pytest.importorskip("diffusers")
    from clipguide.generators.vqgan import to_diffusers

    torch.manual_seed(3)
    mine = VQGAN(VQGANConfig(embed_dim=4, n_embed=16, ddconfig=dd)).eval()
    theirs = to_diffusers(mine, scaling_factor=1.5)
    assert theirs.config.scaling_factor == 1.5
    expected = taming_to_diffusers(mine.state_dict(), len(dd.ch_mult))
    got = theirs.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    x = from_unit(images(2))
    with torch.no_grad():
        z = mine.encode(x)
        torch.testing.assert_close(theirs.encode(x).latents, z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(z).sample, mine.decode(mine.quantize_st(z)), atol=1e-5, rtol=1e-5)


def test_to_diffusers_refuses_what_a_vqmodel_cannot_express():
    from clipguide.generators.vqgan import to_diffusers

    with pytest.raises(InputError, match="gumbel VQGAN has no diffusers VQModel"):
        to_diffusers(tiny_net(quantizer="gumbel"))
    wide = VQGAN(VQGANConfig(embed_dim=4, n_embed=16, ddconfig=DDConfig(
        ch=32, ch_mult=(2, 2), num_res_blocks=1, attn_resolutions=(), resolution=32, z_channels=4)))
    with pytest.raises(InputError, match=r"ch_mult \[2, 2\] starts above 1"):
        to_diffusers(wide)


# --- the generator adapter ------------------------------------------------------------------------
class TestVQGANLatent(GeneratorBattery):
    net = tiny_net(seed=2)

    def build(self, batch: int = 1, seed: int = 0, init=None):
        return VQGANLatent(self.net, size=32, batch=batch, init=init, generator=torch.Generator().manual_seed(seed))

    def test_init_from_an_image(self):
        # an untrained autoencoder does not reproduce images; check the start is the image's encoding
        init = self.init_image()
        gen = self.build(init=init)
        with torch.no_grad():
            z = self.net.encode(from_unit(init))
            torch.testing.assert_close(gen.latent, z)
            torch.testing.assert_close(gen.start, z)
            torch.testing.assert_close(gen(), ((self.net(from_unit(init)) + 1) / 2).clamp(0, 1))
        assert gen.latent_l2().shape == (1,) and gen.latent_l2().item() == 0

    def test_random_start_is_made_of_code_vectors(self):
        gen = self.build(batch=2, seed=4)
        assert gen.latent.shape == (2, 4, 16, 16) and "start" not in gen.state_dict()
        torch.testing.assert_close(self.net.quantize.lookup(gen.codes()), gen.latent.detach())
        assert gen.family == "vqgan" and gen.latent_parameters() == [gen.latent]
        assert not any(p.requires_grad for p in self.net.parameters())

    def test_size_must_fit_the_factor(self):
        with pytest.raises(InputError, match="multiple"):
            VQGANLatent(self.net, size=(32, 31))


# --- straight-through quantization ----------------------------------------------------------------
def test_straight_through_quantization(net):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    codes = net.codes(z)
    nearest = net.quantize.lookup(codes)
    brute = ((z.detach()[:, None] - net.codebook[None, :, :, None, None]) ** 2).sum(2).argmin(1)
    assert torch.equal(codes, brute)
    z_q = net.quantize_st(z)
    torch.testing.assert_close(z_q, nearest)
    out = net.decode(z_q)
    torch.testing.assert_close(out, net.decode(nearest))
    out.square().mean().backward()
    # the gradient reaches z as if quantization were the identity: that of the output w.r.t. z_q
    at_codes = nearest.detach().requires_grad_(True)
    net.decode(at_codes).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, at_codes.grad)
    net.zero_grad(set_to_none=True)


# --- the project's own format ---------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, net):
    path = save_vqgan(net, tmp_path / "tiny.safetensors")
    loaded = load_vqgan(path)                                            # config from the metadata
    assert loaded.config == net.config
    x = from_unit(images())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    half = load_vqgan(save_vqgan(net, tmp_path / "half.safetensors", dtype=torch.float16))
    assert half.codebook.dtype == torch.float32
    torch.testing.assert_close(half.codebook, net.codebook, atol=2e-3, rtol=2e-3)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "clipguide.vqgan" and VQGANConfig.from_json(meta["config"]) == net.config
    assert "clipguide_version" in meta


# --- files of other families fail clearly ---------------------------------------------------------
def test_stylegan_checkpoints_are_named(tmp_path):
    sd = {"style.1.weight": torch.randn(8, 8), "conv1.conv.weight": torch.randn(1, 8, 8, 3, 3),
          "to_rgb1.conv.weight": torch.randn(1, 3, 8, 1, 1)}
    torch.save(sd, tmp_path / "sg.pt")
    with pytest.raises(CheckpointError, match="StyleGAN2.*load_stylegan"):
        load_vqgan(tmp_path / "sg.pt")
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(8)}, tmp_path / "rosinality.pt")
    with pytest.raises(CheckpointError, match="StyleGAN2"):
        load_vqgan(tmp_path / "rosinality.pt", TINY_YAML)


def test_clip_and_diffusers_state_dicts_are_named(tmp_path, net):
    clip = {"visual.conv1.weight": torch.randn(8, 3, 4, 4), "token_embedding.weight": torch.randn(10, 8),
            "logit_scale": torch.tensor(4.6)}
    torch.save(clip, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="CLIP checkpoint"):
        load_vqgan(tmp_path / "clip.pt")
    diffusers_sd = taming_to_diffusers(net.state_dict(), 2)
    torch.save(diffusers_sd, tmp_path / "vq_diffusers.pt")
    with pytest.raises(CheckpointError, match="diffusers"):
        load_vqgan(tmp_path / "vq_diffusers.pt", TINY_YAML)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="diffusers model directory"):
        load_vqgan(tmp_path / "dir")


def test_damaged_and_mismatched_files_fail_clearly(tmp_path, net):
    (tmp_path / "garbage.ckpt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_vqgan(tmp_path / "garbage.ckpt")
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": net.state_dict(), "epoch": 1}, good)
    data = good.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_vqgan(tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=r"other shapes.*quantize\.embedding\.weight"):
        load_vqgan(good, TINY_YAML.replace("n_embed: 16", "n_embed: 32"))
    with pytest.raises(CheckpointError, match=r"30 missing \(e\.g\. decoder\.up\.0\.attn\.0\."):
        load_vqgan(good, TINY_YAML.replace("attn_resolutions: [16]", "attn_resolutions: [32, 16]"))
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("decoder.up.1.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing.*decoder.up.1"):
        load_vqgan(tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match="not supported"):
        load_vqgan(good, TINY_YAML.replace("taming.models.vqgan.VQModel", "ldm.models.autoencoder.AutoencoderKL"))


def test_lightning_trainer_objects_are_read_inertly(tmp_path, monkeypatch, net):
    """Lightning checkpoints key their callback states by class; such names (and only trainer
    frameworks' names) resolve to inert stand-ins instead of refusing the file."""
    def fake_module(mp, name: str, cls_name: str) -> type:
        for prefix in [name.rsplit(".", i)[0] for i in range(name.count("."), -1, -1)]:
            mp.setitem(sys.modules, prefix, sys.modules.get(prefix) or types.ModuleType(prefix))
        cls = type(cls_name, (), {"__module__": name, "__qualname__": cls_name})
        setattr(sys.modules[name], cls_name, cls)
        return cls

    with monkeypatch.context() as mp:                  # the classes exist while saving, not while reading
        callback = fake_module(mp, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        hparams = fake_module(mp, "pytorch_lightning.utilities.parsing", "AttributeDict")()
        hparams.lr = 4.5e-6
        torch.save({"state_dict": net.state_dict(), "hyper_parameters": hparams, "epoch": 3,
                    "callbacks": {callback: {"best_model_score": torch.tensor(0.1)}}}, tmp_path / "lightning.ckpt")
        payload = fake_module(mp, "payloads.evil", "Payload")
        torch.save({"state_dict": net.state_dict(), "callbacks": {payload: {}}}, tmp_path / "other.ckpt")
    assert "pytorch_lightning" not in sys.modules
    loaded = load_vqgan(tmp_path / "lightning.ckpt", TINY_YAML)
    torch.testing.assert_close(loaded.codebook, net.codebook)
    with pytest.raises(CheckpointError, match="payloads.evil.Payload"):
        load_vqgan(tmp_path / "other.ckpt", TINY_YAML)


def test_inferred_config_matches_the_yaml_architecture(net):
    inferred = infer_config(net.state_dict())
    assert VQGAN(inferred).state_dict().keys() == net.state_dict().keys()
    assert inferred.ddconfig.attn_resolutions == (128,) and inferred.ddconfig.resolution == 256
