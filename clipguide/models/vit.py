"""Vision Transformer image tower: patches -> class token -> Transformer -> projected class token
(or, with vision.pool "mean", the projected average of the patch tokens)."""
from __future__ import annotations

import torch
from torch import nn

from .config import CLIPConfig
from .layers import LayerNorm, Transformer, init_positions


CONVS_PER_HALVING = {"conv": 1, "deep": 2}     # convolutional stems by vision.stem


class ConvStem(nn.Sequential):
    """Patchify with a stack of 3x3 stride-2 convolutions (BatchNorm, ReLU) that halve the side
    log2(patch) times, widths doubling up to width / 2, then a 1x1 projection to the token width:
    the convolutional stem that makes a small ViT train faster and more stably than one strided
    patch convolution. `per_level` 2 (the "deep" stem) follows each halving with a second 3x3
    convolution at the same size. `mult` widens every stem convolution that many times (up to the
    token width): finer shapes are told apart for a little more compute at the high resolutions.
    (B, 3, S, S) -> (B, width, S / patch, S / patch)."""

    def __init__(self, width: int, patch_size: int, per_level: int = 1, mult: int = 1):
        depth = patch_size.bit_length() - 1
        widths = [3] + [min(width, max(8, (width * mult) >> (depth - i))) for i in range(depth)]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            for k in range(per_level):          # the first halves the side, the rest keep it ("deep")
                layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, stride=2 if k == 0 else 1, padding=1,
                                     bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(widths[-1], width, 1))
        super().__init__(*layers)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        v = cfg.vision
        self.image_size, self.patch_size, self.pool = v.image_size, v.patch_size, v.pool
        grid = v.image_size // v.patch_size
        scale = v.width ** -0.5
        if v.stem in CONVS_PER_HALVING:
            self.stem = ConvStem(v.width, v.patch_size, CONVS_PER_HALVING[v.stem], v.stem_mult)
        else:
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
        x = self.stem(x) if hasattr(self, "stem") else self.conv1(x)       # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)                                   # (B, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)   # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))                               # (B, 1+g*g, D)
        if self.pool == "mean":                                            # average of the patch tokens (B, E)
            return self.ln_post(x[:, 1:]).mean(dim=1) @ self.proj
        return self.ln_post(x[:, 0]) @ self.proj                          # (B, E)
