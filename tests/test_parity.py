"""Parity against independent implementations installed in the test environment (random weights,
fp32, CPU): open_clip for the OpenAI/open_clip layouts, transformers for Hugging Face directories."""
from __future__ import annotations

import pytest
import torch

import clipguide

open_clip = pytest.importorskip("open_clip", reason="parity tests need open_clip_torch (pip install -e .[test])")


def _inputs(size: int, vocab: int, ctx: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.randint(1, vocab - 2, (batch, ctx), generator=g)
    for i in range(batch):
        end = 5 + 7 * i
        tokens[i, end] = vocab - 1
        tokens[i, end + 1:] = 0
    return images, tokens


def _features(model, images, tokens, ours: bool):
    with torch.no_grad():
        if ours:
            return model.encode_image(images), model.encode_text(tokens)
        return model.encode_image(images), model.encode_text(tokens)


@pytest.fixture(scope="module", params=["ViT-B-32", "RN50"])
def open_clip_model(request):
    torch.manual_seed(0)
    model = open_clip.create_model(request.param, pretrained=None).eval()
    return request.param, model


def _assert_parity(ours, theirs, images, tokens, atol):
    mi, mt = _features(ours, images, tokens, True)
    ti, tt = _features(theirs, images, tokens, False)
    assert (mi - ti).abs().max().item() <= atol, (mi - ti).abs().max().item()
    assert (mt - tt).abs().max().item() <= atol, (mt - tt).abs().max().item()


def test_open_clip_state_dict(open_clip_model, tmp_path):
    name, theirs = open_clip_model
    path = tmp_path / f"{name}.pt"
    torch.save(theirs.state_dict(), path)
    ours = clipguide.load(path, format="open_clip")
    assert ours.config.activation == "gelu"
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    images, tokens = _inputs(224, 49408, 77)
    _assert_parity(ours, theirs, images, tokens, atol=1e-5)
    # the named architecture describes the same tensors
    assert clipguide.get_config(name).replace(activation="gelu") == ours.config


def test_open_clip_trainer_checkpoint(open_clip_model, tmp_path):
    name, theirs = open_clip_model
    ckpt = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in theirs.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}
    path = tmp_path / "epoch_3.pt"
    torch.save(ckpt, path)
    ours = clipguide.load(path)              # detected as open_clip: GELU
    assert ours.format == "open_clip"
    images, tokens = _inputs(224, 49408, 77, seed=1)
    _assert_parity(ours, theirs, images, tokens, atol=1e-5)


def test_openai_bare_state_dict_uses_quickgelu(tmp_path):
    torch.manual_seed(1)
    theirs = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    sd = dict(theirs.state_dict())
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "ViT-B-32.pt"
    torch.save(sd, path)
    ours = clipguide.load(path)
    assert ours.format == "openai" and ours.config.activation == "quick_gelu"
    _assert_parity(ours, theirs, *_inputs(224, 49408, 77, seed=2), atol=1e-5)


def test_openai_torchscript_archive(tmp_path):
    """A TorchScript archive of a CLIP in the released layout: weights read without running its code."""
    torch.manual_seed(2)
    theirs = open_clip.create_model("RN50-quickgelu", pretrained=None).eval()
    images, tokens = _inputs(224, 49408, 77, seed=3)
    scripted = torch.jit.trace_module(theirs, {"encode_image": (images,), "encode_text": (tokens,)})
    path = tmp_path / "RN50.pt"
    torch.jit.save(scripted, str(path))
    ours = clipguide.load(path)
    assert ours.format == "openai" and ours.config.activation == "quick_gelu"
    _assert_parity(ours, theirs, images, tokens, atol=1e-5)


def test_tokenizer_attached_matches_open_clip():
    torch.manual_seed(0)
    model = clipguide.create_model("ViT-nano".replace("nano", "B-32"))
    texts = ["a gothic church at night", "A RED circle & a blue square!", ""]
    assert torch.equal(model.tokenize(texts), open_clip.tokenize(texts))


