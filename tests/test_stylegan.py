"""StyleGAN2: the rosinality stylegan2-pytorch key layout, the resampling and modulation numerics
against references written here, loading (and refusing) checkpoints, inversion, and the adapter
through the shared generator battery. Every network is tiny (32 channels, 16-32 px)."""
from __future__ import annotations

import argparse
import functools
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from clipguide.errors import CheckpointError, InputError
from clipguide.generators.base import to_unit
from clipguide.generators.stylegan import (FORMAT_TAG, ModulatedConv, StyleGAN2Config, StyleGAN2Generator,
                                           StyleGANLatent, Upsample, infer_config, invert, load_stylegan,
                                           make_kernel, save_stylegan, upfirdn2d)

from batteries import GeneratorBattery


def tiny_config(size: int = 32) -> StyleGAN2Config:
    return StyleGAN2Config(size=size, style_dim=32, n_mlp=2, channel_max=32)


@functools.lru_cache(maxsize=None)
def tiny_net(size: int = 32, seed: int = 0) -> StyleGAN2Generator:
    """A random tiny generator; noise strengths and biases set non-zero so that noise and biases matter."""
    g = torch.Generator().manual_seed(seed)
    net = StyleGAN2Generator(tiny_config(size), generator=g)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("noise.weight", "activate.bias")) or re.fullmatch(r"to_rgb(1|s\.\d+)\.bias", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval().requires_grad_(False)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# key layout
# ---------------------------------------------------------------------------------------------------
# The rosinality Generator's state dict at 32 px with a 2-layer mapping network, in its order.
EXPECTED_KEYS_32 = """
style.1.weight style.1.bias style.2.weight style.2.bias
input.input
conv1.conv.weight conv1.conv.modulation.weight conv1.conv.modulation.bias conv1.noise.weight conv1.activate.bias
to_rgb1.bias to_rgb1.conv.weight to_rgb1.conv.modulation.weight to_rgb1.conv.modulation.bias
convs.0.conv.weight convs.0.conv.blur.kernel convs.0.conv.modulation.weight convs.0.conv.modulation.bias
convs.0.noise.weight convs.0.activate.bias
convs.1.conv.weight convs.1.conv.modulation.weight convs.1.conv.modulation.bias
convs.1.noise.weight convs.1.activate.bias
convs.2.conv.weight convs.2.conv.blur.kernel convs.2.conv.modulation.weight convs.2.conv.modulation.bias
convs.2.noise.weight convs.2.activate.bias
convs.3.conv.weight convs.3.conv.modulation.weight convs.3.conv.modulation.bias
convs.3.noise.weight convs.3.activate.bias
convs.4.conv.weight convs.4.conv.blur.kernel convs.4.conv.modulation.weight convs.4.conv.modulation.bias
convs.4.noise.weight convs.4.activate.bias
convs.5.conv.weight convs.5.conv.modulation.weight convs.5.conv.modulation.bias
convs.5.noise.weight convs.5.activate.bias
to_rgbs.0.bias to_rgbs.0.upsample.kernel to_rgbs.0.conv.weight to_rgbs.0.conv.modulation.weight
to_rgbs.0.conv.modulation.bias
to_rgbs.1.bias to_rgbs.1.upsample.kernel to_rgbs.1.conv.weight to_rgbs.1.conv.modulation.weight
to_rgbs.1.conv.modulation.bias
to_rgbs.2.bias to_rgbs.2.upsample.kernel to_rgbs.2.conv.weight to_rgbs.2.conv.modulation.weight
to_rgbs.2.conv.modulation.bias
noises.noise_0 noises.noise_1 noises.noise_2 noises.noise_3 noises.noise_4 noises.noise_5 noises.noise_6
""".split()


def test_state_dict_keys_follow_the_rosinality_layout():
    config = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channel_multiplier=2, channel_max=32)
    sd = StyleGAN2Generator(config).state_dict()
    assert list(sd) == EXPECTED_KEYS_32
    shapes = {"style.1.weight": (32, 32), "style.2.bias": (32,), "input.input": (1, 32, 4, 4),
              "conv1.conv.weight": (1, 32, 32, 3, 3), "conv1.conv.modulation.weight": (32, 32),
              "conv1.noise.weight": (1,), "conv1.activate.bias": (32,), "to_rgb1.bias": (1, 3, 1, 1),
              "to_rgb1.conv.weight": (1, 3, 32, 1, 1), "convs.4.conv.blur.kernel": (4, 4),
              "to_rgbs.2.upsample.kernel": (4, 4), "noises.noise_0": (1, 1, 4, 4), "noises.noise_2": (1, 1, 8, 8),
              "noises.noise_6": (1, 1, 32, 32)}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    torch.testing.assert_close(sd["convs.0.conv.blur.kernel"], torch.outer(taps, taps) / 64 * 4)
    torch.testing.assert_close(sd["to_rgbs.0.upsample.kernel"], torch.outer(taps, taps) / 64 * 4)
    assert StyleGAN2Generator(config).n_latent == 8


