"""A text prior: where a generator's latent should start for a prompt, read off the guide's text
embedding, so that guidance refines a picture that already has the prompt's layout instead of
searching from noise.

    prior = load_prior("bundled-vqgan")                       # or a path written by train_prior
    gen = build_generator("vqgan", seed=0)
    gen.set_start(prior_latent(prior, guide, ["a red star at the top left"]))
    result = gen.run(CLIPLoss(guide, "a red star at the top left"))

A prior is a small convolutional decoder from a CLIP embedding (B, D) to a latent grid (B, C, g, g),
trained by regression on pairs (text embedding of a caption, latent the generator starts from for
the captioned image: a VQGAN's encoding). It is tied to one guide (its text tower) and one generator
network (its latent space); loading checks both where it can. Captions rarely fix every detail, so
the prior draws the mean of the pictures a caption fits: soft, but in the right colours and
places, which is what guidance needs to start from.

`clipguide train-prior --generator vqgan --model default --out runs/prior-vqgan` trains one
(`train_prior`): resumable, exported in fp16 with a model card.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, InputError, WeightsNotFoundError
from ..typedconfig import check_fields, override_flags, parse_override, read_json
from ..version import __version__

FORMAT_TAG = "clipguide-prior"
# the bundled priors, by the family they draw for: files under clipguide/assets, loaded by the name
# 'bundled-FAMILY' (they read the bundled 'default' guide and draw in the bundled network's latent)
BUNDLED_PRIORS = {"vqgan": "world-vqgan-prior.safetensors"}


@dataclass(frozen=True)
class PriorConfig:
    """embed_dim: the guide's embedding width. channels, grid: the latent's (C, g, g); g = 4 * 2**k.
    width: channels of the decoder. family: the generator family of the latent. guide: the CLIP model
    whose text tower it reads (a name or path, recorded); guide_hash: that model's weights, checked
    against the guide a prior is used with."""

    embed_dim: int
    channels: int
    grid: int
    width: int = 96
    family: str = "vqgan"
    guide: str = ""
    guide_hash: str = ""          # the guide's weights (steer.model_hash); another guide is refused

    def validate(self) -> "PriorConfig":
        for name in ("embed_dim", "channels", "grid", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"prior {name} must be a positive integer, got {v!r}")
        if self.grid < 4 or self.grid & (self.grid - 1):
            raise ConfigError(f"prior grid must be 4, 8, 16, 32, ... (a power of two from 4), got {self.grid}")
        if self.width % 8:
            raise ConfigError(f"prior width must be a multiple of 8 (group norm), got {self.width}")
        return self

    @classmethod
    def from_json(cls, text: str, where: str = "prior config") -> "PriorConfig":
        data = read_json(text, where)
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} must be a JSON object, got {type(data).__name__}")
        return cls(**check_fields(cls, data, where)).validate()


class _Block(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, C, h, w)
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class LatentPrior(nn.Module):
    """Embedding (B, D) -> latent (B, C, g, g): a 4 x 4 map from two linear layers, then a residual
    block per level and nearest upsampling with a learnt position map to g x g. The output is in the
    generator's units (the training latents' per-channel mean and std are buffers)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config.validate()
        self.fc = nn.Sequential(nn.Linear(c.embed_dim, 512), nn.SiLU(), nn.Linear(512, c.width * 16))
        levels = int(math.log2(c.grid // 4))
        self.blocks = nn.ModuleList([_Block(c.width) for _ in range(levels + 1)])
        self.positions = nn.ParameterList([nn.Parameter(torch.zeros(1, c.width, 8 << k, 8 << k))
                                           for k in range(levels)])
        self.head = nn.Sequential(_Block(c.width), nn.GroupNorm(8, c.width), nn.SiLU(),
                                  nn.Conv2d(c.width, c.channels, 3, padding=1))
        self.register_buffer("mean", torch.zeros(1, c.channels, 1, 1))
        self.register_buffer("std", torch.ones(1, c.channels, 1, 1))
        self.source = "in memory"                                        # load_prior sets the file or name

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:       # (B, D) -> (B, C, g, g)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise InputError(f"the prior reads ({self.config.embed_dim},) embeddings, got {tuple(embeddings.shape)}")
        h = self.fc(embeddings).view(-1, self.config.width, 4, 4)
        h = self.blocks[0](h)
        for block, pos in zip(self.blocks[1:], self.positions):
            h = block(F.interpolate(h, scale_factor=2, mode="nearest") + pos)
        return self.head(h) * self.std + self.mean


def prompt_embedding(model, prompts: Sequence[str]) -> torch.Tensor:
    """(B, D) unit text embeddings of `prompts` by `model`; a weighted prompt ("a | b:0.5 | c:-1")
    is the unit sum of its positive parts' embeddings by weight (negative parts only steer)."""
    from ..guide.prompts import parse_prompts

    out = []
    with torch.no_grad():
        for prompt in prompts:
            parts = [p for p in parse_prompts(prompt) if p.text is not None and p.weight > 0]
            if not parts:
                raise InputError(f"prompt {prompt!r} has no positive text part for the prior to draw")
            e = model.encode_text(model.tokenize([p.text for p in parts], truncate=True), normalize=True)
            w = torch.tensor([p.weight for p in parts], dtype=e.dtype, device=e.device)
            out.append(F.normalize((w[:, None] * e).sum(0), dim=-1))
    return torch.stack(out)


def prior_latent(prior: LatentPrior, model, prompts: Sequence[str]) -> torch.Tensor:
    """The latents (B, C, g, g) `prior` predicts for `prompts` read by the guide `model`."""
    from ..guide.steer import model_hash

    c = prior.config
    if model.config.embed_dim != c.embed_dim or (c.guide_hash and model_hash(model) != c.guide_hash):
        raise InputError(f"this prior reads the text embeddings of the guide '{c.guide or 'unknown'}' (weights "
                         f"{c.guide_hash or 'unrecorded'}, {c.embed_dim} wide); the guide given is another model: use "
                         "the guide it was trained with, or train a prior for this one (clipguide train-prior)")
    e = prompt_embedding(model, prompts)
    with torch.no_grad():
        return prior.to(e.device)(e.to(next(prior.parameters()).dtype))


def check_prior_for(prior: LatentPrior, family: str, latent: torch.Tensor) -> None:
    """InputError unless `prior` predicts latents of `family` shaped like `latent` (1|B, C, g, g)."""
    c = prior.config
    if family != c.family:
        raise InputError(f"this prior predicts {c.family} latents; the generator is {family}")
    if tuple(latent.shape[1:]) != (c.channels, c.grid, c.grid):
        raise InputError(f"this prior predicts latents of shape {(c.channels, c.grid, c.grid)}; the generator's "
                         f"latent is {tuple(latent.shape[1:])} (another network or picture size)")


def save_prior(prior: LatentPrior, path: str | Path, *, dtype: torch.dtype | None = torch.float16,
               metadata: dict[str, str] | None = None) -> Path:
    """Write `prior` as a safetensors file (atomically) with its config and the library version."""
    from ..formats.writer import write_safetensors

    return write_safetensors(path, prior.state_dict(), format_tag=FORMAT_TAG,
                             config_json=json.dumps(asdict(prior.config)), dtype=dtype, metadata=metadata)


def load_prior(source: "str | Path | LatentPrior") -> LatentPrior:
    """A prior from a file written by save_prior, or a bundled one by name ('bundled-vqgan';
    'bundled' alone is the bundled VQGAN prior); a LatentPrior is returned as it is. Weights are
    returned in fp32, eval mode."""
    from safetensors import safe_open

    from . import ASSETS

    if isinstance(source, LatentPrior):
        return source
    name = str(source)
    bundled = {f"bundled-{family}": file for family, file in BUNDLED_PRIORS.items()}
    if name == "bundled":
        name = "bundled-vqgan"
    if name in bundled:
        path = ASSETS / bundled[name]
        if not path.exists():
            raise WeightsNotFoundError(f"no bundled prior {name!r} in this installation ({path.name})")
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"prior {name!r} not found: give a file written by clipguide train-prior "
                                       f"or one of {sorted(bundled)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:                                    # not a safetensors file at all
        raise CheckpointError(f"'{path}' is not a safetensors file ({exc})") from None
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"'{path}' is not a prior (its format is {meta.get('format') or 'not recorded'}); "
                              "a prior is written by clipguide train-prior")
    prior = LatentPrior(PriorConfig.from_json(meta.get("config", ""), where=f"'{path}' config"))
    expected = prior.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"'{path}' does not hold the tensors its config describes; write it again with "
                              "save_prior")
    prior.load_state_dict({k: v.float() for k, v in tensors.items()})
    prior.source = name if name in bundled else str(path)          # what a picture's provenance names
    return prior.eval()


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
@dataclass
class PriorTrainConfig:
    family: str = "vqgan"
    generator_model: str = ""                    # the generator's network ('' : the bundled one)
    guide: str = "default"                       # the CLIP whose text tower the prior reads
    data: str = "world:seed=11"                  # any clipguide data source of image-caption pairs
    pairs: int = 24000                           # image-caption pairs encoded once, then trained on
    size: int = 64
    width: int = 96
    steps: int = 1200
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    seed: int = 0
    out_dir: str = "runs/prior"
    save_every: int = 200
    log_every: int = 50
    threads: int = 0

    def validate(self) -> "PriorTrainConfig":
        from . import GENERATORS

        if self.family not in GENERATORS:
            raise ConfigError(f"family {self.family!r} is not one of {sorted(GENERATORS)}")
        for name in ("pairs", "size", "width", "steps", "batch_size", "save_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"prior training: {name} must be a positive integer, got {v!r}")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError("prior training: warmup and threads must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"prior training: lr must be > 0, got {self.lr!r}")
        return self

    @classmethod
    def from_args(cls, overrides: Sequence[str] = (), **fields) -> "PriorTrainConfig":
        data: dict[str, Any] = dict(fields)
        data.update(parse_override(item) for item in overrides)
        return cls(**check_fields(cls, data, "prior training config")).validate()


