"""The shared battery every encoder passes, on tiny configurations, plus config and registry checks."""
from __future__ import annotations

import json

import pytest
import torch

import clipguide
from clipguide.errors import ConfigError, InputError
from clipguide.models import CLIP, CLIPConfig, build_model, get_config, list_models


def _tokens(model: CLIP, batch: int, seed: int = 0) -> torch.Tensor:
    """Random ids with the end token (highest id) at a random position, zero padding after it."""
    g = torch.Generator().manual_seed(seed)
    t = model.config.text
    ids = torch.randint(1, t.vocab_size - 2, (batch, t.context_length), generator=g)
    ends = torch.randint(1, t.context_length, (batch,), generator=g)
    for i, e in enumerate(ends.tolist()):
        ids[i, e] = t.vocab_size - 1
        ids[i, e + 1:] = 0
    return ids


class EncoderBattery:
    """Shapes, gradients, batch independence, determinism, save/load, precision, bad input."""

    arch: str

    @pytest.fixture
    def model(self) -> CLIP:
        torch.manual_seed(0)
        return build_model(self.arch).eval()

    def images(self, model: CLIP, batch: int, seed: int = 0) -> torch.Tensor:
        s = model.config.vision.image_size
        return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))

    def test_shapes(self, model):
        e = model.config.embed_dim
        assert model.encode_image(self.images(model, 3)).shape == (3, e)
        assert model.encode_text(_tokens(model, 5)).shape == (5, e)
        img, txt, scale = model(self.images(model, 2), _tokens(model, 2))
        assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(txt.norm(dim=-1), torch.ones(2))
        assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)

    def test_gradient_reaches_input(self, model):
        x = self.images(model, 2).requires_grad_(True)
        model.encode_image(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert torch.isfinite(x.grad).all()

    def test_batch_of_one_equals_batch_of_n(self, model):
        x, ids = self.images(model, 4), _tokens(model, 4)
        with torch.no_grad():
            many_i, many_t = model.encode_image(x), model.encode_text(ids)
            for i in range(4):
                torch.testing.assert_close(model.encode_image(x[i:i + 1])[0], many_i[i], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(model.encode_text(ids[i:i + 1])[0], many_t[i], atol=1e-5, rtol=1e-4)

    def test_padding_after_end_token_is_ignored(self, model):
        ids = _tokens(model, 3)
        noisy = ids.clone()
        for i in range(3):
            e = int(ids[i].argmax())
            noisy[i, e + 1:] = torch.randint(1, 5, (noisy.shape[1] - e - 1,))
        with torch.no_grad():
            torch.testing.assert_close(model.encode_text(ids), model.encode_text(noisy), atol=1e-6, rtol=1e-5)

    def test_determinism(self):
        torch.manual_seed(3)
        a = build_model(self.arch).eval()
        torch.manual_seed(3)
        b = build_model(self.arch).eval()
        x = self.images(a, 2)
        assert torch.equal(a.encode_image(x), b.encode_image(x))

    def test_save_load_round_trip(self, model, tmp_path):
        path = clipguide.save(model, tmp_path / "m.safetensors", model_card="# test card")
        back = clipguide.load(path)
        x, ids = self.images(model, 2), _tokens(model, 2)
        with torch.no_grad():
            assert torch.equal(back.encode_image(x), model.encode_image(x))
            assert torch.equal(back.encode_text(ids), model.encode_text(ids))
        assert back.config == model.config
        assert back.model_card == "# test card"
        half = clipguide.load(clipguide.save(model, tmp_path / "h.safetensors", dtype=torch.float16))
        with torch.no_grad():
            cos = torch.cosine_similarity(half.encode_image(x), model.encode_image(x))
        assert cos.min() > 0.999

    def test_bf16_close_to_fp32(self, model):
        x, ids = self.images(model, 2), _tokens(model, 2)
        with torch.no_grad():
            ref_i, ref_t = model.encode_image(x), model.encode_text(ids)
            model.set_precision("bf16")
            low_i, low_t = model.encode_image(x), model.encode_text(ids)
        assert low_i.dtype == torch.float32
        assert torch.cosine_similarity(ref_i, low_i).min() > 0.99
        assert torch.cosine_similarity(ref_t, low_t).min() > 0.99
        assert not torch.equal(ref_i, low_i)   # it really ran in lower precision

    def test_bad_images(self, model):
        s = model.config.vision.image_size
        with pytest.raises(InputError, match=r"\(B, 3"):
            model.encode_image(torch.zeros(3, s, s))
        with pytest.raises(InputError, match="3"):
            model.encode_image(torch.zeros(1, 4, s, s))
        with pytest.raises(InputError, match="floating"):
            model.encode_image(torch.zeros(1, 3, s, s, dtype=torch.uint8))
        with pytest.raises(InputError, match="NaN"):
            model.encode_image(torch.full((1, 3, s, s), float("nan")))
        with pytest.raises(InputError, match="preprocess"):
            model.encode_image(torch.zeros(1, 3, s + 1, s + 1))

    def test_bad_tokens(self, model):
        t = model.config.text
        with pytest.raises(InputError, match="context length"):
            model.encode_text(torch.ones(1, t.context_length + 1, dtype=torch.long))
        with pytest.raises(InputError, match="token ids"):
            model.encode_text(torch.full((1, 4), t.vocab_size, dtype=torch.long))
        with pytest.raises(InputError, match="integer"):
            model.encode_text(torch.zeros(1, 4))


class TestViTNano(EncoderBattery):
    arch = "ViT-nano"


class TestResNetNano(EncoderBattery):
    arch = "RN-nano"


class TestWorldViT(EncoderBattery):
    arch = "world-vit"


class TestWorldViTConvStem(EncoderBattery):
    arch = "world-vitc"                     # a ViT whose patches come from a stack of 3x3 convolutions


class TestWorldViTDeepStem(EncoderBattery):
    arch = "world-vitd"                     # two 3x3 convolutions per halving


class TestWorldViTWideStem(EncoderBattery):
    arch = "world-vitw"                     # the deep stem twice as wide, five layers (the judge)


def test_conv_stem_replaces_the_patch_convolution():
    cfg = get_config("world-vitc")
    assert cfg.vision.stem == "conv" and cfg.vision.patch_size == 8
    model = build_model("world-vitc")
    keys = list(model.state_dict())
    assert not any(k.startswith("visual.conv1.") for k in keys)
    convs = [m for m in model.visual.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]           # log2(8) halvings, then a 1x1
    x = torch.rand(2, 3, 64, 64)
    assert model.visual.stem(x).shape == (2, cfg.vision.width, 8, 8)


def test_deep_stem_follows_each_halving_with_a_same_size_convolution():
    cfg = get_config("world-vitc").replace(**{"vision.stem": "deep"})
    model = build_model(cfg)
    convs = [m for m in model.visual.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1)] * 3 + [(1, 1)]
    assert [c.out_channels for c in convs] == [24, 24, 48, 48, 96, 96, 192]
    assert model.visual.stem(torch.rand(2, 3, 64, 64)).shape == (2, cfg.vision.width, 8, 8)


def test_stem_mult_widens_the_stem_up_to_the_token_width():
    cfg = get_config("world-vitc").replace(**{"vision.stem": "deep", "vision.stem_mult": 2})
    model = build_model(cfg)
    convs = [m for m in model.visual.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 48, 96, 96, 192, 192, 192]      # capped at width 192
    assert model.visual.stem(torch.rand(2, 3, 64, 64)).shape == (2, cfg.vision.width, 8, 8)
    wide = get_config("world-vitw")
    assert wide.vision.stem_mult == 2 and wide.vision.stem == "deep"
    with pytest.raises(ConfigError, match="stem_mult"):
        get_config("ViT-nano").replace(**{"vision.stem_mult": 2})       # a patch stem has nothing to widen
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="stem_mult"):
            cfg.replace(**{"vision.stem_mult": bad})