def test_channel_widths_match_the_published_table():
    for multiplier, table in ((2, {4: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}),
                              (1, {4: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16})):
        config = StyleGAN2Config(channel_multiplier=multiplier)
        assert {res: config.channels(res) for res in table} == table


@pytest.mark.parametrize("size,multiplier", [(256, 1), (1024, 2), (16, 2)])
def test_infer_config_from_shapes(size, multiplier):
    config = StyleGAN2Config(size=size, style_dim=64, n_mlp=3, channel_multiplier=multiplier)
    with torch.device("meta"):                               # shapes only: nothing is allocated
        sd = dict(StyleGAN2Generator(config).state_dict())
    for key in [k for k in sd if k.endswith("blur.kernel")]:
        sd[key] = make_kernel((1, 3, 3, 1)) * 4
    assert infer_config(sd) == config


# ---------------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------------
def upfirdn_by_definition(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad) -> torch.Tensor:
    """One channel (H, W): zero-stuffed upsampling, zero padding (negative: crop), full convolution
    with `kernel` evaluated sum by sum, then every `down`-th sample."""
    x0, x1, y0, y1 = pad
    h, w = x.shape[0] * up, x.shape[1] * up
    kh, kw = kernel.shape

    def padded(r: int, c: int) -> float:                     # the upsampled, padded signal at (r, c)
        r, c = r - y0, c - x0
        if 0 <= r < h and 0 <= c < w and r % up == 0 and c % up == 0:
            return float(x[r // up, c // up])
        return 0.0

    out_h, out_w = (h + y0 + y1 - kh) // down + 1, (w + x0 + x1 - kw) // down + 1
    out = torch.zeros(out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            r, c = i * down + kh - 1, j * down + kw - 1      # the last tap sits at the window's far corner
            out[i, j] = sum(kernel[a, b] * padded(r - a, c - b) for a in range(kh) for b in range(kw))
    return out


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (1, 1, (1, 2, 0, 3)),
                                         (2, 1, (-1, 2, 1, -2))])
def test_upfirdn2d_matches_the_definition(up, down, pad):
    g = seeded(1)
    x = torch.randn(2, 3, 5, 6, generator=g)
    kernel = torch.rand(4, 3, generator=g)                   # asymmetric: a flip mistake shows
    out = upfirdn2d(x, kernel, up=up, down=down, pad=pad)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(out[b, c], upfirdn_by_definition(x[b, c], kernel, up, down, pad),
                                       atol=1e-5, rtol=1e-5)


def test_upsampling_a_delta_gives_the_kernel_footprint():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2, 2] = 1.0
    out = Upsample((1, 3, 3, 1))(x)
    assert out.shape == (1, 1, 16, 16)
    footprint = torch.zeros(16, 16)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    footprint[3:7, 3:7] = torch.outer(taps, taps) / 16       # gain 4 times the normalised kernel
    torch.testing.assert_close(out[0, 0], footprint)
    assert math.isclose(out.sum().item(), 4.0, rel_tol=1e-6)  # zero insertion keeps 1 of 4 samples


