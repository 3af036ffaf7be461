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
from ..typedconfig import check_fields, check_positive_ints, override_flags, parse_override, read_json
from ..version import __version__

FORMAT_TAG = "clipguide-prior"
# the bundled priors by name ('bundled-FAMILY' for the mean kind, 'bundled-FAMILY-KIND' for others):
# files under clipguide/assets that read the bundled 'default' guide and draw in the bundled network's
# latent. DEFAULT_PRIORS: the one a family's 'bundled' prior means (the app's and --prior bundled).
BUNDLED_PRIORS = {"bundled-vqgan": "world-vqgan-prior.safetensors"}
DEFAULT_PRIORS = {"vqgan": "bundled-vqgan"}


def bundled_prior_name(family: str, kind: str) -> str:
    """The name a bundled prior of `family` and `kind` loads by."""
    return f"bundled-{family}" if kind == "mean" else f"bundled-{family}-{kind}"


def prior_file(family: str, kind: str) -> str:
    """The file train_prior exports a prior of `family` and `kind` to (and its bundled asset's name)."""
    return f"world-{family}-prior.safetensors" if kind == "mean" else f"world-{family}-{kind}-prior.safetensors"


PRIOR_KINDS = ("mean", "tokens")


@dataclass(frozen=True)
class PriorConfig:
    """embed_dim: the guide's embedding width. channels, grid: the latent's (C, g, g). kind: 'mean'
    (a convolutional decoder that draws the mean latent of a caption; g = 4 * 2**k) or 'tokens' (a
    masked-token transformer over a VQGAN's code grid that samples one; needs `codes`, the codebook
    size). width: channels of either network; depth, heads: the transformer's blocks and attention
    heads. sample_steps, temperature, cfg_scale, choice_noise: how a token prior samples (decoding
    rounds, softmax temperature, classifier-free guidance scale, the Gumbel noise on which drawn codes
    a round keeps, annealed to 0). family: the generator family of the latent. guide:
    the CLIP model whose text tower it reads (a name or path, recorded); guide_hash: that model's
    weights, checked against the guide a prior is used with."""

    embed_dim: int
    channels: int
    grid: int
    width: int = 96
    family: str = "vqgan"
    guide: str = ""
    guide_hash: str = ""          # the guide's weights (steer.model_hash); another guide is refused
    kind: str = "mean"
    codes: int = 0
    depth: int = 6
    heads: int = 6
    sample_steps: int = 12
    temperature: float = 1.0
    cfg_scale: float = 2.0
    choice_noise: float = 4.5

    def validate(self) -> "PriorConfig":
        if self.kind not in PRIOR_KINDS:
            raise ConfigError(f"prior kind must be one of {PRIOR_KINDS}, got {self.kind!r}")
        check_positive_ints(self, ("embed_dim", "channels", "grid", "width", "depth", "heads", "sample_steps"),
                            "prior ")
        if not self.temperature > 0 or not self.cfg_scale >= 0 or not self.choice_noise >= 0:
            raise ConfigError(f"prior temperature must be > 0, cfg_scale and choice_noise >= 0, got "
                              f"{self.temperature!r}, {self.cfg_scale!r} and {self.choice_noise!r}")
        if self.kind == "mean":
            if self.grid < 4 or self.grid & (self.grid - 1):
                raise ConfigError(f"prior grid must be 4, 8, 16, 32, ... (a power of two from 4), got {self.grid}")
            if self.width % 8:
                raise ConfigError(f"prior width must be a multiple of 8 (group norm), got {self.width}")
        else:
            if self.family != "vqgan":
                raise ConfigError(f"a token prior samples a VQGAN's codes; family {self.family!r} has none")
            if isinstance(self.codes, bool) or not isinstance(self.codes, int) or self.codes < 2:
                raise ConfigError(f"a token prior needs the codebook size (codes >= 2), got {self.codes!r}")
            if self.width % self.heads:
                raise ConfigError(f"prior width {self.width} must be a multiple of heads {self.heads}")
        return self

    @classmethod
    def from_json(cls, text: str, where: str = "prior config") -> "PriorConfig":
        data = read_json(text, where)
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} must be a JSON object, got {type(data).__name__}")
        return cls(**check_fields(cls, data, where)).validate()