def encode_pairs(cfg: PriorTrainConfig, network, guide, progress: bool = True, chunk: int = 250
                 ) -> dict[str, torch.Tensor]:
    """The training pairs: for `cfg.pairs` samples of the data source, the latent the generator starts
    from for the image (build_generator(..., init=image).start) and the guide's text embedding of
    the caption. Latents are kept in fp16."""
    from ..train.data import BatchStream, open_source
    from . import build_generator

    stream = BatchStream(open_source(cfg.data), chunk, cfg.size, cfg.seed)
    latents, embeddings = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.pairs, desc="encoding pairs", unit="pair", dynamic_ncols=True)
    step = done = 0
    while done < cfg.pairs:
        images, captions = stream.batch(step)
        step += 1
        images = images.float() / 255 if images.dtype == torch.uint8 else images
        keep = min(len(images), cfg.pairs - done)
        done += keep
        images, captions = images[:keep], list(captions[:keep])
        with torch.no_grad():
            gen = build_generator(cfg.family, network=network, init=images, batch=len(images), size=cfg.size)
            latents.append(gen.start.detach().half().cpu())
            embeddings.append(guide.encode_text(guide.tokenize(captions, truncate=True), normalize=True).half())
        if bar is not None:
            bar.update(keep)
    if bar is not None:
        bar.close()
    return {"latents": torch.cat(latents), "embeddings": torch.cat(embeddings)}