def _style_vector(conv: ModulatedConv, style: torch.Tensor) -> torch.Tensor:
    """The modulation's affine map written out (learning-rate multiplier 1)."""
    w = conv.modulation.weight
    return style @ w.t() / math.sqrt(w.shape[1]) + conv.modulation.bias


def test_demodulated_filters_have_unit_norm_and_convolve_per_sample():
    g = seeded(2)
    conv = ModulatedConv(4, 5, 3, style_dim=8, generator=g)
    with torch.no_grad():
        conv.modulation.bias.copy_(torch.rand(4, generator=g) + 0.5)
    x, style = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 8, generator=g)
    norms = conv.modulated_weight(style).square().sum(dim=(2, 3, 4))
    torch.testing.assert_close(norms, torch.ones(2, 5))
    out = conv(x, style)
    s = _style_vector(conv, style)                                           # (2, 4)
    for b in range(2):
        w = conv.weight[0] * s[b][None, :, None, None]
        w = w / w.flatten(1).norm(dim=1)[:, None, None, None]
        torch.testing.assert_close(out[b:b + 1], F.conv2d(x[b:b + 1], w, padding=1), atol=1e-5, rtol=1e-4)


def test_upsampling_conv_is_a_transposed_conv_then_the_blur():
    g = seeded(3)
    conv = ModulatedConv(4, 5, 3, style_dim=8, upsample=True, generator=g)
    x, style = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 8, generator=g)
    out = conv(x, style)
    assert out.shape == (2, 5, 12, 12)
    s = _style_vector(conv, style)
    blur = make_kernel((1, 3, 3, 1)) * 4
    for b in range(2):
        w = conv.weight[0] * s[b][None, :, None, None]
        w = w / w.flatten(1).norm(dim=1)[:, None, None, None]                # (5, 4, 3, 3)
        up = F.conv_transpose2d(x[b:b + 1], w.transpose(0, 1), stride=2)     # (1, 5, 13, 13)
        torch.testing.assert_close(out[b:b + 1], upfirdn2d(up, blur, pad=(1, 1)), atol=1e-5, rtol=1e-4)


def test_w_and_w_plus_agree_and_every_layer_reads_its_own_w():
    net = tiny_net()
    w_mode = StyleGANLatent(net, space="w", generator=seeded(4), progress=False)
    plus = StyleGANLatent(net, space="w+", generator=seeded(4), progress=False)
    torch.testing.assert_close(plus.latent, w_mode.latent[:, None].expand(-1, net.n_latent, -1))
    torch.testing.assert_close(plus(), w_mode())
    z = torch.randn(1, 32, generator=seeded(4))
    torch.testing.assert_close(w_mode(), to_unit(net(z, truncation=0.7)))     # seeded z, truncated
    w_plus = plus.latent.detach().clone().requires_grad_(True)
    net.synthesis(w_plus).square().sum().backward()
    assert (w_plus.grad.abs().sum(dim=2) > 0).all()                          # all n_latent styles are used


def test_truncation_zero_gives_the_mean_latent_image():
    net = tiny_net()
    z = torch.randn(3, 32, generator=seeded(5))
    avg = net.mean_latent(512, generator=seeded(6))
    out = net(z, truncation=0.0, truncation_latent=avg)
    mean_image = net.synthesis(avg[:, None].expand(1, net.n_latent, -1))
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], mean_image)
    assert not torch.allclose(net(z)[0], mean_image[0], atol=1e-3)


def test_noise_is_fixed_unless_asked_for():
    net = tiny_net()
    w = net.mapping(torch.randn(2, 32, generator=seeded(7)))[:, None].expand(-1, net.n_latent, -1)
    assert torch.equal(net.synthesis(w), net.synthesis(w))
    one = net.synthesis(w, noise="random", generator=seeded(1))
    assert not torch.allclose(one, net.synthesis(w), atol=1e-3)
    assert torch.equal(one, net.synthesis(w, noise="random", generator=seeded(1)))
    with pytest.raises(InputError):
        net.synthesis(w, noise="loud")