class Prior(nn.Module):
    """What both kinds share: a config, the file or name it was loaded from (`source`), and
    latents(embeddings, generator) -> (B, C, g, g) in the generator's units. `draws` is True when
    repeated calls give different latents (a sampler), so a search can choose among them."""

    draws = False

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config.validate()
        self.source = "in memory"                                        # load_prior sets the file or name

    def check_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise InputError(f"the prior reads ({self.config.embed_dim},) embeddings, got {tuple(embeddings.shape)}")

    def latents(self, embeddings: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def redraw(self, latents: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None = None,
               region: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """An edit: `latents` (B, C, g, g) with part of them drawn again for the `target` embeddings."""
        raise InputError(f"a {self.config.kind} prior cannot redraw part of a picture; a token prior can "
                         "(train-prior --set kind=tokens)")


class _Block(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions."""

    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, C, h, w)
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class LatentPrior(Prior):
    """kind 'mean'. Embedding (B, D) -> latent (B, C, g, g): a 4 x 4 map from two linear layers, then
    a residual block per level and nearest upsampling with a learnt position map to g x g. The output
    is in the generator's units (the training latents' per-channel mean and std are buffers)."""

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        c = self.config
        if c.kind != "mean":
            raise ConfigError(f"LatentPrior is the 'mean' kind; this config is {c.kind!r} (build_prior picks the class)")
        self.fc = nn.Sequential(nn.Linear(c.embed_dim, 512), nn.SiLU(), nn.Linear(512, c.width * 16))
        levels = int(math.log2(c.grid // 4))
        self.blocks = nn.ModuleList([_Block(c.width) for _ in range(levels + 1)])
        self.positions = nn.ParameterList([nn.Parameter(torch.zeros(1, c.width, 8 << k, 8 << k))
                                           for k in range(levels)])
        self.head = nn.Sequential(_Block(c.width), nn.GroupNorm(8, c.width), nn.SiLU(),
                                  nn.Conv2d(c.width, c.channels, 3, padding=1))
        self.register_buffer("mean", torch.zeros(1, c.channels, 1, 1))
        self.register_buffer("std", torch.ones(1, c.channels, 1, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:       # (B, D) -> (B, C, g, g)
        self.check_embeddings(embeddings)
        h = self.fc(embeddings).view(-1, self.config.width, 4, 4)
        h = self.blocks[0](h)
        for block, pos in zip(self.blocks[1:], self.positions):
            h = block(F.interpolate(h, scale_factor=2, mode="nearest") + pos)
        return self.head(h) * self.std + self.mean

    def latents(self, embeddings: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self(embeddings)


class _SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block, attention over the whole sequence (nothing is masked)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:                 # (B, L, W)
        B, L, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, W))
        return x + self.mlp(self.norm2(x))


N_COND = 4          # the text embedding enters as this many tokens before the code grid
REDRAW_THRESHOLD = 2.0  # an unmasked edit redraws codes e**2 (7x) less likely for the target than the source


class TokenPrior(Prior):
    """kind 'tokens'. A bidirectional transformer that reads the text embedding (as N_COND tokens)
    and a VQGAN code grid with some codes masked, and predicts the masked ones: (B, g*g) codes ->
    (B, g*g, codes) logits. sample_codes() fills a fully masked grid in `sample_steps` rounds, keeping
    the surest codes each round (MaskGIT's schedule), with classifier-free guidance against a learnt
    no-prompt embedding. The VQGAN's codebook is a buffer: the latent of a grid is its code vectors,
    and the prior is refused for a network with another codebook."""

    draws = True

    def __init__(self, config: PriorConfig):
        super().__init__(config)
        c = self.config
        if c.kind != "tokens":
            raise ConfigError(f"TokenPrior is the 'tokens' kind; this config is {c.kind!r} (build_prior picks the class)")
        self.mask_id = c.codes
        self.cond = nn.Linear(c.embed_dim, N_COND * c.width)
        self.null = nn.Parameter(torch.zeros(1, c.embed_dim))             # the embedding of "no prompt"
        self.tokens = nn.Embedding(c.codes + 1, c.width)                  # the last id is "masked"
        self.pos = nn.Parameter(torch.randn(1, N_COND + c.grid * c.grid, c.width) * 0.02)
        self.blocks = nn.ModuleList([_SelfAttentionBlock(c.width, c.heads) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.width)
        self.head = nn.Linear(c.width, c.codes)
        self.register_buffer("codebook", torch.zeros(c.codes, c.channels))
        nn.init.normal_(self.tokens.weight, std=0.02)

    def forward(self, codes: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """codes (B, g*g) with mask_id where unknown, embeddings (B, D) -> logits (B, g*g, codes)."""
        self.check_embeddings(embeddings)
        B = codes.shape[0]
        h = torch.cat([self.cond(embeddings).view(B, N_COND, -1), self.tokens(codes)], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, N_COND:]))

    def guided_logits(self, codes: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Classifier-free guided logits: uncond + cfg_scale * (cond - uncond)."""
        s = self.config.cfg_scale
        if s == 1:
            return self(codes, embeddings)
        both = self(torch.cat([codes, codes]), torch.cat([embeddings, self.null.expand_as(embeddings)]))
        cond, uncond = both.chunk(2)
        return uncond + s * (cond - uncond)

    @torch.no_grad()
    def sample_codes(self, embeddings: torch.Tensor, generator: torch.Generator | None = None,
                     codes: torch.Tensor | None = None, redraw: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) embeddings -> (B, g, g) sampled codes. Each round samples every unknown code, then
        keeps the surest ones (probability plus annealed Gumbel noise) as the cosine schedule allows.
        With `codes` (B, g, g) and `redraw` (B, g, g) bool, only the codes where `redraw` is True are
        drawn and the others kept (inpainting, text edits)."""
        c = self.config
        B, N = embeddings.shape[0], c.grid * c.grid
        dev = embeddings.device
        if (codes is None) != (redraw is None):
            raise InputError("give both the codes and where to redraw them, or neither")
        if codes is None:
            codes = torch.full((B, N), self.mask_id, dtype=torch.long, device=dev)
        else:
            if codes.shape != (B, c.grid, c.grid) or redraw.shape != codes.shape:
                raise InputError(f"codes and redraw must be ({B}, {c.grid}, {c.grid}), got {tuple(codes.shape)} and "
                                 f"{tuple(redraw.shape)}")
            codes = codes.reshape(B, N).to(dev).masked_fill(redraw.reshape(B, N).to(dev), self.mask_id)
        unknown0 = (codes == self.mask_id).sum(dim=1, keepdim=True)            # (B, 1) codes to draw

        def gumbel(shape):                                                  # Gumbel(0, 1) noise from `generator`
            u = torch.rand(shape, generator=generator, device=generator.device if generator else "cpu").to(dev)
            return -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))

        for t in range(c.sample_steps):
            unknown = codes == self.mask_id
            logp = torch.log_softmax(self.guided_logits(codes, embeddings).float() / c.temperature, dim=-1)
            drawn = (logp + gumbel(logp.shape)).argmax(-1)                  # a sample of every code
            drawn = torch.where(unknown, drawn, codes)
            masked_next = (unknown0 * math.cos(math.pi / 2 * (t + 1) / c.sample_steps)).long()   # (B, 1)
            if t == c.sample_steps - 1 or not masked_next.any():
                return drawn.view(B, c.grid, c.grid)
            sure = logp.gather(-1, drawn[..., None])[..., 0]
            sure = sure + c.choice_noise * (1 - (t + 1) / c.sample_steps) * gumbel(sure.shape)
            sure = sure.masked_fill(~unknown, float("inf"))                  # known codes stay
            rank = sure.argsort(dim=-1).argsort(dim=-1)                      # 0 = least sure
            codes = drawn.masked_fill(rank < masked_next, self.mask_id)
        return codes.view(B, c.grid, c.grid)

    def latents(self, embeddings: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._lookup(self.sample_codes(embeddings, generator))

    def _lookup(self, codes: torch.Tensor) -> torch.Tensor:                 # (B, g, g) -> (B, C, g, g)
        from .vqgan import lookup_codes

        return lookup_codes(codes, self.codebook)

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:               # (B, C, g, g) -> codes (B, g, g)
        from .vqgan import nearest_codes

        return nearest_codes(latents, self.codebook.to(latents.device))

    @torch.no_grad()
    def unlikely(self, codes: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None = None,
                 threshold: float = REDRAW_THRESHOLD) -> torch.Tensor:
        """(B, g, g) bool: the codes the prior finds unlikely for `target`, each read with all the
        others known, relative to `source` when given (log p(code | target) - log p(code | source)
        below -threshold, a code that fits the source and not the target), else absolutely
        (log p(code | target) below -threshold)."""
        B, g = codes.shape[0], self.config.grid
        flat = codes.reshape(B, -1)

        def logp(e):
            return torch.log_softmax(self(flat, e).float(), dim=-1).gather(-1, flat[..., None])[..., 0]

        score = logp(target) - (logp(source) if source is not None else 0)
        return (score < -threshold).view(B, g, g)

    def redraw(self, latents: torch.Tensor, target: torch.Tensor, source: torch.Tensor | None = None,
               region: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """An edit of `latents` (B, C, g, g) toward the `target` embeddings (B, D): the codes inside
        `region` (B, g, g) bool are drawn again, or without a region the ones unlikely() for the
        target (against `source`); the rest are kept."""
        codes = self.nearest(latents).to(target.device)
        where = region.to(codes.device).bool() if region is not None else self.unlikely(codes, target, source)
        if not where.any():
            return self._lookup(codes)
        return self._lookup(self.sample_codes(target, generator, codes, where))


PRIORS = {"mean": LatentPrior, "tokens": TokenPrior}


def build_prior(config: PriorConfig) -> Prior:
    """The prior network `config.kind` names, untrained."""
    return PRIORS[config.validate().kind](config)


def prompt_embedding(model, prompts: Sequence[str]) -> torch.Tensor:
    """(B, D) unit text embeddings of `prompts` by `model`; a weighted prompt ("a | b:0.5 | c:-1")
    is the unit sum of its positive parts' embeddings by weight (negative parts only steer)."""
    from ..guide.prompts import parse_prompts

    out = []
    with torch.no_grad():
        for prompt in prompts:
            parts = [p for p in parse_prompts(prompt) if p.text is not None and p.weight > 0]
            if not parts:
                raise InputError(f"prompt {prompt!r} has no positive text part to draw (a text prior or a "
                                 "text-conditional network draws what the positive parts say)")
            e = model.encode_text(model.tokenize([p.text for p in parts], truncate=True), normalize=True)
            w = torch.tensor([p.weight for p in parts], dtype=e.dtype, device=e.device)
            out.append(F.normalize((w[:, None] * e).sum(0), dim=-1))
    return torch.stack(out)


def check_guide(prior: Prior, model) -> None:
    """InputError unless `model` is the guide whose text embeddings `prior` reads."""
    from ..guide.steer import is_text_model

    c = prior.config
    if not is_text_model(model, c.embed_dim, c.guide_hash):
        raise InputError(f"this prior reads the text embeddings of the guide '{c.guide or 'unknown'}' (weights "
                         f"{c.guide_hash or 'unrecorded'}, {c.embed_dim} wide); the guide given is another model: use "
                         "the guide it was trained with, or train a prior for this one (clipguide train-prior)")


def prior_latent(prior: Prior, model, prompts: Sequence[str], generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """The latents (B, C, g, g) `prior` gives `prompts` read by the guide `model`: the mean prior's
    prediction, or the token prior's sample drawn from `generator`."""
    check_guide(prior, model)
    e = prompt_embedding(model, prompts)
    with torch.no_grad():
        return prior.to(e.device).latents(e.to(next(prior.parameters()).dtype), generator)


def check_prior_for(prior: Prior, family: str, latent: torch.Tensor, codebook: torch.Tensor | None = None) -> None:
    """InputError unless `prior` predicts latents of `family` shaped like `latent` (1|B, C, g, g)
    and, for a token prior, in the codebook `codebook` (n_embed, C) when it is given."""
    c = prior.config
    if family != c.family:
        raise InputError(f"this prior predicts {c.family} latents; the generator is {family}")
    if tuple(latent.shape[1:]) != (c.channels, c.grid, c.grid):
        raise InputError(f"this prior predicts latents of shape {(c.channels, c.grid, c.grid)}; the generator's "
                         f"latent is {tuple(latent.shape[1:])} (another network or picture size)")
    if isinstance(prior, TokenPrior) and codebook is not None:
        mine = prior.codebook.to(codebook.device)
        if mine.shape != codebook.shape or not torch.allclose(mine, codebook.float(), atol=1e-2, rtol=1e-2):
            raise InputError("this token prior samples the codes of another VQGAN network (its codebook differs); "
                             "use the network it was trained for, or train a prior for this one")


def save_prior(prior: Prior, path: str | Path, *, dtype: torch.dtype | None = torch.float16,
               metadata: dict[str, str] | None = None) -> Path:
    """Write `prior` as a safetensors file (atomically) with its config and the library version."""
    from ..formats.writer import write_safetensors

    return write_safetensors(path, prior.state_dict(), format_tag=FORMAT_TAG,
                             config_json=json.dumps(asdict(prior.config)), dtype=dtype, metadata=metadata)


def load_prior(source: "str | Path | Prior") -> Prior:
    """A prior from a file written by save_prior, or a bundled one by name (BUNDLED_PRIORS;
    'bundled' alone is DEFAULT_PRIORS['vqgan']); a Prior is returned as it is. Weights are
    returned in fp32, eval mode."""
    from safetensors import safe_open

    from . import ASSETS

    if isinstance(source, Prior):
        return source
    name = str(source)
    if name == "bundled":
        name = DEFAULT_PRIORS["vqgan"]
    if name in BUNDLED_PRIORS:
        path = ASSETS / BUNDLED_PRIORS[name]
        if not path.exists():
            raise WeightsNotFoundError(f"no bundled prior {name!r} in this installation ({path.name})")
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"prior {name!r} not found: give a file written by clipguide train-prior "
                                       f"or one of {sorted(BUNDLED_PRIORS)}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:                                    # not a safetensors file at all
        raise CheckpointError(f"'{path}' is not a safetensors file ({exc})") from None
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"'{path}' is not a prior (its format is {meta.get('format') or 'not recorded'}); "
                              "a prior is written by clipguide train-prior")
    prior = build_prior(PriorConfig.from_json(meta.get("config", ""), where=f"'{path}' config"))
    expected = prior.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"'{path}' does not hold the tensors its config describes; write it again with "
                              "save_prior")
    prior.load_state_dict({k: v.float() for k, v in tensors.items()})
    prior.source = name if name in BUNDLED_PRIORS else str(path)          # what a picture's provenance names
    return prior.eval()


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------
@dataclass
class PriorTrainConfig:
    kind: str = "mean"                           # 'mean' (regression decoder) or 'tokens' (masked-token sampler)
    family: str = "vqgan"
    generator_model: str = ""                    # the generator's network ('' : the bundled one)
    guide: str = "default"                       # the CLIP whose text tower the prior reads
    data: str = "world:seed=11"                  # any clipguide data source of image-caption pairs
    pairs: int = 24000                           # image-caption pairs encoded once, then trained on
    size: int = 64
    width: int = 96
    depth: int = 6                               # tokens: transformer blocks
    heads: int = 6                               # tokens: attention heads
    cond_drop: float = 0.1                       # tokens: share of captions dropped (classifier-free guidance)
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
        check_positive_ints(self, ("pairs", "size", "width", "steps", "batch_size", "save_every", "log_every"),
                            "prior training: ")
        if self.warmup < 0 or self.threads < 0:
            raise ConfigError("prior training: warmup and threads must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"prior training: lr must be > 0, got {self.lr!r}")
        if not 0 <= self.cond_drop < 1:
            raise ConfigError(f"prior training: cond_drop must be in [0, 1), got {self.cond_drop!r}")
        self.network_config().validate()
        return self

    def network_config(self, embed_dim: int = 1, channels: int = 1, grid: int = 16, codes: int = 2,
                       guide_hash: str = "") -> PriorConfig:
        """The PriorConfig this run trains, given what the data decide (embedding width, latent shape,
        codebook size)."""
        extra = {"codes": codes, "depth": self.depth, "heads": self.heads} if self.kind == "tokens" else {}
        return PriorConfig(embed_dim=embed_dim, channels=channels, grid=grid, width=self.width, family=self.family,
                           guide=self.guide, guide_hash=guide_hash, kind=self.kind, **extra)

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
            gen.prepare()
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
    codebook = getattr(network, "codebook", None) if cfg.kind == "tokens" else None
    if cfg.kind == "tokens" and codebook is None:
        raise ConfigError(f"a token prior needs a generator with a codebook (vqgan); {cfg.family} has none")
    config = cfg.network_config(emb.shape[1], z.shape[1], z.shape[2], len(codebook) if codebook is not None else 2,
                                model_hash(guide))
    torch.manual_seed(cfg.seed)
    prior = build_prior(config)
    if isinstance(prior, TokenPrior):
        prior.codebook.copy_(codebook.detach().float())
        with torch.no_grad():                            # the targets: each latent's nearest codes
            z = torch.cat([network.quantize.nearest(part).flatten(1) for part in z.split(500)])      # (P, g*g)
        loss_of = _masked_code_loss
    else:
        prior.mean.copy_(z[:n_train].mean(dim=(0, 2, 3), keepdim=True))
        prior.std.copy_(z[:n_train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
        loss_of = _standardised_mse
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
        loss = loss_of(prior, emb[i], z[i], rng, cfg.cond_drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            with torch.no_grad():
                val = loss_of(prior, emb[n_train:], z[n_train:], torch.Generator().manual_seed(1), 0.0).item()
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
    path = save_prior(prior.eval(), out / prior_file(cfg.family, cfg.kind),
                      metadata={"steps": cfg.steps, "pairs": len(z), "data": cfg.data})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    atomic_write_text(out / "MODEL_CARD.md", _card(cfg, config, prior, rows))
    return path


def _standardised_mse(prior: LatentPrior, emb, z, rng, cond_drop: float) -> torch.Tensor:
    """The mean prior's loss: MSE of the latent in the prior's standard units."""
    return F.mse_loss((prior(emb) - prior.mean) / prior.std, (z - prior.mean) / prior.std)


def _masked_code_loss(prior: TokenPrior, emb, codes, rng, cond_drop: float) -> torch.Tensor:
    """The token prior's loss: each grid gets a share cos(pi/2 * u) of its codes masked (u uniform,
    at least one), and the loss is the cross-entropy of the masked codes; `cond_drop` of the captions
    are replaced by the no-prompt embedding."""
    B, N = codes.shape
    u = torch.rand(B, 1, generator=rng)
    n_masked = (torch.cos(math.pi / 2 * u) * N).ceil().clamp(1, N)             # (B, 1)
    rank = torch.rand(B, N, generator=rng).argsort(dim=1).argsort(dim=1)        # a random order of the codes
    masked = rank < n_masked
    if cond_drop:
        drop = torch.rand(B, 1, generator=rng) < cond_drop
        emb = torch.where(drop, prior.null.expand_as(emb), emb)
    logits = prior(codes.masked_fill(masked, prior.mask_id), emb)
    return F.cross_entropy(logits[masked], codes[masked])


def command_of(cfg: PriorTrainConfig) -> str:
    """The `clipguide train-prior` command line that trains `cfg`."""
    parts = ["clipguide train-prior", f"--generator {cfg.family}", f"--model {cfg.guide}", f"--out {cfg.out_dir}"]
    if cfg.generator_model:
        parts.append(f"--generator-model {cfg.generator_model}")
    return " ".join(parts + override_flags(cfg, skip=("family", "guide", "out_dir", "generator_model")))


def _card(cfg: PriorTrainConfig, config: PriorConfig, prior: Prior, rows: list[dict]) -> str:
    n = sum(p.numel() for p in prior.parameters())
    last = rows[-1] if rows else {}
    what, loss = {"mean": ("A prior", "MSE of the standardised latent"),
                  "tokens": ("A masked-token prior (it samples VQGAN codes)",
                             "cross-entropy of the masked codes")}[cfg.kind]
    return f"""# {cfg.family} text prior ({cfg.kind})

{what} from the `{cfg.guide}` guide's text embeddings to the {cfg.family} latent
({config.channels} x {config.grid} x {config.grid}), trained by clipguide {__version__} on {cfg.pairs} image-caption
pairs of `{cfg.data}`.

- command: `{command_of(cfg)}`
- architecture: {json.dumps(asdict(config))} ({n:,} parameters)
- steps: {cfg.steps} x batch {cfg.batch_size}; lr {cfg.lr} (warm-up {cfg.warmup}, cosine to 10%); seed {cfg.seed}
- last logged metrics: `{json.dumps(last)}` (losses: {loss}; val on the last
  held-out pairs)
"""


__all__ = ["PriorConfig", "Prior", "LatentPrior", "TokenPrior", "build_prior", "PRIOR_KINDS", "PriorTrainConfig", "prompt_embedding", "prior_latent", "check_prior_for",
           "save_prior", "load_prior", "train_prior", "encode_pairs", "command_of", "check_guide", "BUNDLED_PRIORS",
           "DEFAULT_PRIORS", "bundled_prior_name", "prior_file",
           "FORMAT_TAG"]