def train_prior(cfg: PriorTrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a prior as `cfg` says; returns the exported file's path. The encoded pairs
    (OUT/pairs.pt) and a checkpoint every `save_every` steps (OUT/checkpoint.pt) are written
    atomically, so a killed run resumes where it stopped (`resume=True`)."""
    from .. import load
    from ..atomic import atomic_torch_save, atomic_write_text
    from ..guide.steer import model_hash
    from . import load_network

    cfg.validate()
    out = Path(cfg.out_dir)
    ckpt_path, pairs_path = out / "checkpoint.pt", out / "pairs.pt"
    if ckpt_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a prior run: pass --resume to continue it, or choose another out_dir")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
    guide = load(cfg.guide).eval()
    network = load_network(cfg.family, cfg.generator_model or None)
    made_from = {k: getattr(cfg, k) for k in ("family", "generator_model", "guide", "data", "pairs", "size", "seed")}
    if pairs_path.exists():
        pairs = torch.load(pairs_path)
        if pairs.get("made_from") != made_from:
            raise ConfigError(f"{pairs_path} was encoded with other settings ({pairs.get('made_from')}); use another "
                              "out_dir, or delete it to encode again")
    else:
        pairs = {**encode_pairs(cfg, network, guide, progress), "made_from": made_from}
        atomic_torch_save(pairs, pairs_path)
    z, emb = pairs["latents"].float(), pairs["embeddings"].float()
    hold = min(500, len(z) // 10)                        # the last pairs are held out for the val loss
    n_train = len(z) - hold
    if n_train < 1:
        raise ConfigError(f"prior training needs more than {hold} pairs, got {len(z)}")
    config = PriorConfig(embed_dim=emb.shape[1], channels=z.shape[1], grid=z.shape[2], width=cfg.width,
                         family=cfg.family, guide=cfg.guide, guide_hash=model_hash(guide))
    torch.manual_seed(cfg.seed)
    prior = LatentPrior(config)
    prior.mean.copy_(z[:n_train].mean(dim=(0, 2, 3), keepdim=True))
    prior.std.copy_(z[:n_train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, weight_decay=0.01)
    start = 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path)
        prior.load_state_dict(state["prior"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]

    def lr_at(step: int) -> float:                        # warm-up, then cosine to 10%
        warm = min(1.0, (step + 1) / max(1, cfg.warmup))
        return cfg.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return (x - prior.mean) / prior.std

    rng = torch.Generator().manual_seed(cfg.seed + start)
    log = (out / "metrics.jsonl").open("a" if start else "w")          # a fresh run starts a fresh log
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="training prior", unit="step", dynamic_ncols=True)
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        i = torch.randint(0, n_train, (cfg.batch_size,), generator=rng)
        loss = F.mse_loss(scaled(prior(emb[i])), scaled(z[i]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            with torch.no_grad():
                val = F.mse_loss(scaled(prior(emb[n_train:])), scaled(z[n_train:])).item()
            row = {"step": done, "loss": round(loss.item(), 5), "val_loss": round(val, 5), "lr": lr_at(step),
                   "seconds": round(time.time() - t0, 1)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if bar is not None:
                bar.set_postfix(loss=row["loss"], val=row["val_loss"])
        if done % cfg.save_every == 0 or done == cfg.steps:
            atomic_torch_save({"prior": prior.state_dict(), "optimizer": opt.state_dict(), "step": done}, ckpt_path)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log.close()
    path = save_prior(prior.eval(), out / f"world-{cfg.family}-prior.safetensors",
                      metadata={"steps": cfg.steps, "pairs": len(z), "data": cfg.data})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    atomic_write_text(out / "MODEL_CARD.md", _card(cfg, config, prior, rows))
    return path


def command_of(cfg: PriorTrainConfig) -> str:
    """The `clipguide train-prior` command line that trains `cfg`."""
    parts = ["clipguide train-prior", f"--generator {cfg.family}", f"--model {cfg.guide}", f"--out {cfg.out_dir}"]
    if cfg.generator_model:
        parts.append(f"--generator-model {cfg.generator_model}")
    return " ".join(parts + override_flags(cfg, skip=("family", "guide", "out_dir", "generator_model")))


def _card(cfg: PriorTrainConfig, config: PriorConfig, prior: LatentPrior, rows: list[dict]) -> str:
    n = sum(p.numel() for p in prior.parameters())
    last = rows[-1] if rows else {}
    return f"""# {cfg.family} text prior

A prior from the `{cfg.guide}` guide's text embeddings to the {cfg.family} latent
({config.channels} x {config.grid} x {config.grid}), trained by clipguide {__version__} on {cfg.pairs} image-caption
pairs of `{cfg.data}`.

- command: `{command_of(cfg)}`
- architecture: {json.dumps(asdict(config))} ({n:,} parameters)
- steps: {cfg.steps} x batch {cfg.batch_size}; lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 10%); seed {cfg.seed}
- last logged metrics: `{json.dumps(last)}` (losses: MSE of the standardised latent; val on the last
  held-out pairs)
"""


__all__ = ["PriorConfig", "LatentPrior", "PriorTrainConfig", "prompt_embedding", "prior_latent", "check_prior_for",
           "save_prior", "load_prior", "train_prior", "encode_pairs", "command_of", "BUNDLED_PRIORS", "FORMAT_TAG"]
