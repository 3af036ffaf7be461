"""Read and write CLIP checkpoints in every supported layout, and `load()`, the one entry point.

Layouts:
- ``clipguide``: safetensors whose metadata carries the config, the tokenizer, the library version
  and a model card. Written by :func:`save`.
- ``openai``: a bare state dict, or a TorchScript archive (weights read without running its code).
  The architecture is inferred from tensor shapes; activation QuickGELU as in the released models.
- ``open_clip``: its state dicts (possibly ``module.``-prefixed) and its trainer's checkpoints
  (``{"epoch", "name", "state_dict", ...}``). Same layout as openai; activation GELU, open_clip's
  default (pass ``activation="quick_gelu"`` for its ``-quickgelu`` models).
- ``hf``: a transformers ``CLIPModel`` directory (config.json + safetensors/bin); keys converted.

Every read is safe (safetensors, or torch.load with weights_only=True). Files are read lazily where
possible and the model is built on the meta device, so loading costs about one copy of the weights."""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ClipguideError, ConfigError, WeightsNotFoundError
from .formats.readers import RawCheckpoint, read_checkpoint
from .models import CLIP, CLIPConfig, get_config, list_models
from .models.config import TextConfig, VisionConfig
from .preprocess import Preprocess

log = logging.getLogger(__name__)

FORMATS = ("clipguide", "openai", "open_clip", "hf")
FORMAT_TAG = "clipguide.clip"
ASSETS = Path(__file__).parent / "assets"
_DROP_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class LoadedState:
    config: CLIPConfig
    state_dict: dict[str, torch.Tensor]
    format: str
    metadata: dict[str, str] = field(default_factory=dict)
    tokenizer: Any = None          # a Tokenizer, or a callable that builds one on demand
    source: str = ""


# ---------------------------------------------------------------------------------------------------
# architecture from tensor shapes
# ---------------------------------------------------------------------------------------------------
def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_config(sd: dict[str, torch.Tensor], activation: str = "quick_gelu") -> CLIPConfig:
    """The architecture of an OpenAI-layout state dict, from its tensor shapes (64-wide heads)."""
    need = ["text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"not a CLIP state dict in the OpenAI/open_clip layout: missing {missing}; "
                              f"first keys are {sorted(sd)[:8]}")
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(1, text_width // 64),
        layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
    )
    embed_dim = sd["text_projection"].shape[1]
    if "visual.proj" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=patch * grid, layers=_count(sd, r"visual\.transformer\.resblocks\.(\d+)\."),
            width=width, patch_size=patch, head_width=64,
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width)
    elif "visual.attnpool.positional_embedding" in sd:
        layers = tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
        spatial = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=spatial * 32, layers=layers,
                              width=sd["visual.layer1.0.conv1.weight"].shape[0], patch_size=None, head_width=64)
    else:
        raise CheckpointError("cannot tell the image tower: neither visual.proj (ViT) nor "
                              "visual.attnpool.* (ResNet) is in the state dict")
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, activation=activation).validate()


# ---------------------------------------------------------------------------------------------------
# layouts -> our state dict
# ---------------------------------------------------------------------------------------------------
def _openai_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {}
    for k, v in tensors.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith("text."):
            k = k[len("text."):]              # open_clip's separate text tower
            if k == "text_projection.weight":  # Linear projection: (E, D) -> (D, E)
                k, v = "text_projection", v.t()
        if k in _DROP_KEYS or k.endswith("attn_mask"):
            continue
        sd[k] = v
    return sd


def _hf_layout(tensors: dict[str, torch.Tensor], n_text: int, n_vision: int) -> dict[str, torch.Tensor]:
    """transformers CLIPModel keys -> OpenAI layout (q/k/v projections fused, projections transposed)."""
    sd: dict[str, torch.Tensor] = {}
    rename = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
        "logit_scale": "logit_scale",
    }
    block = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    used = set()
    for src, dst in rename.items():
        if src in tensors:
            sd[dst] = tensors[src]
            used.add(src)
    for src, dst in (("text_projection.weight", "text_projection"), ("visual_projection.weight", "visual.proj")):
        if src in tensors:
            sd[dst] = tensors[src].t()
            used.add(src)
    for tower, prefix, n in (("text_model", "", n_text), ("vision_model", "visual.", n_vision)):
        for i in range(n):
            hf = f"{tower}.encoder.layers.{i}."
            ours = f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                parts = [f"{hf}self_attn.{p}_proj.{kind}" for p in "qkv"]
                if all(p in tensors for p in parts):
                    sd[f"{ours}attn.in_proj_{kind}"] = torch.cat([tensors[p] for p in parts])
                    used.update(parts)
                for a, b in block.items():
                    if f"{hf}{a}.{kind}" in tensors:
                        sd[f"{ours}{b}.{kind}"] = tensors[f"{hf}{a}.{kind}"]
                        used.add(f"{hf}{a}.{kind}")
    for k in tensors:
        if k not in used and not k.endswith("position_ids"):
            sd[k] = tensors[k]              # left as is: reported as unexpected by the shape check
    return sd


