"""Vision Transformer image tower: patches -> class token -> Transformer -> projected class token."""
from __future__ import annotations

import torch
from torch import nn

from .config import CLIPConfig
from .layers import LayerNorm, Transformer, init_positions


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        v = cfg.vision
        self.image_size, self.patch_size = v.image_size, v.patch_size
        grid = v.image_size // v.patch_size
        scale = v.width ** -0.5
        self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(v.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, v.width))
        self.ln_pre = LayerNorm(v.width, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(v.width, v.layers, v.heads, v.mlp_ratio, cfg.activation, cfg.layer_norm_eps)
        self.ln_post = LayerNorm(v.width, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(v.width, cfg.embed_dim))
        self.transformer.init_weights()

    def init_positions(self, kind: str = "random") -> None:
        """Re-initialise the position embedding: 'random' (CLIP's) or 'sincos' (2-D codes)."""
        init_positions(self.positional_embedding, self.image_size // self.patch_size, kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                  # (B, 3, S, S) -> (B, E)
        x = self.conv1(x)                                                  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)                                   # (B, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)   # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))                               # (B, 1+g*g, D)
        return self.ln_post(x[:, 0]) @ self.proj                          # (B, E)