def test_latent_l2_measures_the_edit():
    gen = StyleGANLatent(tiny_net(), batch=2, generator=seeded(0), progress=False)
    assert torch.equal(gen.latent_l2(), torch.zeros(2))
    with torch.no_grad():
        gen.latent[1] += 0.5
    torch.testing.assert_close(gen.latent_l2(), torch.tensor([0.0, 0.25]))


def test_inversion_fits_each_image_of_a_batch():
    net = tiny_net(16)
    with torch.no_grad():
        targets = StyleGANLatent(net, batch=2, space="w", generator=seeded(8), progress=False)()
    w = invert(net, targets, steps=40, space="w", progress=False)
    assert w.shape == (2, 32)
    fitted = to_unit(net.synthesis(w[:, None].expand(-1, net.n_latent, -1)))
    start = to_unit(net(torch.zeros(2, 32), truncation=0.0))                  # the average latent's image
    err, err0 = (fitted - targets).abs().mean(dim=(1, 2, 3)), (start - targets).abs().mean(dim=(1, 2, 3))
    assert (err < err0 / 3).all()


# ---------------------------------------------------------------------------------------------------
# the adapter through the shared battery
# ---------------------------------------------------------------------------------------------------
class TestStyleGANLatentWPlus(GeneratorBattery):
    space = "w+"
    init_tolerance = 0.06          # a random start is ~0.23 away; 60 steps of inversion reach ~0.03

    def build(self, batch: int = 1, seed: int = 0, init=None):
        return StyleGANLatent(tiny_net(), batch=batch, space=self.space, init=init, generator=seeded(seed),
                              invert_steps=60, progress=False)

    def init_image(self) -> torch.Tensor:
        with torch.no_grad():
            return self.build(seed=11)()            # an image the generator can reach

    def test_family_and_latent_shape(self):
        gen = self.build(batch=2)
        assert gen.family == "stylegan"
        n = tiny_net().n_latent
        assert gen.latent_parameters()[0].shape == ((2, 32) if self.space == "w" else (2, n, 32))


class TestStyleGANLatentW(TestStyleGANLatentWPlus):
    space = "w"
    init_tolerance = 0.04          # W has fewer dimensions to search: ~0.02 after 60 steps


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------
def _rosinality_checkpoint(path: Path, net: StyleGAN2Generator, **entries) -> Path:
    """A file shaped like the trainer's: generator, EMA generator, discriminator, optimisers, args."""
    sd = net.state_dict()
    g_sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    d_sd = {"convs.0.0.weight": torch.randn(8, 3, 1, 1), "final_linear.0.weight": torch.randn(8, 32)}
    optim = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
             "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99), "eps": 1e-8, "params": [0]}]}
    args = argparse.Namespace(size=net.size, latent=net.style_dim, n_mlp=2, channel_multiplier=2, iter=800000,
                              batch=16, path="lmdb/ffhq", r1=10.0, augment=False, ckpt=None, lr=0.002)
    obj = {"g": g_sd, "d": d_sd, "g_ema": sd, "g_optim": optim, "d_optim": optim, "args": args,
           "ada_aug_p": 0.0, **entries}
    torch.save({k: v for k, v in obj.items() if v is not None}, path)
    return path


def test_loads_a_rosinality_training_checkpoint(tmp_path):
    net = tiny_net(16)
    avg = torch.randn(32, generator=seeded(9))
    path = _rosinality_checkpoint(tmp_path / "010000.pt", net, latent_avg=avg)
    loaded = load_stylegan(path)
    assert loaded.config == tiny_config(16)
    assert torch.equal(loaded.latent_avg, avg[None])
    z = torch.randn(2, 32, generator=seeded(1))
    out = loaded(z, truncation=0.5)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, net(z, truncation=0.5, truncation_latent=avg[None]))
    images = StyleGANLatent(loaded, batch=2, generator=seeded(0), progress=False)()
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1