def _hf_config(raw: RawCheckpoint) -> tuple[CLIPConfig, dict]:
    try:
        cfg = json.loads(raw.metadata["config.json"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{raw.path}: config.json is missing or not valid JSON ({e})") from None
    if "vision_config" not in cfg or "text_config" not in cfg:
        raise CheckpointError(f"{raw.path}: config.json is not a CLIPModel config "
                              f"(model_type={cfg.get('model_type')!r}; need text_config and vision_config)")
    t, v = cfg["text_config"], cfg["vision_config"]
    act = t.get("hidden_act", "quick_gelu")
    if act not in ("gelu", "quick_gelu") or v.get("hidden_act", act) != act:
        raise CheckpointError(f"{raw.path}: unsupported activation {act!r} / {v.get('hidden_act')!r} "
                              "(supported: gelu, quick_gelu, the same in both towers)")
    mean, std = VisionConfig.mean, VisionConfig.std
    if "preprocessor_config.json" in raw.metadata:
        pp = json.loads(raw.metadata["preprocessor_config.json"])
        mean, std = tuple(pp.get("image_mean", mean)), tuple(pp.get("image_std", std))
    try:
        t_width, v_width = t.get("hidden_size", 512), v.get("hidden_size", 768)
        config = CLIPConfig(
            embed_dim=cfg.get("projection_dim", 512),
            vision=VisionConfig(image_size=v.get("image_size", 224), layers=v.get("num_hidden_layers", 12),
                                width=v_width, patch_size=v.get("patch_size", 32),
                                head_width=v_width // v.get("num_attention_heads", 12),
                                mlp_ratio=v.get("intermediate_size", 3072) / v_width, mean=mean, std=std),
            text=TextConfig(context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
                            width=t_width, heads=t.get("num_attention_heads", 8),
                            layers=t.get("num_hidden_layers", 12),
                            mlp_ratio=t.get("intermediate_size", 2048) / t_width),
            activation=act, layer_norm_eps=float(t.get("layer_norm_eps", 1e-5)),
        ).validate()
    except (ConfigError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{raw.path}: config.json describes an unsupported CLIP ({e})") from None
    return config, cfg


def _open_clip_hub_config(raw: RawCheckpoint) -> dict:
    """The open_clip_config.json of an open_clip hub directory ({} when absent or unreadable)."""
    text = raw.metadata.get("open_clip_config.json")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{raw.path}: open_clip_config.json is not valid JSON") from None
    return data if isinstance(data, dict) else {}


def _open_clip_hub_overrides(oc: dict, is_resnet: bool, path) -> dict:
    """What an open_clip hub config says that the state dict cannot: head counts, the ViT's pooling
    and the preprocessing statistics, as `CLIPConfig.replace` keys. Poolings clipguide does not
    implement are refused."""
    model_cfg = oc.get("model_cfg", {})
    vision_cfg, text_cfg = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    pool = vision_cfg.get("pool_type", "avg" if vision_cfg.get("global_average_pool") else "tok")
    if pool not in ("tok", "avg") or vision_cfg.get("attentional_pool") or vision_cfg.get("final_ln_after_pool"):
        raise CheckpointError(f"{path}: open_clip_config.json asks for an image-tower pooling clipguide does "
                              f"not implement (pool_type {pool!r}, attentional_pool, final_ln_after_pool); "
                              "supported: pool_type 'tok' (class token) or 'avg' (mean of the patch tokens)")
    out: dict = {}
    if "head_width" in vision_cfg:
        out["vision.head_width"] = int(vision_cfg["head_width"])
    if "heads" in text_cfg:
        out["text.heads"] = int(text_cfg["heads"])
    if pool == "avg" and not is_resnet:
        out["vision.pool"] = "mean"
    pp = oc.get("preprocess_cfg", {})
    if "mean" in pp and "std" in pp:
        out["vision.mean"], out["vision.std"] = list(pp["mean"]), list(pp["std"])
    return out


def detect_format(raw: RawCheckpoint) -> str:
    if raw.kind == "hf_dir":
        # open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors) holds open_clip keys
        return "open_clip" if "config.json" not in raw.metadata and "open_clip_config.json" in raw.metadata else "hf"
    if raw.metadata.get("format") == FORMAT_TAG:
        return "clipguide"
    keys = raw.tensors.keys()
    if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
        raise CheckpointError(f"{raw.path} holds Hugging Face CLIPModel weights without their config: "
                              "pass the model directory (with config.json) instead of the weights file")
    if raw.kind == "torchscript":
        return "openai"
    if raw.container_key is not None or any(k.startswith("module.") for k in keys) or raw.kind == "safetensors":
        return "open_clip"
    return "openai"


def convert(raw: RawCheckpoint, format: str | None = None, arch: str | CLIPConfig | None = None,
            activation: str | None = None) -> LoadedState:
    """A raw checkpoint in any supported layout -> our config and state dict."""
    fmt = format or detect_format(raw)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    meta = dict(raw.metadata)
    tokenizer = None
    if fmt == "clipguide":
        if "config" not in meta:
            raise CheckpointError(f"{raw.path}: a clipguide checkpoint must carry its config in the metadata")
        config = CLIPConfig.from_json(meta["config"], where=f"{raw.path} config")
        sd = dict(raw.tensors)
        if "tokenizer" in meta:
            from .tokenizer import Tokenizer

            tokenizer = Tokenizer.from_json(meta["tokenizer"])
    elif fmt == "hf":
        config, hf = _hf_config(raw)
        sd = _hf_layout(raw.tensors, config.text.layers, config.vision.layers)
        if "logit_scale" not in sd:
            sd["logit_scale"] = torch.tensor(float(hf.get("logit_scale_init_value", 2.6592)))
        tokenizer = _hf_tokenizer(raw.path, config)
    else:
        sd = _openai_layout(raw.tensors)
        default_act = "quick_gelu" if fmt == "openai" else "gelu"
        oc = _open_clip_hub_config(raw)
        if oc.get("model_cfg", {}).get("quick_gelu"):
            default_act = "quick_gelu"
        config = infer_config(sd, activation or default_act)
        overrides = _open_clip_hub_overrides(oc, config.vision.is_resnet, raw.path)
        if overrides:
            config = config.replace(**overrides)
        tokenizer = _openai_tokenizer(config)
    if arch is not None:
        config = get_config(arch) if isinstance(arch, str) else arch
    if activation is not None and activation != config.activation:
        config = config.replace(activation=activation)
    return LoadedState(config, sd, fmt, meta, tokenizer, str(raw.path))


# ---------------------------------------------------------------------------------------------------
# tokenizers that go with each layout
# ---------------------------------------------------------------------------------------------------
class MissingTokenizer:
    """Stands in for a tokenizer whose vocabulary file is not on this machine; raises on use."""

    def __init__(self, error: Exception):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise WeightsNotFoundError(str(self.error))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise WeightsNotFoundError(str(self.error))

    def __repr__(self) -> str:
        return "MissingTokenizer(vocabulary file not found)"


def _openai_tokenizer(config: CLIPConfig) -> Any:
    from .tokenizer import Tokenizer, find_openai_vocab

    if config.text.vocab_size != 49408:
        return MissingTokenizer(WeightsNotFoundError(
            f"this checkpoint's vocabulary has {config.text.vocab_size} entries, not OpenAI's 49408, and the file "
            "carries no tokenizer: set model.tokenizer = clipguide.Tokenizer.from_openai(path) or from_hf(dir)"))
    try:
        return Tokenizer.from_openai(find_openai_vocab(), context_length=config.text.context_length)
    except WeightsNotFoundError as e:
        return MissingTokenizer(e)


def _hf_tokenizer(path, config: CLIPConfig) -> Any:
    from .tokenizer import Tokenizer

    path = Path(path)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return Tokenizer.from_hf(path, context_length=config.text.context_length)
    return _openai_tokenizer(config)


# ---------------------------------------------------------------------------------------------------
# building the model
# ---------------------------------------------------------------------------------------------------
def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a CheckpointError listing missing / unexpected / mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
                    for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k])
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        raise CheckpointError(f"{source} does not fit the architecture: " + "; ".join(parts) +
                              ". Check arch=/format= (see clipguide.list_models()), or that the file is a CLIP model")


def build_from_state(state: LoadedState, device: str | torch.device = "cpu", precision: str = "fp32") -> CLIP:
    with torch.device("meta"):
        model = CLIP(state.config)
    check_state_dict(model, state.state_dict, state.source)
    sd = {k: v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)
          for k, v in state.state_dict.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.tokenizer = state.tokenizer
    model.preprocess = Preprocess(state.config.vision.image_size, state.config.vision.mean, state.config.vision.std)
    model.source = state.source
    model.format = state.format
    model.model_card = state.metadata.get("model_card", "")
    return model.set_precision(precision).eval()


def create_model(name_or_config: str | CLIPConfig | dict, tokenizer: Any = None) -> CLIP:
    """A randomly initialised model of a named architecture (or config), with its preprocessing attached."""
    from .models import build_model

    model = build_model(name_or_config)
    model.preprocess = Preprocess(model.config.vision.image_size, model.config.vision.mean, model.config.vision.std)
    model.tokenizer = tokenizer if tokenizer is not None else _openai_tokenizer(model.config)
    return model


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", precision: str = "fp32", *,
         format: str | None = None, arch: str | CLIPConfig | None = None, activation: str | None = None) -> CLIP:
    """Load a CLIP model: a bundled name ("default"), a named remote ("openai:ViT-B-32"), a file or a
    Hugging Face directory. Returns the model in eval mode with `.tokenizer` and `.preprocess`.

    `format` overrides the detected layout (one of FORMATS); `arch` an architecture name or config
    when shapes are ambiguous; `activation` ("gelu" / "quick_gelu") for layouts that do not record it."""
    from . import hub

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipguideError("device='cuda' was asked for but CUDA is not available here; use device='cpu'")
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if not path.exists():
        if name in bundled_models():
            path = ASSETS / f"{name}.safetensors"
        elif name in hub.REMOTE:
            path, w = hub.resolve_remote(name)
            format = format or w.format
        elif name in list_models():
            raise ClipguideError(f"{name!r} is an architecture, not weights: clipguide.create_model({name!r}) "
                                 f"builds it with random weights; 'openai:{name}' names OpenAI's weights")
        else:
            raise CheckpointError(f"no file or known model named {name!r}. Bundled: {bundled_models()}; "
                                  f"remote: {sorted(hub.REMOTE)}; or give the path of a checkpoint file or "
                                  "a Hugging Face model directory")
    raw = read_checkpoint(path)
    return build_from_state(convert(raw, format=format, arch=arch, activation=activation), device, precision)


def bundled_models() -> list[str]:
    """Names of the bundled CLIP models (the generators' bundled networks and text priors are not among them)."""
    from .generators import BUNDLED
    from .generators.prior import BUNDLED_PRIORS

    if not ASSETS.is_dir():
        return []
    generators = set(BUNDLED.values()) | set(BUNDLED_PRIORS.values())
    return sorted(p.stem for p in ASSETS.glob("*.safetensors") if p.name not in generators)


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
def save(model: CLIP, path: str | os.PathLike, *, dtype: torch.dtype | None = None, model_card: str = "",
         metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as a clipguide safetensors file (atomic): weights (optionally cast, e.g. fp16),
    config, tokenizer, library version and model card in the metadata."""
    from clipguide.formats.writer import write_safetensors

    header = {"model_card": model_card or getattr(model, "model_card", "")}
    tok = getattr(model, "tokenizer", None)
    if tok is not None and not isinstance(tok, MissingTokenizer) and hasattr(tok, "to_json"):
        header["tokenizer"] = tok.to_json()
    return write_safetensors(path, model.state_dict(), format_tag=FORMAT_TAG, config_json=model.config.to_json(),
                             dtype=dtype, header=header, metadata=metadata)