def test_mean_pool_projects_the_average_of_the_patch_tokens():
    cfg = get_config("ViT-nano").replace(**{"vision.pool": "mean"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen = {}
    model.visual.transformer.register_forward_hook(lambda m, i, out: seen.update(tokens=out))
    x = torch.rand(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    with torch.no_grad():
        got = model.visual(x)
        v = model.visual
        want = v.ln_post(seen["tokens"])[:, 1:].mean(1) @ v.proj
        cls = v.ln_post(seen["tokens"][:, 0]) @ v.proj
    torch.testing.assert_close(got, want)
    assert (got - cls).abs().max() > 1e-3                       # not the class token
    with pytest.raises(ConfigError, match="vision.pool"):
        cfg.replace(**{"vision.pool": "max"})


# --- configs and registry ----------------------------------------------------------------------------
def test_registry_lists_required_architectures():
    names = list_models()
    for required in ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", "RN101", "RN50x4", "ViT-nano", "RN-nano"]:
        assert required in names


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ConfigError, match="ViT-B-32"):
        get_config("ViT-Q-99")


@pytest.mark.parametrize("bad, match", [
    ({"embed_dim": 8, "colour": 1}, "unknown key"),
    ({"vision": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 16, "depth": 2}}, "unknown key"),
    ({"text": {"width": 30, "heads": 4}}, "multiple"),
    ({"activation": "relu"}, "activation"),
    ({"embed_dim": "512"}, "must be"),
    ({"vision": {"image_size": 30, "patch_size": 8}}, "multiple of patch_size"),
    ({"vision": {"layers": [1, 2, 3]}}, "4 stage"),
    ({"vision": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 16, "stem": "mlp"}}, "vision.stem"),
    ({"vision": {"image_size": 36, "patch_size": 6, "width": 64, "head_width": 16, "stem": "conv"}}, "power-of-two"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        CLIPConfig.from_dict(bad)


def test_config_json_round_trip():
    for name in list_models():
        cfg = get_config(name)
        assert CLIPConfig.from_json(cfg.to_json()) == cfg
        assert json.loads(cfg.to_json())["activation"] in ("gelu", "quick_gelu")


def test_activation_is_part_of_the_config():
    torch.manual_seed(0)
    gelu = build_model(get_config("ViT-nano").replace(activation="gelu")).eval()
    quick = build_model(get_config("ViT-nano").replace(activation="quick_gelu")).eval()
    quick.load_state_dict(gelu.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(gelu.encode_image(x), quick.encode_image(x))


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = build_model("ViT-nano")
    x = torch.randn(2, 3, 32, 32)
    model.encode_image(x).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model.encode_image(x).square().sum().backward()
    got = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b)


def test_precision_argument_checked():
    model = build_model("ViT-nano")
    with pytest.raises(InputError, match="precision"):
        model.set_precision("fp8")
    with pytest.raises(InputError, match="CUDA"):
        model.set_precision("fp16")


@pytest.mark.parametrize("arch", ["ViT-nano", "RN-nano"])
def test_frozen_weights_fast_path_gives_the_same_input_gradient(arch):
    """Guidance freezes the weights, which takes another matrix-multiply kernel: same numbers."""
    torch.manual_seed(0)
    model = build_model(arch).eval()
    s = model.config.vision.image_size
    x = torch.randn(2, 3, s, s)
    a = x.clone().requires_grad_(True)
    ref = model.encode_image(a)
    ref.square().sum().backward()
    model.requires_grad_(False)
    b = x.clone().requires_grad_(True)
    out = model.encode_image(b)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_written_out_attention_matches_the_fused_kernel(causal):
    from clipguide.models.layers import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, requires_grad=True) for _ in range(3))
    ours = attention(q, k, v, causal)                       # gradients wanted: the written-out path
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    ref.square().sum().backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for a, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(a, t.grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():                                   # inference: the fused kernel, same values
        torch.testing.assert_close(attention(q, k, v, causal), ref.detach(), atol=1e-5, rtol=1e-5)


def test_frozen_linear_gives_first_and_second_order_gradients():
    """The oneDNN path for frozen weights: its gradient to the input, and the gradient of that
    gradient (a gradient penalty through a frozen tower), equal plain F.linear's."""
    from clipguide.models.layers import linear

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    results = []
    for fn in (linear, torch.nn.functional.linear):
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        y = fn(x.square(), w, b)
        (grad,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        grad.square().sum().backward()
        results.append((y.detach(), grad.detach(), x.grad.clone()))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
