"""Building blocks shared by the towers: fp32 layer norm, activations, attention, the Transformer.

Parameter names follow the layout of the released CLIP checkpoints (`attn.in_proj_weight`,
`mlp.c_fc`, `ln_1` ...), so those state dicts load without renaming."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


# oneDNN's fp32 matrix multiply is about twice as fast as the BLAS one on CPUs where the BLAS library
# does not take its AVX-512 path; use it for fp32 CPU inference and for gradients to the input when
# the weights are frozen (guidance). Training (weights need gradients) keeps F.linear.
_DNNL_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _dnnl_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_DNNL_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not (weight.requires_grad and torch.is_grad_enabled()))


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T + b with oneDNN, differentiable with respect to x only (W and b frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return _DNNL_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        if torch.is_grad_enabled():            # create_graph (a gradient penalty): differentiable ops
            return grad @ weight, None, None
        return _DNNL_LINEAR(grad.contiguous(), weight.t().contiguous(), None, "none", [], ""), None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, on the fastest kernel available for the case."""
    if _dnnl_ok(x, weight):
        if x.requires_grad and torch.is_grad_enabled():
            return _FrozenLinear.apply(x, weight, bias)
        return _DNNL_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear through :func:`linear` (same parameters and state dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """Layer norm computed in fp32 whatever the input dtype (stable under bf16/fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of the originally released CLIP models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class MultiheadAttention(nn.Module):
    """Self-attention with a fused input projection, on batch-first tensors."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, D = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)            # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                               # (B, H, N, Dh)
        return self.out_proj(attention(q, k, v, causal).transpose(1, 2).reshape(B, N, D))


MATH_ATTENTION_MAX_TOKENS = 256


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, N, Dh), in q's dtype.

    On the CPU the softmax runs in fp32 under low precision. When gradients will flow back through
    it on the CPU with short sequences (training, guidance), the attention is written out as two
    matrix products: PyTorch's fused CPU kernel takes about six times its forward time backwards,
    which made it 40% of a training step of the world-vit model."""
    cpu = q.device.type == "cpu"
    n = k.shape[-2]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if cpu and needs_grad and n <= MATH_ATTENTION_MAX_TOKENS:
        qf, kf, vf = q.float(), k.float(), v.float()
        scores = (qf * qf.shape[-1] ** -0.5) @ kf.transpose(-2, -1)          # (B, H, N, N)
        if causal:
            mask = torch.ones(q.shape[-2], n, dtype=torch.bool, device=q.device).triu_(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return (scores.softmax(dim=-1) @ vf).to(q.dtype)
    if q.dtype != torch.float32 and cpu:
        # softmax in fp32 on CPU low precision: the math is cheap next to the projections
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, eps: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", Linear(width, hidden)),
            ("gelu", ACTIVATION_LAYERS[activation]()),
            ("c_proj", Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str, eps: float):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, activation, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
        return x

    def init_weights(self) -> None:
        """The initialisation CLIP was trained from: scaled normals, deeper layers smaller."""
        proj_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes, (1 + grid * grid, width), the class token's row zero:
    a quarter of the channels each hold sin(x f), cos(x f), sin(y f), cos(y f) over geometric
    frequencies, so where a patch sits is linearly readable from the start of training."""
    if width % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {width}")
    n = width // 4
    freq = 1.0 / (100.0 ** (torch.arange(n, dtype=torch.float64) / max(1, n)))     # (n,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    ax, ay = xs.reshape(-1, 1) * freq, ys.reshape(-1, 1) * freq                    # (g*g, n)
    codes = torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)              # (g*g, width)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), codes]).float()


@torch.no_grad()
def init_positions(embedding: torch.Tensor, grid: int, kind: str = "random") -> None:
    """Re-initialise a (1 + grid * grid, width) position embedding in place: 'random' (CLIP's
    scaled normal) or 'sincos' (2-D sine-cosine codes, still trained; they help a small model
    learn where things are)."""
    width = embedding.shape[1]
    if kind == "sincos":
        embedding.copy_(sincos_positions(grid, width))
    elif kind == "random":
        embedding.normal_(0.0, width ** -0.5)
    else:
        raise ValueError(f"position init must be 'random' or 'sincos', got {kind!r}")