def test_falls_back_to_g_with_a_warning(tmp_path):
    net = tiny_net(16)
    path = _rosinality_checkpoint(tmp_path / "no_ema.pt", net, g_ema=None)
    with pytest.warns(UserWarning, match="g_ema"):
        loaded = load_stylegan(path)
    torch.testing.assert_close(loaded.input.input, net.input.input + 0.01)  # the 'g' weights
    assert loaded.latent_avg is None
    both = _rosinality_checkpoint(tmp_path / "both.pt", net)
    torch.testing.assert_close(load_stylegan(both, key="g").input.input, net.input.input + 0.01)


def test_loads_a_bare_state_dict(tmp_path):
    net = tiny_net(16)
    torch.save(net.state_dict(), tmp_path / "g.pt")
    z = torch.randn(1, 32, generator=seeded(2))
    torch.testing.assert_close(load_stylegan(tmp_path / "g.pt")(z), net(z))


def test_own_format_round_trip_and_half_precision(tmp_path):
    net = tiny_net(16)
    net.average_latent()
    path = save_stylegan(net, tmp_path / "sg.safetensors", metadata={"note": "tiny"})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT_TAG and meta["note"] == "tiny" and "clipguide_version" in meta
    assert StyleGAN2Config.from_dict(json.loads(meta["config"])) == net.config
    loaded = load_stylegan(path)
    z = torch.randn(2, 32, generator=seeded(3))
    assert torch.equal(loaded(z, truncation=0.7), net(z, truncation=0.7))
    assert torch.equal(loaded.latent_avg, net.latent_avg)

    half = save_stylegan(net, tmp_path / "sg16.safetensors", dtype=torch.float16)
    with safe_open(str(half), framework="pt") as f:
        assert f.get_tensor("conv1.conv.weight").dtype == torch.float16
    assert half.stat().st_size < path.stat().st_size * 0.6
    torch.testing.assert_close(load_stylegan(half)(z), net(z), atol=2e-2, rtol=0)


def test_vqgan_checkpoint_is_recognised(tmp_path):
    sd = {"encoder.conv_in.weight": torch.randn(8, 3, 3, 3), "quantize.embedding.weight": torch.randn(16, 4),
          "decoder.conv_out.weight": torch.randn(3, 8, 3, 3)}
    torch.save({"state_dict": sd, "global_step": 10}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="VQGAN.*load_vqgan"):
        load_stylegan(tmp_path / "last.ckpt")


def test_clip_checkpoint_is_recognised(tmp_path):
    sd = {"visual.conv1.weight": torch.randn(8, 3, 4, 4), "token_embedding.weight": torch.randn(10, 8),
          "logit_scale": torch.tensor(4.6)}
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(CheckpointError, match="CLIP.*clipguide.load"):
        load_stylegan(tmp_path / "clip.pt")


def test_diffusers_directory_is_recognised(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(CheckpointError, match="diffusers"):
        load_stylegan(tmp_path)


def test_mismatched_keys_are_named(tmp_path):
    sd = dict(tiny_net(16).state_dict())
    del sd["convs.1.noise.weight"]
    sd["convs.0.conv.weight"] = torch.randn(1, 32, 16, 3, 3)
    torch.save({"g_ema": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as info:
        load_stylegan(tmp_path / "broken.pt")
    message = str(info.value)
    assert "convs.1.noise.weight" in message and "convs.0.conv.weight" in message and "missing" in message


def _leave_a_mark(path: str) -> None:
    Path(path).write_text("the pickle ran code")


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return _leave_a_mark, (self.marker,)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    torch.save({"g_ema": tiny_net(16).state_dict(), "hook": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="Refusing.*_leave_a_mark"):
        load_stylegan(tmp_path / "evil.pt")
    assert not marker.exists()
