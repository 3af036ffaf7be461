"""The CLIP model: an image tower and a causal text Transformer projected into one embedding space.

Text parameters sit at the top level (`token_embedding`, `transformer`, `ln_final`,
`text_projection`) and the image tower under `visual.`, the layout of the released checkpoints."""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from ..errors import InputError
from .config import CLIPConfig
from .layers import LayerNorm, Transformer
from .resnet import ModifiedResNet
from .vit import VisionTransformer

# One builder per image-tower family.
VISION_TOWERS: dict[str, Callable[[CLIPConfig], nn.Module]] = {
    "vit": VisionTransformer,
    "resnet": ModifiedResNet,
}

PRECISIONS = ("fp32", "bf16", "fp16")


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        t = cfg.text
        self.visual = VISION_TOWERS["resnet" if cfg.vision.is_resnet else "vit"](cfg)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, cfg.activation, cfg.layer_norm_eps)
        self.ln_final = LayerNorm(t.width, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=t.width ** -0.5)
        self.transformer.init_weights()
        self.precision = "fp32"
        self.tokenizer = None        # attached by clipguide.load / the trainer
        self.preprocess = None

    # --- precision -------------------------------------------------------------------------------
    def set_precision(self, precision: str) -> "CLIP":
        """fp32; bf16 (autocast on CPU, bf16 weights on CUDA; norms and softmax stay fp32); fp16 (CUDA)."""
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {PRECISIONS}")
        device = self.logit_scale.device
        if precision == "fp16" and device.type == "cpu":
            raise InputError("precision='fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
        self.precision = precision
        if device.type != "cpu" and precision != "fp32":
            self.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
        else:
            self.float()
        return self

    def freeze_low_precision(self) -> "CLIP":
        """For a frozen model (guidance) at bf16 on the CPU: keep bf16 weights instead of letting
        autocast re-cast every weight on every call. Layer norms and softmax still run in fp32."""
        if self.precision == "bf16" and self.logit_scale.device.type == "cpu":
            self.requires_grad_(False)
            self.to(torch.bfloat16)
        return self

    def _autocast(self):
        if self.precision == "bf16" and self.logit_scale.device.type == "cpu" and self.dtype == torch.float32:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    # --- encoders --------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images already preprocessed to the model's size, mean and std: (B, 3, S, S) -> (B, E) float32."""
        S = self.config.vision.image_size
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise InputError(f"encode_image expects a (B, 3, {S}, {S}) tensor, got {shape}; "
                             "use model.preprocess(...) to resize and normalise images first")
        if tuple(images.shape[-2:]) != (S, S):
            raise InputError(f"encode_image expects {S}x{S} images, got {tuple(images.shape[-2:])}; "
                             "use model.preprocess(...) to resize and crop")
        if not images.is_floating_point():
            raise InputError(f"encode_image expects a floating point tensor, got {images.dtype}; "
                             "use model.preprocess(...) which converts uint8 images")
        if not torch.isfinite(images).all():
            raise InputError("encode_image: the images contain NaN or Inf values")
        with self._autocast():
            x = self.visual(images.to(self.dtype))
        x = x.float()
        return x / x.norm(dim=-1, keepdim=True) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, L) with L <= context length, end token = highest id in each row -> (B, E) float32."""
        t = self.config.text
        if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int):
            desc = f"{tuple(tokens.shape)} {tokens.dtype}" if torch.is_tensor(tokens) else type(tokens).__name__
            raise InputError(f"encode_text expects token ids of shape (B, L) and integer dtype, got {desc}; "
                             "use model.tokenize(texts)")
        if tokens.shape[1] > t.context_length:
            raise InputError(f"encode_text: {tokens.shape[1]} tokens exceed the context length {t.context_length}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= t.vocab_size):
            raise InputError(f"encode_text: token ids must lie in [0, {t.vocab_size}), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]; was a tokenizer of another model used?")
        eot = tokens.argmax(dim=-1)                                   # pooled position of each row
        # causal attention: positions after the last end token cannot change the pooled features
        L = int(eot.max()) + 1 if tokens.numel() else tokens.shape[1]
        tokens = tokens[:, :L]
        with self._autocast():
            x = self.token_embedding(tokens) + self.positional_embedding[:L].to(self.dtype)  # (B, L, D)
            x = self.ln_final(self.transformer(x, causal=True))
            x = x[torch.arange(x.shape[0], device=x.device), eot]                          # (B, D)
            x = x @ self.text_projection                                                    # (B, E)
        x = x.float()
        return x / x.norm(dim=-1, keepdim=True) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        """Normalised image and text features and the logit scale (exp of the learnt log scale)."""
        return (self.encode_image(images, normalize=True), self.encode_text(tokens, normalize=True),
                self.logit_scale.exp())

    # --- convenience -----------------------------------------------------------------------------
    def tokenize(self, texts, truncate: bool = False) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer attached; load it with clipguide.load(...) "
                             "or set model.tokenizer")
        return self.tokenizer(texts, context_length=self.config.text.context_length,
                              truncate=truncate).to(self.logit_scale.device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable
        if hasattr(self.visual, "transformer"):
            self.visual.transformer.grad_checkpointing = enable

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def temperature(self) -> float:
        return 1.0 / math.exp(float(self.logit_scale))
