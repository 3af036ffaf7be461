"""Training the world generators: a small VQGAN (autoencoder with a codebook), a small StyleGAN2
(generator against a residual discriminator) and a small diffusers UNet (DDPM noise prediction), on
pictures from any training data source (the procedural world by default). A diffusers KL
autoencoder (`autoencoder`) trains the same way; a diffusion run given one (`arch.vae`) denoises in
its latent space and exports a latent pipeline (vae, unet, scheduler).

    clipguide train-generator diffusion --steps 3000 --out runs/gen-diffusion
    clipguide train-generator vqgan --set batch_size=16 --resume --out runs/gen-vqgan
    clipguide train-generator autoencoder --out runs/gen-ae
    clipguide train-generator diffusion --set arch.vae=runs/gen-ae/world-autoencoder --out runs/gen-ldm

Every run logs metrics.jsonl, saves an atomic checkpoint every `save_every` steps (a killed run
resumes where it stopped), and ends with the network exported in the format the generator adapters
load (fp16), a model card and a contact sheet of unguided samples."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..typedconfig import check_fields, override_flags
from ..version import __version__

FAMILIES = ("vqgan", "stylegan", "diffusion")          # the generators guidance steers
TRAINABLE = FAMILIES + ("autoencoder",)                 # and the latent space a diffusion run may use

# the architectures bundled with clipguide (64 px world pictures); `arch` overrides any field
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vqgan": {"embed_dim": 32, "n_embed": 512, "ch": 64, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
              "attn_resolutions": [16], "z_channels": 32},
    "stylegan": {"style_dim": 128, "n_mlp": 4, "channel_max": 128, "channel_multiplier": 1, "d_channels": 64,
                 "feature_d": "", "feature_d_weight": 1.0},
    "diffusion": {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "train_timesteps": 1000,
                  "attention": True, "norm_num_groups": 8, "beta_schedule": "linear", "prediction_type": "epsilon",
                  "ema": 0.0, "vae": "", "condition": "", "cond_drop": 0.1},
    "autoencoder": {"block_out_channels": [32, 64, 128], "layers_per_block": 1, "latent_channels": 4,
                    "norm_num_groups": 16, "kl_weight": 1e-6},
}
# diffusion: the noise schedules and UNet targets training offers (the loader reads all three targets)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DEFAULTS = {"vqgan": {"lr": 4e-4, "batch_size": 32}, "stylegan": {"lr": 2e-3, "batch_size": 32},
            "diffusion": {"lr": 5e-4, "batch_size": 32}, "autoencoder": {"lr": 4e-4, "batch_size": 32}}


@dataclass
class GeneratorTrainConfig:
    family: str = "diffusion"
    data: str = "world:seed=2"                   # any clipguide training data source (captions are unused)
    size: int = 64
    arch: dict[str, Any] = field(default_factory=dict)
    steps: int = 3000
    batch_size: int = 0                          # 0: the family's default
    lr: float = 0.0                              # 0: the family's default
    warmup: int = 100
    seed: int = 0
    out_dir: str = "runs/gen"
    save_every: int = 200
    log_every: int = 10
    sample_every: int = 0                        # 0: a sample sheet only at the end
    threads: int = 0
    precision: str = "fp32"                      # fp32 | bf16 (autocast: ~1.6x faster on CPUs with AMX/AVX512-BF16)
    init: str = ""                               # start from an exported network: a path, or "bundled"
    model_card: str = ""

    def validate(self) -> "GeneratorTrainConfig":
        if self.family not in TRAINABLE:
            raise ConfigError(f"family {self.family!r} is not one of {TRAINABLE}")
        unknown = sorted(set(self.arch) - set(ARCHITECTURES[self.family]))
        if unknown:
            raise ConfigError(f"arch keys {unknown} are not {self.family} settings; they are "
                              f"{sorted(ARCHITECTURES[self.family])}")
        for name in ("steps", "save_every", "log_every", "size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.size & (self.size - 1):
            raise ConfigError(f"size must be a power of two, got {self.size}")
        if self.family == "diffusion":
            a = self.architecture
            if a["beta_schedule"] not in BETA_SCHEDULES:
                raise ConfigError(f"arch.beta_schedule {a['beta_schedule']!r} is not one of {BETA_SCHEDULES}")
            if a["prediction_type"] not in PREDICTION_TYPES:
                raise ConfigError(f"arch.prediction_type {a['prediction_type']!r} is not one of {PREDICTION_TYPES}")
            if isinstance(a["ema"], bool) or not isinstance(a["ema"], (int, float)) or not 0 <= a["ema"] < 1:
                raise ConfigError(f"arch.ema must be in [0, 1) (0: no moving average), got {a['ema']!r}")
            if not isinstance(a["vae"], str):
                raise ConfigError(f"arch.vae is an autoencoder folder (train-generator autoencoder exports one), "
                                  f"a VQGAN ('vqgan' or its file) or empty for a pixel UNet, got {a['vae']!r}")
            if not isinstance(a["condition"], str):
                raise ConfigError(f"arch.condition names the CLIP model whose text embeddings condition the UNet "
                                  f"(e.g. 'default'), or is empty for an unconditional UNet, got {a['condition']!r}")
            drop = a["cond_drop"]
            if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
                raise ConfigError(f"arch.cond_drop (the share of captions dropped, so that the UNet also learns to "
                                  f"draw unconditionally) must be in [0, 1), got {drop!r}")
        if self.family == "autoencoder":
            w = self.architecture["kl_weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"arch.kl_weight must be a number >= 0, got {w!r}")
        if self.family == "stylegan":
            a = self.architecture
            if not isinstance(a["feature_d"], str):
                raise ConfigError(f"arch.feature_d names a CLIP model (e.g. 'default') or is empty, got {a['feature_d']!r}")
            w = a["feature_d_weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"arch.feature_d_weight must be a number >= 0, got {w!r}")
        self.batch_size = self.batch_size or DEFAULTS[self.family]["batch_size"]
        self.lr = self.lr or DEFAULTS[self.family]["lr"]
        return self

    @property
    def architecture(self) -> dict[str, Any]:
        return {**ARCHITECTURES[self.family], **self.arch}

    @classmethod
    def from_args(cls, family: str, overrides: list[str] = (), **fields) -> "GeneratorTrainConfig":
        data: dict[str, Any] = {"family": family, **fields}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set takes key=value, got {item!r}")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            if key.startswith("arch."):
                data.setdefault("arch", {})[key[5:]] = parsed
            else:
                data[key] = parsed
        return cls(**check_fields(cls, data, "generator training config")).validate()


# --------------------------------------------------------------------------------------------- families
class _Family:
    """What differs between families: the networks, one training step, sampling, and the export."""

    nets: dict[str, nn.Module]
    optims: dict[str, torch.optim.Optimizer]
    precision: str = "fp32"
    init_targets: tuple[str, ...] = ()                # the nets an exported network starts (`init`)

    def autocast(self):
        """The context the forward passes of a step run in: bf16 autocast when precision is bf16.
        Losses, codebook distances, backward passes and optimiser steps stay outside it, in fp32."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def state(self) -> dict[str, Any]:
        return {"nets": {k: v.state_dict() for k, v in self.nets.items()},
                "optims": {k: v.state_dict() for k, v in self.optims.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        for k, v in state["nets"].items():
            self.nets[k].load_state_dict(v)
        for k, v in state["optims"].items():
            self.optims[k].load_state_dict(v)

    def start_from(self, network: nn.Module) -> None:
        """Start training from an exported network of this family (`init`): its weights go into
        every net it was exported from (the trained one and its moving average); optimiser states
        and networks that are not exported (a discriminator) start fresh."""
        source = {k: v.float() for k, v in network.state_dict().items()}
        for name in (n for n in self.init_targets if n in self.nets):
            _load_matching(self.nets[name], source, name)

    def calibrate(self, x: torch.Tensor) -> None:
        """Measure what the export records from training pictures x in [-1, 1] (nothing by default)."""

    def prepare(self, x: torch.Tensor, captions: list[str]) -> None:
        """Measure what training needs before its first step from the run's first batch (pictures x in
        [-1, 1] and their captions; nothing by default)."""

    def sheet_note(self) -> str:
        """What the model card says of samples.png."""
        return "Unguided samples: `samples.png`."

    def set_lr(self, lr: float) -> None:
        for opt in self.optims.values():
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)


class _VQGAN(_Family):
    """Autoencoder through a codebook: L1 + L2 reconstruction, codebook and commitment losses
    (VQ-VAE), codes that fall unused are restarted on encoder outputs."""

    init_targets = ("vqgan",)

    def __init__(self, cfg: GeneratorTrainConfig, g: torch.Generator):
        from .vqgan import VQGAN, DDConfig, VQGANConfig

        a = cfg.architecture
        dd = DDConfig(ch=a["ch"], ch_mult=tuple(a["ch_mult"]), num_res_blocks=a["num_res_blocks"],
                      attn_resolutions=tuple(a["attn_resolutions"]), resolution=cfg.size, z_channels=a["z_channels"])
        self.net = VQGAN(VQGANConfig(embed_dim=a["embed_dim"], n_embed=a["n_embed"], ddconfig=dd))
        self.nets = {"vqgan": self.net}
        self.optims = {"vqgan": torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(0.5, 0.9))}
        self.usage = torch.zeros(a["n_embed"])
        self.g = g

    def step(self, x: torch.Tensor, step: int, captions: list[str] | None = None) -> dict[str, float]:
        net, opt = self.net, self.optims["vqgan"]
        with self.autocast():
            z = net.encode(x).float()                                        # (B, D, h, w)
        idx = net.codes(z)
        z_q = net.quantize.lookup(idx)
        codebook = F.mse_loss(z_q, z.detach())
        commit = F.mse_loss(z, z_q.detach())
        with self.autocast():
            rec = net.decode(z + (z_q - z).detach()).float()
        l1, l2 = (rec - x).abs().mean(), F.mse_loss(rec, x)
        loss = l1 + l2 + codebook + 0.25 * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            self.usage.mul_(0.99).add_(torch.bincount(idx.flatten(), minlength=self.usage.numel()).float())
            if step % 50 == 49:
                self._restart_dead(z)
        used = int((self.usage > 0.5).sum())
        return {"loss": loss.item(), "l1": l1.item(), "codebook": codebook.item(), "codes_used": used}

    def _restart_dead(self, z: torch.Tensor) -> None:
        dead = (self.usage < 0.03).nonzero().flatten()
        if dead.numel() == 0:
            return
        feats = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        pick = torch.randint(0, feats.shape[0], (dead.numel(),), generator=self.g)
        self.net.quantize.embedding.weight.data[dead] = feats[pick] + 0.01 * torch.randn(
            dead.numel(), feats.shape[1], generator=self.g)
        self.usage[dead] = 1.0

    @torch.no_grad()
    def samples(self, x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        """Reconstructions of real pictures (first half) and decodings of random codes (second half)."""
        self.net.eval()
        k = n // 2
        rec = self.net(x[:k])
        h = x.shape[-1] // self.net.factor
        codes = torch.randint(0, self.net.config.n_embed, (n - k, h, h), generator=g)
        rand = self.net.decode(self.net.quantize.lookup(codes))
        self.net.train()
        return torch.cat([rec, rand]).clamp(-1, 1)

    def export(self, out: Path, metadata: dict[str, str]) -> Path:
        from .vqgan import save_vqgan

        return save_vqgan(self.net, out / "world-vqgan.safetensors", dtype=torch.float16, metadata=metadata)


class _EqualConv(nn.Module):
    """A convolution with an equalised learning rate (the convolutional counterpart of the
    generator's EqualLinear): weights drawn from N(0, 1) and scaled by 1/sqrt(fan-in) in the forward
    pass, so Adam moves every layer at the same relative pace (with plain weights the discriminator
    runs away at StyleGAN2's lr)."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1.0 / math.sqrt(c_in * k * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class _Discriminator(nn.Module):
    """Residual discriminator with equalised learning rates: halving blocks from the image size
    down to 4 px, minibatch standard deviation, then a linear head."""

    def __init__(self, size: int, ch: int):
        from .stylegan import EqualLinear

        super().__init__()
        self.stem = _EqualConv(3, ch, 1)
        blocks, c = [], ch
        res = size
        while res > 4:
            c2 = min(c * 2, ch * 4)
            blocks.append(nn.ModuleDict({"conv1": _EqualConv(c, c), "conv2": _EqualConv(c, c2),
                                         "skip": _EqualConv(c, c2, 1, bias=False)}))
            c, res = c2, res // 2
        self.blocks = nn.ModuleList(blocks)
        self.final = _EqualConv(c + 1, c)
        self.head = nn.Sequential(nn.Flatten(), EqualLinear(c * 16, c), nn.LeakyReLU(0.2), EqualLinear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.stem(x), 0.2)
        for b in self.blocks:
            y = F.leaky_relu(b["conv1"](h), 0.2)
            y = F.avg_pool2d(F.leaky_relu(b["conv2"](y), 0.2), 2)
            h = (y + F.avg_pool2d(b["skip"](h), 2)) / math.sqrt(2)
        std = h.std(dim=0, unbiased=False).mean().expand(h.shape[0], 1, *h.shape[2:])
        h = F.leaky_relu(self.final(torch.cat([h, std], dim=1)), 0.2)
        return self.head(h).squeeze(1)


class _FeatureDiscriminator(nn.Module):
    """Discriminator heads on the features of a frozen CLIP image tower (as in projected and
    vision-aided GANs): small convolutional heads read three depths of the tower (a ResNet's
    layer1-3, a ViT's patch tokens at a third, two thirds and the end of its blocks) and a linear
    head its embedding; every head gives logits, a patch's or the picture's. The tower is not
    trained and not saved with the heads (the run's config names it)."""

    def __init__(self, model, ch: int = 64):
        from .stylegan import EqualLinear

        super().__init__()
        model.eval().requires_grad_(False)
        self._tower = [model]                              # a list: not a submodule, so not trained nor saved
        visual = model.visual
        if hasattr(visual, "layer3"):
            taps = [visual.layer1, visual.layer2, visual.layer3]
            self._grid = None
        else:
            blocks = visual.transformer.resblocks
            n = len(blocks)
            taps = [blocks[max(0, n // 3 - 1)], blocks[max(0, 2 * n // 3 - 1)], blocks[n - 1]]
            self._grid = visual.image_size // visual.patch_size
        self._maps: list[torch.Tensor] = []
        for t in taps:
            t.register_forward_hook(lambda _m, _i, out: self._maps.append(out))
        with torch.no_grad():
            size = model.config.vision.image_size
            widths = [m.shape[1] for m in self._features(torch.zeros(1, 3, size, size))[0]]
        self.heads = nn.ModuleList(nn.Sequential(_EqualConv(w, ch, 1), nn.LeakyReLU(0.2), _EqualConv(ch, ch, 3),
                                                 nn.LeakyReLU(0.2), _EqualConv(ch, 1, 1)) for w in widths)
        e = model.config.embed_dim
        self.embed_head = nn.Sequential(EqualLinear(e, ch), nn.LeakyReLU(0.2), EqualLinear(ch, 1))

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x in [-1, 1] -> (feature maps (B, C, h, w), embedding (B, E))."""
        model = self._tower[0]
        size = model.config.vision.image_size
        x = (x + 1) / 2
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        self._maps.clear()
        emb = model.visual(model.preprocess.normalize(x))
        maps = list(self._maps)
        self._maps.clear()
        if self._grid is not None:                         # ViT tokens (B, 1 + g*g, D) -> (B, D, g, g)
            maps = [m[:, 1:].transpose(1, 2).reshape(m.shape[0], -1, self._grid, self._grid) for m in maps]
        return maps, emb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> logits (B, N): every head's patches, then the embedding's."""
        maps, emb = self._features(x)
        logits = [head(m.float()).flatten(1) for head, m in zip(self.heads, maps)]
        logits.append(self.embed_head(F.normalize(emb.float(), dim=-1)))
        return torch.cat(logits, dim=1)


class _StyleGAN(_Family):
    """Non-saturating logistic GAN loss, lazy R1 penalty on real pictures, an exponential moving
    average of the generator (what is exported, as `g_ema`), and the average w for truncation.
    With `arch.feature_d` (a CLIP model: "default", a path) a second discriminator reads that
    frozen model's features (`_FeatureDiscriminator`); its loss is added with `feature_d_weight`."""

    R1_EVERY, R1_GAMMA, EMA = 8, 1.0, 0.999
    init_targets = ("gen", "ema")

    def __init__(self, cfg: GeneratorTrainConfig, g: torch.Generator):
        import copy

        from .stylegan import StyleGAN2Config, StyleGAN2Generator

        a = cfg.architecture
        self.config = StyleGAN2Config(size=cfg.size, style_dim=a["style_dim"], n_mlp=a["n_mlp"],
                                      channel_max=a["channel_max"], channel_multiplier=a["channel_multiplier"])
        self.gen = StyleGAN2Generator(self.config, generator=g)
        self.ema = copy.deepcopy(self.gen).requires_grad_(False)
        self.disc = _Discriminator(cfg.size, a["d_channels"])
        self.nets = {"gen": self.gen, "ema": self.ema, "disc": self.disc}
        self.fdisc, self.f_weight = None, float(a["feature_d_weight"])
        d_params = list(self.disc.parameters())
        if a["feature_d"]:
            from ..checkpoints import load

            self.fdisc = _FeatureDiscriminator(load(a["feature_d"]))
            self.nets["fdisc"] = self.fdisc
            d_params += list(self.fdisc.parameters())
        r1_ratio = self.R1_EVERY / (self.R1_EVERY + 1)
        self.optims = {"gen": torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=(0.0, 0.99)),
                       "disc": torch.optim.Adam(d_params, lr=cfg.lr * r1_ratio, betas=(0.0, 0.99 ** r1_ratio))}
        self.optims["disc"].param_groups[0]["lr_scale"] = r1_ratio
        self.g = g

    def _fake(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.config.style_dim, generator=self.g)
        return self.gen(z, noise="random", generator=self.g)

    def _d_loss(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminators' logistic loss on a fake and a real batch; also the feature part alone."""
        with self.autocast():
            d_fake, d_real = self.disc(fake).float(), self.disc(real).float()
        loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        f_loss = torch.zeros(())
        if self.fdisc is not None:
            with self.autocast():
                f_fake, f_real = self.fdisc(fake).float(), self.fdisc(real).float()
            f_loss = F.softplus(f_fake).mean() + F.softplus(-f_real).mean()
        return loss + self.f_weight * f_loss, f_loss

    def step(self, x: torch.Tensor, step: int, captions: list[str] | None = None) -> dict[str, float]:
        n = x.shape[0]
        # discriminator
        self.disc.requires_grad_(True)
        if self.fdisc is not None:
            self.fdisc.requires_grad_(True)
        with torch.no_grad(), self.autocast():
            fake = self._fake(n).float()
        d_loss, f_loss = self._d_loss(fake, x)
        opt = self.optims["disc"]
        opt.zero_grad(set_to_none=True)
        d_loss.backward()
        r1 = torch.zeros(())
        if step % self.R1_EVERY == 0:
            real = x.detach().requires_grad_(True)
            out = self.disc(real).sum()
            if self.fdisc is not None:
                out = out + self.f_weight * self.fdisc(real).mean(1).sum()
            (grad,) = torch.autograd.grad(out, real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            (self.R1_GAMMA / 2 * r1 * self.R1_EVERY).backward()
        opt.step()
        # generator
        self.disc.requires_grad_(False)
        if self.fdisc is not None:
            self.fdisc.requires_grad_(False)
        with self.autocast():
            fake = self._fake(n)
            g_out = self.disc(fake).float()
            g_loss = F.softplus(-g_out).mean()
            if self.fdisc is not None:
                g_loss = g_loss + self.f_weight * F.softplus(-self.fdisc(fake).float()).mean()
        opt = self.optims["gen"]
        opt.zero_grad(set_to_none=True)
        g_loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.gen.parameters()):
                pe.lerp_(p, 1 - self.EMA)
            for be, b in zip(self.ema.buffers(), self.gen.buffers()):
                be.copy_(b)
        metrics = {"loss": g_loss.item(), "d_loss": d_loss.item(), "r1": r1.item()}
        if self.fdisc is not None:
            metrics["f_loss"] = f_loss.item()
        return metrics

    @torch.no_grad()
    def samples(self, x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.config.style_dim, generator=g)
        return self.ema(z).clamp(-1, 1)

    def export(self, out: Path, metadata: dict[str, str]) -> Path:
        from .stylegan import save_stylegan

        with torch.no_grad():
            z = torch.randn(4096, self.config.style_dim, generator=torch.Generator().manual_seed(0))
            self.ema.latent_avg = self.ema.mapping(z).mean(0)
        return save_stylegan(self.ema, out / "world-stylegan.safetensors", dtype=torch.float16, metadata=metadata)


class _Autoencoder(_Family):
    """A diffusers AutoencoderKL (the Stable Diffusion autoencoder's layout) trained to reconstruct
    pictures through a sampled latent: L1 + L2 reconstruction plus `kl_weight` times the KL
    divergence of the latent distribution from N(0, 1) (summed over a picture's latent, averaged
    over the batch). The export records the latents' scaling factor (1 / their standard deviation
    on training pictures), so a diffusion model trained on them sees unit variance."""

    init_targets = ("vae",)

    def __init__(self, cfg: GeneratorTrainConfig, g: torch.Generator):
        from .diffusion import _diffusers

        a = cfg.architecture
        chans = tuple(a["block_out_channels"])
        torch.manual_seed(cfg.seed)                    # diffusers initialises with the global generator
        self.vae = _diffusers().AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(chans),
            up_block_types=("UpDecoderBlock2D",) * len(chans), block_out_channels=chans,
            layers_per_block=a["layers_per_block"], latent_channels=a["latent_channels"],
            norm_num_groups=a["norm_num_groups"], sample_size=cfg.size)
        self.kl_weight = float(a["kl_weight"])
        self.nets = {"vae": self.vae}
        self.optims = {"vae": torch.optim.Adam(self.vae.parameters(), lr=cfg.lr, betas=(0.5, 0.9))}
        self.g = g
        self.scaling = 1.0

    def step(self, x: torch.Tensor, step: int, captions: list[str] | None = None) -> dict[str, float]:
        with self.autocast():
            posterior = self.vae.encode(x).latent_dist
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=self.g)
        with self.autocast():
            rec = self.vae.decode(z).sample.float()
        l1, l2 = (rec - x).abs().mean(), F.mse_loss(rec, x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()
        loss = l1 + l2 + self.kl_weight * kl
        opt = self.optims["vae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "l1": l1.item(), "kl": kl.item()}

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        self.vae.eval()
        std = float(self.vae.encode(x).latent_dist.mean.std())
        self.vae.train()
        self.scaling = 1.0 / max(std, 1e-6)

    @torch.no_grad()
    def samples(self, x: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        """Training pictures (rows 1, 3, ...) above their reconstructions (rows 2, 4, ...)."""
        self.vae.eval()
        k = min(n // 2, x.shape[0])
        rec = self.vae.decode(self.vae.encode(x[:k]).latent_dist.mean).sample
        self.vae.train()
        rows = [t for i in range(0, k, 8) for t in (x[i:i + 8], rec[i:i + 8])]
        return torch.cat(rows).clamp(-1, 1)

    def export(self, out: Path, metadata: dict[str, str]) -> Path:
        """A diffusers AutoencoderKL folder (config.json with the scaling factor, fp16 weights)."""
        import copy

        from ..atomic import atomic_write_text

        root = out / "world-autoencoder"
        vae = copy.deepcopy(self.vae).to(torch.float16)
        vae.register_to_config(scaling_factor=self.scaling)
        vae.save_pretrained(root, safe_serialization=True)
        atomic_write_text(root / "clipguide.json", json.dumps({"clipguide_version": __version__, **metadata}, indent=2))
        return root


def _names_a_vqgan(path: str | Path) -> bool:
    """Whether arch.vae names a VQGAN (`vqgan`, the bundled one, or a checkpoint file) rather than a
    diffusers autoencoder folder."""
    return str(path) == "vqgan" or Path(path).is_file()


def load_autoencoder(path: str | Path) -> nn.Module:
    """A diffusers autoencoder folder (AutoencoderKL or VQModel: config.json and weights), frozen,
    fp32; or a VQGAN (`vqgan` for the bundled one, or a VQGAN checkpoint file) as the equal diffusers
    VQModel, whose latents' scaling factor is still 1 (`_Diffusion` measures it)."""
    from .base import freeze
    from .diffusion import _AUTOENCODERS, _diffusers

    root = Path(path)
    if _names_a_vqgan(path):
        from . import load_network
        from .vqgan import to_diffusers

        return freeze(to_diffusers(load_network("vqgan", None if str(path) == "vqgan" else str(path)).float()))
    config = root / "config.json"
    if not config.is_file():
        raise ConfigError(f"no autoencoder at '{root}': arch.vae is a diffusers autoencoder folder with config.json "
                          "(`clipguide train-generator autoencoder` exports one as RUN/world-autoencoder)")
    kind = json.loads(config.read_text()).get("_class_name")
    if kind not in _AUTOENCODERS:
        raise ConfigError(f"'{root}' holds a {kind}, not an autoencoder ({', '.join(_AUTOENCODERS)})")
    return freeze(getattr(_diffusers(), kind).from_pretrained(root, local_files_only=True).float())


class _Diffusion(_Family):
    """A diffusers UNet2DModel trained with the plain mean squared error on DDPM noisy pictures
    (`train_timesteps` steps, `beta_schedule`), predicting the noise, the clean picture or v
    (`prediction_type`). With `ema` > 0 an exponential moving average of the weights is kept; it
    makes the samples and is what is exported. With `vae` (an autoencoder folder, or a VQGAN) the
    UNet denoises the autoencoder's scaled latents (the means of its latent distributions, as the
    adapter encodes pictures) and the export is a latent pipeline that carries the autoencoder.
    With `condition` (a CLIP model's name or path) the UNet draws captions: their unit text
    embeddings, times sqrt(width), are its class label (class_embed_type 'identity'), a share
    `cond_drop` of them replaced by zeros so that it also draws unconditionally (classifier-free
    guidance); the export's clipguide.json names the model as its text_condition."""

    cfg_scale = 3.0                                    # the exported default, and the samples'
    init_targets = ("unet", "ema")

    def __init__(self, cfg: GeneratorTrainConfig, g: torch.Generator):
        from .diffusion import _diffusers

        d = _diffusers()
        a = cfg.architecture
        chans = tuple(a["block_out_channels"])
        down = ["DownBlock2D"] * len(chans)
        up = ["UpBlock2D"] * len(chans)
        if a["attention"]:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.vae = load_autoencoder(a["vae"]) if a["vae"] else None
        self.measure_scaling = bool(a["vae"]) and _names_a_vqgan(a["vae"])
        side, channels = cfg.size, 3
        if self.vae is not None:
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            if cfg.size % factor:
                raise ConfigError(f"size {cfg.size} is not a multiple of the autoencoder's factor {factor}")
            side, channels = cfg.size // factor, self.vae.config.latent_channels
        self.text, self.text_scale, label = None, 1.0, {}
        if a["condition"]:
            from .. import load as load_clip

            self.text = load_clip(a["condition"]).eval().requires_grad_(False)
            width = self.text.config.embed_dim
            self.text_scale = math.sqrt(width)
            label = {"class_embed_type": "identity", "time_embedding_dim": width}
        self.cond_drop, self.condition = float(a["cond_drop"]), a["condition"]
        self.sample_captions: list[str] = []
        torch.manual_seed(cfg.seed)                    # diffusers initialises with the global generator
        self.unet = d.UNet2DModel(sample_size=side, in_channels=channels, out_channels=channels,
                                  block_out_channels=chans,
                                  layers_per_block=a["layers_per_block"], down_block_types=tuple(down),
                                  up_block_types=tuple(up), norm_num_groups=a["norm_num_groups"], **label)
        # pixels live in [-1, 1]; latents do not, so their predictions are not clipped
        self.scheduler = d.DDPMScheduler(num_train_timesteps=a["train_timesteps"], beta_schedule=a["beta_schedule"],
                                         prediction_type=a["prediction_type"], clip_sample=self.vae is None)
        self.nets = {"unet": self.unet}
        self.ema_decay = float(a["ema"])
        if self.ema_decay:
            import copy

            self.nets["ema"] = copy.deepcopy(self.unet).requires_grad_(False)
        self.optims = {"unet": torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=0.0)}
        self.g = g

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, captions: list[str]) -> None:
        """A VQGAN's latents carry no scaling factor: it is measured (1 / their standard deviation)
        on the run's first batch x, so that the UNet sees unit variance; a resumed run measures the
        same batch again. A text-conditional UNet's sample sheets draw the first batch's captions."""
        self.sample_captions = list(captions)
        if self.measure_scaling:
            std = float(self.vae.encode(x).latents.std())
            self.vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))

    def sheet_note(self) -> str:
        if self.text is None:
            return super().sheet_note()
        return (f"Samples without CLIP guidance: `samples.png`, drawn for the captions of the first training batch "
                f"in turn (classifier-free guidance {self.cfg_scale}, 50 DDIM steps).")

    @property
    def _final(self):                                  # the network that samples and is exported
        return self.nets.get("ema", self.unet)

    def _model(self, unet: nn.Module):
        from .diffusion import DiffusionModel

        return DiffusionModel(unet=unet, scheduler=self.scheduler, vae=self.vae, text_model=self.text,
                              text_scale=self.text_scale, cfg_scale=self.cfg_scale)

    @torch.no_grad()
    def _labels(self, captions: list[str], drop: bool = True) -> torch.Tensor:
        """(B, width) the UNet's class labels for `captions`; with `drop`, each is zeros with
        probability cond_drop."""
        emb = self.text.encode_text(self.text.tokenize(captions, truncate=True), normalize=True).float()
        if drop:
            emb = emb * (torch.rand(len(captions), generator=self.g) >= self.cond_drop)[:, None]
        return emb * self.text_scale

    def step(self, x: torch.Tensor, step: int, captions: list[str] | None = None) -> dict[str, float]:
        n = x.shape[0]
        if self.vae is not None:
            with torch.no_grad(), self.autocast():
                x = self._model(self.unet).encode((x + 1) / 2).float()
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=self.g)
        noise = torch.randn(x.shape, generator=self.g)
        noisy = self.scheduler.add_noise(x, noise, t)
        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": x}.get(kind)
        if target is None:
            target = self.scheduler.get_velocity(x, noise, t)
        if self.text is not None and captions is None:
            raise ConfigError("a text-conditional diffusion run trains on captions: the data source gave none")
        label = {"class_labels": self._labels(captions)} if self.text is not None else {}
        with self.autocast():
            pred = self.unet(noisy, t, **label).sample.float()
        loss = F.mse_loss(pred, target)
        opt = self.optims["unet"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        opt.step()
        if self.ema_decay:
            with torch.no_grad():
                for pe, p in zip(self.nets["ema"].parameters(), self.unet.parameters()):
                    pe.lerp_(p, 1 - self.ema_decay)
        return {"loss": loss.item()}

    @torch.no_grad()
    def samples(self, x: torch.Tensor, n: int, g: torch.Generator, steps: int = 50) -> torch.Tensor:
        from .diffusion import ddim_sample

        net = self._final
        net.eval()
        model = self._model(net)
        side = net.config.sample_size
        noise = torch.randn(n, net.config.in_channels, side, side, generator=g)
        if self.text is not None:                   # the first batch's captions, in turn
            model.label = self._labels([self.sample_captions[i % len(self.sample_captions)] for i in range(n)],
                                       drop=False)
        out = model.decode(ddim_sample(model, noise, steps)) * 2 - 1
        net.train()
        return out

    def export(self, out: Path, metadata: dict[str, str]) -> Path:
        """A diffusers pipeline directory (model_index.json, unet/, scheduler/), weights in fp16."""
        import copy

        from ..atomic import atomic_write_text

        root = out / "world-diffusion"
        root.mkdir(parents=True, exist_ok=True)
        unet = copy.deepcopy(self._final).to(torch.float16)
        unet.save_pretrained(root / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(root / "scheduler")
        # a pixel UNet is diffusers' DDPMPipeline; a latent one keeps Stable Diffusion's component names
        index = {"_class_name": "DDPMPipeline" if self.vae is None else "LatentDiffusionPipeline",
                 "_diffusers_version": _diffusers_version(),
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
        if self.vae is not None:
            copy.deepcopy(self.vae).to(torch.float16).save_pretrained(root / "vae", safe_serialization=True)
            index["vae"] = ["diffusers", type(self.vae).__name__]
        atomic_write_text(root / "model_index.json", json.dumps(index, indent=2))
        if self.text is not None:
            from ..guide.steer import model_hash

            metadata = {**metadata, "text_condition": {
                "model": self.condition, "model_hash": model_hash(self.text), "scale": self.text_scale,
                "cfg_scale": self.cfg_scale}}
        atomic_write_text(root / "clipguide.json", json.dumps({"clipguide_version": __version__, **metadata}, indent=2))
        return root


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


_FAMILIES = {"vqgan": _VQGAN, "stylegan": _StyleGAN, "diffusion": _Diffusion, "autoencoder": _Autoencoder}


# ------------------------------------------------------------------------------------------------ loop
def _lr_at(cfg: GeneratorTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_generator(cfg: GeneratorTrainConfig, progress: bool = True, resume: bool = False,
                    source=None, snapshot: bool = False) -> Path:
    """Train one world generator as `cfg` says; returns the exported network's path. `snapshot`:
    do not train; export the run's latest checkpoint (network, card, unguided samples) into
    `out_dir/snapshot-STEP/`, to try a long run part-way (the run itself is left as it was)."""
    from ..atomic import atomic_torch_save, atomic_write_text
    from ..train.data import BatchStream, open_source

    cfg.validate()
    out = Path(cfg.out_dir)
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False) if ckpt.exists() else None
    if snapshot:                                 # the run's own settings, whatever else was asked
        if state is None:
            raise ConfigError(f"{out} holds no checkpoint to take a snapshot of: train first")
        cfg = GeneratorTrainConfig(**_saved_config(state, cfg.out_dir)).validate()
    elif state is not None and not resume:
        raise ConfigError(f"{out} already holds a checkpoint: pass --resume to continue that run, or choose "
                          "another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    family = _FAMILIES[cfg.family](cfg, g)
    family.precision = cfg.precision
    stream = BatchStream(source if source is not None else open_source(cfg.data), cfg.batch_size, cfg.size, cfg.seed)
    start, seconds = 0, 0.0
    first, first_captions = stream.batch(0)
    family.prepare(first.float() / 127.5 - 1.0, first_captions)
    if state is None and cfg.init:
        family.start_from(_init_network(cfg))
    if state is not None:
        if _saved_config(state, cfg.out_dir) != asdict(cfg):
            raise ConfigError(f"{ckpt} was written with another configuration; resume with the same settings")
        family.load_state(state["family"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        start, seconds = state["step"], state["seconds"]
    if snapshot:
        return _export(cfg, family, stream, out, out / f"snapshot-{start:06d}", seconds, start)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.family}", unit="step", dynamic_ncols=True)
    log = open(out / "metrics.jsonl", "a")
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        images, captions = stream.batch(step)
        x = images.float() / 127.5 - 1.0                                  # [-1, 1]
        family.set_lr(_lr_at(cfg, step))
        metrics = family.step(x, step, captions)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            record = {"step": step, **{k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()},
                      "lr": _lr_at(cfg, step), "train_seconds": round(seconds + time.perf_counter() - t0, 1)}
            log.write(json.dumps(record) + "\n")
            log.flush()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            state = {"family": family.state(), "step": step + 1, "config": asdict(cfg), "generator": g.get_state(),
                     "rng": torch.get_rng_state(), "seconds": seconds + time.perf_counter() - t0}
            atomic_torch_save(state, ckpt)
        if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
            _sheet(family, x, out / f"samples-{step + 1:06d}.png")
    log.close()
    if bar is not None:
        bar.close()
    return _export(cfg, family, stream, out, out, seconds + time.perf_counter() - t0, cfg.steps)


def _init_network(cfg: GeneratorTrainConfig) -> nn.Module:
    """The network `cfg.init` names, loaded as its family's adapter loads it."""
    from . import load_network

    if cfg.family == "autoencoder":
        if cfg.init == "bundled":
            raise ConfigError("no autoencoder is bundled: init= takes an autoencoder folder")
        return load_autoencoder(cfg.init)
    network = load_network(cfg.family, None if cfg.init == "bundled" else cfg.init)
    if cfg.family == "diffusion":
        sched = network.scheduler.config
        for key in ("prediction_type", "beta_schedule", "num_train_timesteps"):
            mine = cfg.architecture["train_timesteps" if key == "num_train_timesteps" else key]
            if sched.get(key) != mine:
                raise ConfigError(f"init network was trained with {key}={sched.get(key)!r}, this run has "
                                  f"{mine!r}: set arch.{'train_timesteps' if key == 'num_train_timesteps' else key} "
                                  "to match")
        if (network.vae is not None) != bool(cfg.architecture["vae"]):
            raise ConfigError("init network is a latent pipeline (it has a VAE) and this run trains a pixel UNet"
                              if network.vae is not None else
                              "init network is a pixel UNet and this run trains in an autoencoder's latent space")
        return network.unet
    return network


def _saved_config(state: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """A checkpoint's settings: fields added since it was written take their defaults, and the run
    folder is where it is now (a moved run still resumes)."""
    saved = state["config"]
    return {**asdict(GeneratorTrainConfig(family=saved["family"])), **saved, "out_dir": out_dir}


def _export(cfg: GeneratorTrainConfig, family: _Family, stream, run: Path, dest: Path, seconds: float,
            step: int) -> Path:
    """The network (fp16, in its adapter's format), a sheet of unguided samples and the model card,
    into `dest` (the run folder, or a snapshot folder inside it)."""
    dest.mkdir(parents=True, exist_ok=True)
    meta = {"family": cfg.family, "steps": str(step), "train_minutes": f"{seconds / 60:.1f}",
            "training": json.dumps(asdict(cfg), sort_keys=True), "command": command_line(cfg)}
    images, _ = stream.batch(0)
    x = images.float() / 127.5 - 1.0
    family.calibrate(x)
    path = family.export(dest, meta)
    _sheet(family, x, dest / "samples.png")
    _card(cfg, family, run, path, seconds, dest, step)
    return path


def _sheet(family: _Family, x: torch.Tensor, path: Path, n: int = 32) -> None:
    import torchvision.utils as vutils

    pics = (family.samples(x, n, torch.Generator().manual_seed(1234)) + 1) / 2
    grid = vutils.make_grid(F.interpolate(pics, scale_factor=2, mode="nearest"), nrow=8, padding=2)
    from ..preprocess import save_image

    save_image(grid, path)


EXPORTED = {"vqgan": "vqgan", "stylegan": "ema", "diffusion": "unet", "autoencoder": "vae"}   # what each ships


def _load_matching(net: nn.Module, source: dict[str, torch.Tensor], name: str) -> None:
    """Copy `source` into `net` when it has exactly net's tensors and shapes; else say which differ."""
    own = net.state_dict()
    missing = sorted(set(own) - set(source))
    extra = sorted(set(source) - set(own))
    shapes = sorted(k for k in set(own) & set(source) if own[k].shape != source[k].shape)
    if missing or extra or shapes:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", extra), ("other shapes", shapes))
                           if keys)
        raise ConfigError(f"init network does not match this run's {name} architecture ({detail}); train with "
                          "the arch settings and size it was trained with (its model card lists them)")
    net.load_state_dict({k: source[k] for k in own})


def command_line(cfg: GeneratorTrainConfig) -> str:
    """The `clipguide train-generator` command that reproduces `cfg`."""
    flags = override_flags(cfg, skip=("family", "out_dir", "model_card"))
    return " ".join([f"clipguide train-generator {cfg.family} --out {cfg.out_dir}", *flags])


def _card(cfg: GeneratorTrainConfig, family: _Family, out: Path, path: Path, seconds: float, dest: Path,
          step: int) -> None:
    from ..atomic import atomic_write_text

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", 0) < step]
    last = rows[-1] if rows else {}
    done = "" if step == cfg.steps else f" (a snapshot after {step} of them)"
    params = sum(p.numel() for p in family.nets[EXPORTED[cfg.family]].parameters())
    text = f"""# world {cfg.family}

A {cfg.family} generator trained by clipguide {__version__} on {cfg.size} px pictures of `{cfg.data}`.

- command: `{command_line(cfg)}`
- architecture: {json.dumps(cfg.architecture, sort_keys=True)} ({params:,} parameters)
- steps: {cfg.steps} x batch {cfg.batch_size}{done}; lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 10%); seed {cfg.seed}
- training time: {seconds / 60:.1f} min on {torch.get_num_threads()} CPU threads ({cfg.precision})
- last logged metrics: `{json.dumps({k: v for k, v in last.items() if k != 'step'})}`
- exported: `{path.name}` (fp16)

{family.sheet_note()}
{cfg.model_card}
"""
    atomic_write_text(dest / "MODEL_CARD.md", text)