# --- Hugging Face transformers ---------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_hf_directory(tmp_path, act):
    from transformers import CLIPConfig, CLIPModel

    vocab = 1000
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=24, hidden_act=act,
                         eos_token_id=vocab - 1, bos_token_id=vocab - 2, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=40,
    )
    torch.manual_seed(0)
    theirs = CLIPModel(cfg).eval()
    with torch.no_grad():   # non-trivial values for parameters initialised to constants
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    theirs.save_pretrained(tmp_path)
    ours = clipguide.load(tmp_path)
    assert ours.format == "hf" and ours.config.activation == act
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()
                                        if p.requires_grad or p.dim() > 0)
    images, tokens = _inputs(32, vocab, 24, batch=3, seed=4)
    with torch.no_grad():
        ti = theirs.get_image_features(pixel_values=images)
        tt = theirs.get_text_features(input_ids=tokens, attention_mask=(tokens != 0).long())
        ti = getattr(ti, "pooler_output", ti)
        tt = getattr(tt, "pooler_output", tt)
        mi, mt = ours.encode_image(images), ours.encode_text(tokens)
    assert (mi - ti).abs().max().item() <= 1e-4
    assert (mt - tt).abs().max().item() <= 1e-4
    assert float(ours.logit_scale) == pytest.approx(float(theirs.logit_scale))


def _write_hub_directory(path, model, open_clip_config: dict) -> None:
    """open_clip's hub layout: open_clip_model.safetensors + open_clip_config.json."""
    import json

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    (path / "open_clip_config.json").write_text(json.dumps(open_clip_config))


def test_open_clip_hub_directory_reads_quickgelu_from_its_config(tmp_path):
    """open_clip's hub layout: open_clip_config.json (model_cfg with quick_gelu) + open_clip_model.safetensors."""
    torch.manual_seed(3)
    theirs = open_clip.create_model("RN50-quickgelu", pretrained=None).eval()
    cfg = {"model_cfg": {"embed_dim": 1024, "quick_gelu": True,
                         "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    _write_hub_directory(tmp_path, theirs, cfg)
    ours = clipguide.load(tmp_path)
    assert ours.format == "open_clip" and ours.config.activation == "quick_gelu"
    assert ours.config.vision.mean == (0.5, 0.5, 0.5)
    _assert_parity(ours, theirs, *_inputs(224, 49408, 77, seed=6), atol=1e-5)


@pytest.mark.parametrize("pool_key", [{"pool_type": "avg"}, {"global_average_pool": True}])
def test_open_clip_hub_directory_mean_pooled_vit(tmp_path, pool_key):
    """A ViT that pools the average of its patch tokens (open_clip's pool_type 'avg'): the state dict
    is the same as a class-token ViT, so only the hub config tells; features match open_clip."""
    model_cfg = {"embed_dim": 64,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32,
                                "pool_type": "avg"},
                 "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 2, "layers": 2}}
    torch.manual_seed(4)
    theirs = open_clip.CLIP(**model_cfg).eval()
    vision_cfg = {k: v for k, v in model_cfg["vision_cfg"].items() if k != "pool_type"} | pool_key
    _write_hub_directory(tmp_path, theirs, {"model_cfg": {**model_cfg, "vision_cfg": vision_cfg}})
    ours = clipguide.load(tmp_path)
    assert ours.config.vision.pool == "mean"
    _assert_parity(ours, theirs, *_inputs(32, 100, 16, seed=7), atol=1e-5)
    # read as a class-token ViT the same tensors give other image features: the pooling matters
    plain = clipguide.load(tmp_path / "open_clip_model.safetensors", format="open_clip")
    images = _inputs(32, 100, 16, seed=7)[0]
    with torch.no_grad():
        assert (plain.encode_image(images) - ours.encode_image(images)).abs().max() > 1e-2


def test_open_clip_hub_directory_unsupported_pooling_is_refused(tmp_path):
    torch.manual_seed(5)
    model_cfg = {"embed_dim": 64,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                 "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 64, "heads": 2, "layers": 2}}
    theirs = open_clip.CLIP(**model_cfg)
    model_cfg["vision_cfg"]["pool_type"] = "last"
    _write_hub_directory(tmp_path, theirs, {"model_cfg": model_cfg})
    with pytest.raises(clipguide.errors.CheckpointError, match="pool_type 'last'"):
        clipguide.load(tmp_path)
