"""Modified ResNet image tower: a three-convolution stem, anti-aliased strides (average pooling
before strided paths) and attention pooling in place of global average pooling."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig
from .layers import Linear, attention, init_positions


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pools a feature map by letting its mean attend to all positions (QKV attention, one query)."""

    def __init__(self, spatial: int, width: int, heads: int, out_dim: int):
        super().__init__()
        self.spatial = spatial
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, width) / width ** 0.5)
        self.k_proj = Linear(width, width)
        self.q_proj = Linear(width, width)
        self.v_proj = Linear(width, width)
        self.c_proj = Linear(width, out_dim)
        self.heads = heads

    def init_positions(self, kind: str = "random") -> None:
        """Re-initialise the position embedding: 'random' (CLIP's) or 'sincos' (2-D codes)."""
        init_positions(self.positional_embedding, self.spatial, kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                  # (B, C, H, W) -> (B, E)
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)                                   # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)             # (B, 1+HW, C)
        x = x + self.positional_embedding.to(x.dtype)
        h, dh = self.heads, C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, h, dh).transpose(1, 2)        # (B, h, 1, dh)
        k = self.k_proj(x).view(B, -1, h, dh).transpose(1, 2)              # (B, h, N, dh)
        v = self.v_proj(x).view(B, -1, h, dh).transpose(1, 2)
        o = attention(q, k, v)                                             # (B, h, 1, dh)
        return self.c_proj(o.transpose(1, 2).reshape(B, C))


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        v = cfg.vision
        width = v.width
        self.image_size = v.image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._stage(width, v.layers[0])
        self.layer2 = self._stage(width * 2, v.layers[1], stride=2)
        self.layer3 = self._stage(width * 4, v.layers[2], stride=2)
        self.layer4 = self._stage(width * 8, v.layers[3], stride=2)
        self.attnpool = AttentionPool2d(v.image_size // 32, width * 32, v.heads, cfg.embed_dim)
        self.init_weights()

    def _stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features ** -0.5
        for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)   # each residual branch starts as identity

    def init_positions(self, kind: str = "random") -> None:
        """Re-initialise the attention pool's position embedding ('random' or 'sincos')."""
        self.attnpool.init_positions(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                  # (B, 3, S, S) -> (B, E)
        x = x.contiguous(memory_format=torch.channels_last)                # the faster layout for convolutions
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))                  # (B, W, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))          # (B, 32W, S/32, S/32)
        return self.attnpool(x)
