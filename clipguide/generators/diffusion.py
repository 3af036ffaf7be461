"""CLIP guidance for diffusion models loaded with diffusers: pixel pipelines (`UNet2DModel`) and latent
pipelines with a VAE (the Stable Diffusion directory layout), DDPM or DDIM sampling.

At every denoising step the model's prediction gives an estimate of the clean image; the CLIP loss of
that estimate (cutouts and all, whatever `loss_fn` does) is differentiated w.r.t. the noisy sample,
g = d loss(decode(x0_hat(x_t))) / d x_t, normalised per image (so `scale` needs no retuning between
models), and moves the prediction. Two forms (`guidance_space`):

    "clean": x0' = x0_hat - scale * sqrt(1 - alpha_bar_t) * g / rms(g)        (the default)
    "noise": eps' = eps + scale * sqrt(1 - alpha_bar_t) * g / rms(g)           (classifier guidance)

the other of (x0, eps) following from x_t. "clean" moves the clean estimate by a step proportional to
the noise level: the same order all through the schedule early on, fading as the picture settles.
"noise" moves it by scale * (1 - alpha_bar) / sqrt(alpha_bar), very large at the noisiest steps.
`guidance_stop` (a fraction of the steps) ends guidance early, leaving the last steps to the model;
`recurrence` k > 1 repeats each guided step k times, re-noising the result back to the current level
in between (time travel), so the model can reconcile the guided prediction with its own.

Edits start from an image taken `strength` of the way up the schedule, by DDIM inversion (the
default with DDIM sampling; all the way up unless told otherwise; a text-conditional UNet reads the
image as its source text) or by noising it (SDEdit, 0.6 of the way unless told otherwise), then
denoised with guidance; outside an edit's region the image's own path is kept at every step.

A `UNet2DModel` with `class_embed_type="identity"` is text-conditional: its class label is a CLIP
model's text embedding (the model its clipguide.json names), so it draws the prompt it is given
(`DiffusionLatent.condition`), with classifier-free guidance at `cfg_scale`; CLIP guidance acts on top.

    model = load_diffusion("path/to/pipeline_dir")            # a local diffusers directory
    gen = DiffusionLatent(model, size=64, generator=torch.Generator().manual_seed(0))
    result = gen.run(CLIPLoss(clip, "a gothic church"), steps=50, guidance_scale=0.15)
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from .base import Generator, check_init, check_region, freeze, from_unit, per_image_loss, reported_losses, to_unit

# Component classes this module knows how to drive (anything else in a pipeline is refused by name).
_UNETS = ("UNet2DModel", "UNet2DConditionModel")
_AUTOENCODERS = ("AutoencoderKL", "VQModel")
_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
# the samplers guided_sample steps with
SCHEDULERS = ("ddim", "ddpm")
GUIDANCE_SPACES = ("clean", "noise")
EDIT_STARTS = ("inversion", "noise")
EDIT_STRENGTH = {"inversion": 1.0, "noise": 0.6}        # an edit's default strength for each start


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusion guidance needs diffusers: pip install 'clipguide[diffusion]' "
                          "(or pip install diffusers)") from None
    return diffusers


@dataclass
class DiffusionModel:
    """A denoiser, its noise schedule and, for latent pipelines, the autoencoder and text conditioning."""

    unet: nn.Module
    scheduler: Any                                  # a diffusers scheduler (its config is what is used)
    vae: nn.Module | None = None
    conditioning: torch.Tensor | None = None        # (1, L, D) text states for conditional UNets
    text_model: Any = None                          # the CLIP whose text embeddings a class-conditioned UNet reads
    text_scale: float = 1.0                         # what unit embeddings are multiplied by on the way in
    label: torch.Tensor | None = None               # (B, D) the scaled embedding drawn now; None: unconditional
    cfg_scale: float = 1.0                          # classifier-free guidance of the text label (1: none)
    source: str = ""
    extra: dict = field(default_factory=dict)
    _ddim_cache: dict = field(default_factory=dict, repr=False)

    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def scale_factor(self) -> int:                   # pixels per latent cell
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:                  # image sides must be multiples of this (VAE and UNet levels)
        return self.scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def ddim(self, steps: int):
        """A deterministic DDIM scheduler on this model's noise schedule with `steps` inference steps
        (made once per step count: forward() samples with it on every guidance step)."""
        if steps not in self._ddim_cache:
            sched = _diffusers().DDIMScheduler.from_config(self.scheduler.config)
            sched.set_timesteps(steps)
            self._ddim_cache[steps] = sched
        return self._ddim_cache[steps]

    @property
    def channels(self) -> int:
        return self.unet.config.in_channels

    def vae_scaling(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the space the UNet denoises (pixels in [-1, 1], or scaled latents)."""
        x = from_unit(images)
        if self.vae is None:
            return x
        out = self.vae.encode(x)
        z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        return z * self.vae_scaling()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The UNet's space -> images in [0, 1] (differentiable)."""
        if self.vae is not None:
            x0 = self.vae.decode(x0 / self.vae_scaling()).sample
        return to_unit(x0)

    @property
    def text_conditional(self) -> bool:
        """Whether the UNet takes a text embedding as its class label (class_embed_type 'identity')."""
        return getattr(self.unet.config, "class_embed_type", None) == "identity"

    def conditioned(self, prompt: str | None) -> "DiffusionModel":
        """This model drawing `prompt` (its text model's embedding; a weighted prompt is the unit sum
        of its positive parts), or unconditionally for None. The networks are shared."""
        if not self.text_conditional:
            return self
        if prompt is None:
            return dataclasses.replace(self, label=None)
        from .prior import prompt_embedding

        emb = prompt_embedding(self.text_model, [prompt]).to(next(self.unet.parameters()).device)
        return dataclasses.replace(self, label=emb * self.text_scale)

    def predict(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The UNet's raw output for noisy samples x at timestep t (for a text-conditional UNet: with
        its label, and classifier-free guidance toward it at cfg_scale)."""
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        if self.text_conditional:
            null = x.new_zeros(x.shape[0], label_width(self.unet))
            if self.label is None:
                return self.unet(x, t, class_labels=null).sample
            if x.shape[0] % self.label.shape[0]:
                raise InputError(f"{self.label.shape[0]} text labels for a batch of {x.shape[0]}: the batch must "
                                 "be a multiple of the labels")
            label = self.label.to(x).repeat_interleave(x.shape[0] // self.label.shape[0], dim=0)
            if self.cfg_scale == 1:
                return self.unet(x, t, class_labels=label).sample
            both = self.unet(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([label, null])).sample
            cond, uncond = both.chunk(2)
            return uncond + self.cfg_scale * (cond - uncond)
        if self.conditioning is not None:
            cond = self.conditioning.to(x).expand(x.shape[0], -1, -1)
            return self.unet(x, t, encoder_hidden_states=cond).sample
        return self.unet(x, t).sample

    def split(self, output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from the UNet output, whatever the scheduler's prediction type."""
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            eps = output
            return eps, (x - s * eps) / a
        if kind == "sample":
            x0 = output
            return (x - a * x0) / s, x0
        if kind == "v_prediction":
            return s * x + a * output, a * x - s * output
        raise InputError(f"prediction type {kind!r} is not supported (epsilon, sample or v_prediction)")

    def join(self, eps: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Back from (eps, x0) to an output of the scheduler's prediction type."""
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        kind = self.scheduler.config.prediction_type
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[kind]


def label_width(unet: nn.Module) -> int:
    """The width of the class label a class-conditioned UNet2DModel adds to its time embedding."""
    c = unet.config
    return int(c.time_embedding_dim or c.block_out_channels[0] * 4)


# ---------------------------------------------------------------------------------------------- loading

def load_diffusion(path: str | Path, prompt: str = "", device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a local diffusers pipeline directory (``model_index.json`` plus one folder per component):
    a UNet2DModel with a DDPM/DDIM scheduler, or a latent pipeline (vae + unet + scheduler, and
    text_encoder + tokenizer when the UNet is text-conditioned; `prompt` is what it is conditioned on,
    the empty prompt by default, since CLIPLoss does the steering)."""
    diffusers = _diffusers()
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"no diffusion model at '{root}': pass a local diffusers pipeline directory")
    if not root.is_dir():
        raise CheckpointError(f"'{root}' is a file; a diffusion model is a diffusers pipeline directory "
                              "with model_index.json and one folder per component (unet, scheduler, ...)")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        hint = ""
        if (root / "config.json").is_file():
            kind = json.loads((root / "config.json").read_text()).get("_class_name", "?")
            hint = (f" It holds a single {kind} (config.json); put it in a 'unet' folder beside a 'scheduler' "
                    "folder and a model_index.json, as pipeline.save_pretrained() writes them.")
        raise CheckpointError(f"'{root}' has no model_index.json, so it is not a diffusers pipeline directory.{hint}")
    index = json.loads(index_path.read_text())
    comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
    needed = ["unet", "scheduler"]
    unet_cls = comps.get("unet", [None, None])[1]
    if "vae" in comps:
        needed.append("vae")
    if unet_cls == "UNet2DConditionModel":
        needed += ["text_encoder", "tokenizer"]
    missing = [c for c in needed if c not in comps or not (root / c).is_dir()]
    if missing:
        raise CheckpointError(f"diffusion pipeline '{root}' is missing component(s) {', '.join(missing)}: "
                              f"a {unet_cls or 'UNet'} pipeline needs {', '.join(needed)} (each a folder with "
                              "its config and weights, listed in model_index.json)")
    if unet_cls not in _UNETS:
        raise CheckpointError(f"unet of '{root}' is a {unet_cls}; supported: {', '.join(_UNETS)}")
    kw = {"local_files_only": True}
    unet = getattr(diffusers, unet_cls).from_pretrained(root / "unet", **kw)
    sched_cls = comps["scheduler"][1]
    if sched_cls in _SCHEDULERS:
        scheduler = getattr(diffusers, sched_cls).from_pretrained(root / "scheduler", **kw)
    else:   # any other noise schedule: sample with DDIM on the same betas
        scheduler = diffusers.DDIMScheduler.from_config(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    vae = None
    if "vae" in comps:
        vae_cls = comps["vae"][1]
        if vae_cls not in _AUTOENCODERS:
            raise CheckpointError(f"vae of '{root}' is a {vae_cls}; supported: {', '.join(_AUTOENCODERS)}")
        vae = freeze(getattr(diffusers, vae_cls).from_pretrained(root / "vae", **kw)).to(device)
    conditioning = None
    if unet_cls == "UNet2DConditionModel":
        conditioning = _encode_prompt(root, comps, prompt, device)
    text = _text_condition(root, unet, device)
    return DiffusionModel(unet=freeze(unet).to(device), scheduler=scheduler, vae=vae, conditioning=conditioning,
                          source=str(root), extra={"components": {k: v[1] for k, v in comps.items()}}, **text)


def _text_condition(root: Path, unet: nn.Module, device) -> dict[str, Any]:
    """A UNet2DModel whose class label is a text embedding (class_embed_type 'identity') reads the
    embeddings of the CLIP model its clipguide.json names (`text_condition`: model, model_hash,
    scale, cfg_scale): that model, loaded and checked, and the settings."""
    if getattr(unet.config, "class_embed_type", None) != "identity":
        return {}
    meta_path = root / "clipguide.json"
    meta = json.loads(meta_path.read_text()).get("text_condition") if meta_path.is_file() else None
    if not isinstance(meta, dict) or not meta.get("model"):
        raise CheckpointError(f"the UNet of '{root}' takes a class label of width {label_width(unet)} "
                              "(class_embed_type 'identity') but clipguide.json names no text_condition model "
                              "whose text embeddings it reads: add {\"text_condition\": {\"model\": NAME, ...}}")
    from .. import load as load_clip
    from ..guide.steer import is_text_model, model_hash

    clip = load_clip(meta["model"]).eval().to(device)
    if not is_text_model(clip, label_width(unet), meta.get("model_hash") or ""):
        raise CheckpointError(f"the UNet of '{root}' reads the text embeddings of '{meta['model']}' (weights "
                              f"{meta.get('model_hash') or 'unrecorded'}, {label_width(unet)} wide), and the model "
                              f"loaded by that name is another ({clip.config.embed_dim} wide, weights {model_hash(clip)})")
    return {"text_model": clip, "text_scale": float(meta.get("scale", 1.0)),
            "cfg_scale": float(meta.get("cfg_scale", 1.0))}


def _encode_prompt(root: Path, comps: dict, prompt: str, device) -> torch.Tensor:
    import transformers

    tok = getattr(transformers, comps["tokenizer"][1]).from_pretrained(root / "tokenizer", local_files_only=True)
    enc = getattr(transformers, comps["text_encoder"][1]).from_pretrained(root / "text_encoder", local_files_only=True)
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids.to(device))[0].detach()


# ---------------------------------------------------------------------------------------------- sampling

def _alpha_bar(sched, t) -> torch.Tensor:
    return sched.alphas_cumprod[int(t)].float()


def _level_after(sched, t) -> torch.Tensor:
    """alpha_bar of the level the scheduler's step from timestep t lands on (its own rule: DDIM steps
    back by T // steps, DDPM to the next of its timesteps; past the start, the schedule's end)."""
    if hasattr(sched, "previous_timestep"):
        prev, end = int(sched.previous_timestep(t)), torch.ones(())
    else:
        prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
        end = torch.as_tensor(sched.final_alpha_cumprod)
    return (sched.alphas_cumprod[prev] if prev >= 0 else end).float()


def ddim_sample(model: DiffusionModel, x: torch.Tensor, steps: int, start_index: int = 0) -> torch.Tensor:
    """Deterministic DDIM from x at timestep index `start_index`, differentiable; returns x0. Like
    diffusers' DDIM step (and so like guided sampling at scale 0), the predicted clean sample is
    clipped when the scheduler's config says clip_sample."""
    sched = model.ddim(steps)
    clip = float(sched.config.get("clip_sample_range", 1.0)) if sched.config.get("clip_sample", False) else None
    for t in sched.timesteps[start_index:]:
        ab, ab_prev = _alpha_bar(sched, t), _level_after(sched, t)
        eps, x0 = model.split(model.predict(x, t), x, ab)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x


@torch.no_grad()
def invert_path(model: DiffusionModel, x0: torch.Tensor, sched, timesteps) -> list[torch.Tensor]:
    """DDIM run backwards along `timesteps` (descending; the scheduler `sched` steps between them):
    the latents a sampler meets at each of them (path[i] at timesteps[i]) on its way to the clean
    sample x0, so that deterministic DDIM from path[0] gives x0 back (approximately). Each step
    reuses the noise predicted at the less noisy level."""
    path, x = [], x0
    for t in reversed(timesteps):
        ab, ab_prev = _alpha_bar(sched, t), _level_after(sched, t)
        eps, _ = model.split(model.predict(x, t), x, ab)
        clean = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
        x = ab.sqrt() * clean + (1 - ab).sqrt() * eps
        path.append(x)
    return path[::-1]


def ddim_invert(model: DiffusionModel, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """The noise x_T that deterministic DDIM sampling with `steps` steps maps (approximately) back to
    the clean sample x0."""
    sched = model.ddim(steps)
    return invert_path(model, x0, sched, sched.timesteps)[0]


class DiffusionLatent(Generator):
    """A diffusion model as a generator: the latent is the starting noise x_T, forward() samples it
    deterministically with DDIM (`sample_steps`), and run() does CLIP-guided sampling from it.
    `init=` images start from their DDIM inversion, so forward() gives them back. It is made on first
    use (forward(), latent_l2(), prepare(); an edit's run() does not need it): until then `latent`
    and `start` are zeros. A text-conditional
    UNet draws what condition(prompt) last gave it (unconditionally before), with classifier-free
    guidance at `cfg_scale` (None: the model's own setting).

    Edits (run() with an init image) start from the image's latent taken back to the first sampled
    step (`edit_start`): by DDIM inversion, under the source text condition() was given (what the
    image shows) when the UNet reads text, or by noising it (SDEdit). With restrict(region), the
    part outside the region follows the image's own path down (its inversion, or the image noised
    with the same noise) at every step, so the sampler draws the region to fit around it."""

    family = "diffusion"

    def __init__(self, model: DiffusionModel, size: int | tuple[int, int] = 64, batch: int = 1,
                 init: torch.Tensor | None = None, generator: torch.Generator | None = None, sample_steps: int = 20,
                 cfg_scale: float | None = None):
        super().__init__()
        if cfg_scale is not None:
            check_cfg_scale(cfg_scale)
            model = dataclasses.replace(model, cfg_scale=float(cfg_scale))
        h, w = (size, size) if isinstance(size, int) else size
        m, f = model.size_multiple, model.scale_factor
        if h % m or w % m:
            raise InputError(f"size {h}x{w} is not a multiple of {m} (the autoencoder's factor times the "
                             "UNet's downsampling)")
        self.model, self.size, self.sample_steps = model, (h, w), int(sample_steps)
        self.unet = model.unet          # registered so .to() moves the networks with the latent
        if model.vae is not None:
            self.vae = model.vae
        self.init_images = None
        if init is not None:            # the image's inversion is the latent: made on first use (an edit's
            self.init_images = check_init(init, (h, w), batch)      # run() inverts it under its own schedule)
            start = torch.zeros(batch, model.channels, h // f, w // f)
        else:
            start = torch.randn(batch, model.channels, h // f, w // f, generator=generator)
        self._inverted, self._reader = init is None, model       # the model as built reads the image
        self.latent = nn.Parameter(start.contiguous())
        self.register_buffer("start", start.detach().clone(), persistent=False)
        self.inverter, self.region = model.conditioned(None), None

    def set_start(self, latent: torch.Tensor) -> None:
        self._inverted = True           # a start given replaces the image's inversion
        super().set_start(latent)

    def prepare(self) -> None:
        """Set the latent (and start) of an image-started generator to the image's DDIM inversion by
        the model as built (before condition()) in sample_steps steps, once, so that forward() draws
        the image."""
        if self._inverted:
            return
        with torch.no_grad():
            start = ddim_invert(self._reader, self._reader.encode(self.init_images.to(self.latent)), self.sample_steps)
            self.latent.copy_(start)
            self.start.copy_(start)
        self._inverted = True

    def latent_l2(self) -> torch.Tensor:
        self.prepare()
        return super().latent_l2()

    def condition(self, prompt: str | None, source: str | None = None) -> None:
        self.model = self.model.conditioned(prompt)
        # the image is inverted under what it shows, without classifier-free guidance (a UNet that
        # reads no text label, e.g. one conditioned on encoder states at load, inverts as it samples)
        self.inverter = dataclasses.replace(self.model.conditioned(source), cfg_scale=1.0)

    def restrict(self, region: torch.Tensor | None) -> None:
        if region is not None:
            if self.init_images is None:
                raise InputError("a region limits an edit: build the generator with init= (the image to edit), "
                                 "or leave the region out")
            region = check_region(region, self.size, self.latent.shape[0])
        self.region = region

    def forward(self) -> torch.Tensor:
        self.prepare()
        return self.decode(self.latent)

    @property
    def from_image(self) -> bool:
        return self.init_images is not None

    def propose(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, *self.latent.shape[1:], generator=generator)

    def decode(self, latent: torch.Tensor, index: int = 0) -> torch.Tensor:
        """Draft pictures of starting noises: the network's own DDIM draws in sample_steps steps,
        without CLIP guidance (what a search among starts looks at)."""
        return self.model.decode(ddim_sample(self.model, latent, self.sample_steps))

    def run(self, loss_fn: Callable[..., torch.Tensor], steps: int | None = None, lr: float | None = None, *,
            seed: int = 0, guidance_scale: float = 0.15, strength: float | None = None, scheduler: str = "ddim",
            guidance_space: str = "clean", guidance_stop: float = 1.0, recurrence: int = 1, search: int = 1,
            search_view: str = "whole", particles: int = 1, callback: Callable | None = None, frame_every: int = 0,
            progress: bool = True, settings: dict | None = None, regularisers=(), latent_weight: float = 0.0,
            edit_start: str | None = None, **unused) -> Any:
        """CLIP-guided sampling with `steps` denoising steps (default: sample_steps). With an init
        image, an edit: sampling starts `strength` of the way up the schedule from the image, its
        latent taken there by `edit_start` (see guided_sample: DDIM inversion, or SDEdit's noise, and
        their default strengths). `search` > 1 first lets the loss choose each picture's starting
        noise among that many by their draft pictures (the network's own draws in sample_steps
        steps, seen as `search_view` says; choose_start()); the guided sampling then starts from
        it. `particles` > 1 samples that many pictures side by side for each one asked and lets
        the loss resample them at every guided step (see guided_sample). Regularisers (functions of
        the images, weighted) join the guidance loss; lr and latent_weight do not apply to sampling
        and are ignored."""
        if self.model.text_conditional:             # the provenance says what the UNet drew
            settings = {**(settings or {}), "cfg_scale": self.model.cfg_scale,
                        "text_conditioned": self.model.label is not None}
        steps = self.sample_steps if steps is None else steps
        check_sampling(steps, guidance_scale=guidance_scale, guidance_stop=guidance_stop, guidance_space=guidance_space,
                       recurrence=recurrence, particles=particles, edit_start=edit_start, strength=strength,
                       scheduler=scheduler, edit=self.init_images is not None, region=self.region is not None)
        settings = self.search_start(loss_fn, search, seed, search_view, settings)
        return guided_sample(self.model, loss_fn, self.latent.detach(), steps,
                             guidance_scale=guidance_scale, seed=seed, strength=strength, scheduler=scheduler,
                             guidance_space=guidance_space, guidance_stop=guidance_stop, recurrence=recurrence,
                             particles=particles, init_images=self.init_images, callback=callback,
                             frame_every=frame_every,
                             progress=progress, settings=settings, regularisers=regularisers, edit_start=edit_start,
                             inverter=self.inverter, region=self.region)


def _particle_losses(loss_fn: Callable[..., torch.Tensor], n: int) -> torch.Tensor:
    """(n,) per-picture losses the loss reported for its last call."""
    per = reported_losses(loss_fn, n)
    if per is None:
        raise InputError("particles > 1 ranks samples by their own losses: the loss must report per-picture values "
                         "in loss.last['per_image'] as CLIPLoss does")
    return per


def _resample(losses: torch.Tensor) -> torch.Tensor:
    """Rows to keep from (pictures, k) particle losses: each picture's better half (rounded up),
    best first, repeated to fill its k rows."""
    pictures, k = losses.shape
    keep = losses.argsort(dim=1)[:, : (k + 1) // 2]
    return (keep[:, torch.arange(k) % keep.shape[1]] + torch.arange(pictures)[:, None] * k).flatten()


def _best_particles(images: torch.Tensor, losses: torch.Tensor, pictures: int) -> torch.Tensor:
    """(pictures, ...) the lowest-loss particle of each picture from (pictures * k, ...)."""
    k = images.shape[0] // pictures
    best = losses.view(pictures, k).argmin(dim=1)
    return images.view(pictures, k, *images.shape[1:])[torch.arange(pictures), best]


def edit_settings(edit_start: str | None = None, strength: float | None = None,
                  scheduler: str = "ddim") -> tuple[str, float]:
    """An edit's start and strength as given, or their defaults: inversion with DDIM sampling and
    noise with DDPM (whose fresh noise at every step does not retrace an inversion), at
    EDIT_STRENGTH of the start."""
    start = edit_start or ("noise" if scheduler == "ddpm" else "inversion")
    return start, EDIT_STRENGTH.get(start, 1.0) if strength is None else strength


def check_cfg_scale(cfg_scale: float) -> None:
    """Refuse a classifier-free guidance scale that is not a finite number >= 0, saying what it means."""
    if not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise InputError(f"cfg_scale (classifier-free guidance of a text-conditional UNet toward its prompt; 1: none, "
                         f"0: unconditional) must be a finite number >= 0, got {cfg_scale}")


def check_guidance(guidance_scale: float = 0.15, guidance_stop: float = 1.0) -> None:
    """Refuse a guidance scale that is not a finite number >= 0 and a guidance stop outside [0, 1]
    (NaN included), with what each one means."""
    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise InputError(f"guidance_scale (the weight of the CLIP gradient) must be a finite number >= 0, "
                         f"got {guidance_scale}")
    if not 0 <= guidance_stop <= 1:
        raise InputError(f"guidance_stop is the fraction of denoising steps that are guided: a number in [0, 1], "
                         f"got {guidance_stop}")


def check_sampling(steps: int, *, guidance_scale: float = 0.15, guidance_stop: float = 1.0,
                   guidance_space: str = "clean", recurrence: int = 1, particles: int = 1,
                   edit_start: str | None = None, strength: float | None = None, scheduler: str = "ddim",
                   edit: bool = False, region: bool = False) -> tuple[str, float]:
    """Refuse guided_sample's arguments that cannot work, before anything is drawn (DiffusionLatent.run
    checks them before its search); returns the edit's start and the strength, defaults resolved
    (strength 1 without an image: sampling starts from pure noise)."""
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    check_guidance(guidance_scale, guidance_stop)
    if guidance_space not in GUIDANCE_SPACES:
        raise InputError(f"guidance_space {guidance_space!r} is not one of {GUIDANCE_SPACES}")
    if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
        raise InputError(f"recurrence must be an integer >= 1, got {recurrence!r}")
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise InputError(f"particles (how many samples the guide resamples for each picture) must be an integer "
                         f">= 1, got {particles!r}")
    if scheduler not in SCHEDULERS:
        raise InputError(f"scheduler {scheduler!r} is not one of {sorted(SCHEDULERS)}")
    edit_start, edit_strength = edit_settings(edit_start, strength, scheduler)
    if strength is None:
        strength = edit_strength if edit else 1.0
    if edit_start not in EDIT_STARTS:
        raise InputError(f"edit_start {edit_start!r} is not one of {EDIT_STARTS} (how an edit takes its image up the "
                         "schedule: DDIM inversion, or SDEdit's noise)")
    if not 0 < strength <= 1:
        raise InputError(f"strength (how far up the schedule an edit takes its image) must be in (0, 1], got {strength}")
    if region and not edit:
        raise InputError("a region limits an edit: it needs init images to keep outside it (start from an image, "
                         "or leave the region out)")
    if particles > 1 and edit:
        raise InputError("this sampling starts from an image; particles would replace it with random starts "
                         "(particles=1 keeps it)")
    return edit_start, float(strength)


def guided_sample(model: DiffusionModel, loss_fn: Callable[..., torch.Tensor], noise: torch.Tensor, steps: int, *,
                  guidance_scale: float = 0.15, seed: int = 0, strength: float | None = None, scheduler: str = "ddim",
                  guidance_space: str = "clean", guidance_stop: float = 1.0, recurrence: int = 1, particles: int = 1,
                  init_images: torch.Tensor | None = None, callback: Callable | None = None, frame_every: int = 0,
                  progress: bool = True, settings: dict | None = None, regularisers=(), edit_start: str | None = None,
                  inverter: DiffusionModel | None = None, region: torch.Tensor | None = None):
    """The guided denoising loop behind DiffusionLatent.run (returns a SteerResult).

    With `init_images` it is an edit, and `noise` is not used: the images' latents are taken
    `strength` of the way up the schedule (`edit_start`) by DDIM inversion with `inverter` (the model
    as it should read the image; default `model` unconditioned), or by noising them ("noise":
    SDEdit). The default start is "inversion" for DDIM sampling and "noise" for DDPM (whose fresh
    noise at every step does not retrace an inversion); the default strength EDIT_STRENGTH[start]
    (1 without an image): an inversion keeps the picture by itself, so it goes all the way up, and
    noise wipes it, so SDEdit stops part-way. `region` (1|B, 1, H, W) in [0, 1], pixels: the latent
    cells it does not touch are replaced at every step by the images' own latent at that step (the
    inversion path, or the images noised with one fixed noise), and end as the images' latents, so
    the region is drawn to fit what stays (the region's soft edge is the caller's composite; a
    latent pipeline's decoder gives the kept part back as its reconstruction).

    `particles` = K > 1 runs K samples (particles) for each picture: the seeded noise and K - 1 fresh
    draws (not for an edit, which starts from its image). After every guided step the loss of each
    particle's predicted clean picture ranks the K (also with guidance_scale 0: a choice by the
    loss alone); the better half is kept, twice over, and a stochastic sampler (DDPM, or
    DDIM with eta 1) makes the copies part again. The picture returned
    is the particle the loss ranks first at the end. The ranking uses the guidance loss alone (it
    needs per-picture values: CLIPLoss's `last["per_image"]`), not the regularisers."""
    from ..guide.steer import StepInfo, SteerResult, StopSteering, _provenance, stop_reason, total_loss

    edit_start, strength = check_sampling(steps, guidance_scale=guidance_scale, guidance_stop=guidance_stop,
                                          guidance_space=guidance_space, recurrence=recurrence, particles=particles,
                                          edit_start=edit_start, strength=strength, scheduler=scheduler,
                                          edit=init_images is not None, region=region is not None)
    d = _diffusers()
    kinds = {"ddim": d.DDIMScheduler, "ddpm": d.DDPMScheduler}
    sched = kinds[scheduler].from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    timesteps = sched.timesteps
    pictures, k = noise.shape[0], particles
    x = noise
    if k > 1:                                   # particle j of picture b is row b * k + j
        drawn = torch.randn((pictures, k - 1, *noise.shape[1:]), generator=rng).to(noise)
        x = torch.cat([noise[:, None], drawn], dim=1).flatten(0, 1)
    start = time.perf_counter()
    path, keep = None, None
    if init_images is not None:
        first = min(int(round(steps * (1 - strength))), steps - 1)
        timesteps = timesteps[first:]
        with torch.no_grad():
            clean = model.encode(init_images.to(noise.device)).detach()
        if edit_start == "inversion":
            path = invert_path(inverter if inverter is not None else model.conditioned(None), clean, sched,
                               timesteps)
        else:
            fresh = torch.randn(clean.shape, generator=rng).to(clean)
            path = [sched.add_noise(clean, fresh, t.reshape(1)) for t in timesteps]
        x = path[0]
        if region is not None:                  # the latent cells none of whose pixels may change
            keep = (F.adaptive_max_pool2d(region.to(clean), tuple(clean.shape[-2:])) <= 1e-3).to(clean)
    # copies made by resampling must part again: a stochastic sampler
    step_options = {"eta": 1.0, "generator": rng} if k > 1 and scheduler == "ddim" else \
        {"generator": rng} if scheduler == "ddpm" else {}
    edit = {"edit_start": edit_start, "region": region is not None} if init_images is not None else {}
    settings = {"sampler": scheduler, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
                "strength": strength, **edit, "guidance_space": guidance_space, "guidance_stop": guidance_stop,
                "recurrence": recurrence, **({"particles": k} if k > 1 else {}), **(settings or {})}
    guided_steps = int(round(guidance_stop * len(timesteps)))
    provenance = _provenance(loss_fn, model.unet, settings)
    provenance["generator"] = "DiffusionLatent"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(timesteps), desc="diffusion", unit="step", dynamic_ncols=True, leave=False)
    losses, frames, stopped, shown, ranked, finished = [], [], None, None, None, False
    try:
        for i, t in enumerate(timesteps):
            ab = _alpha_bar(sched, t)
            if keep is not None:
                x = keep * path[i] + (1 - keep) * x
            scale = guidance_scale if i < guided_steps else 0.0
            for r in range(recurrence if scale > 0 else 1):
                if r:                                 # back to this step's noise level, fresh noise
                    ab_prev = _alpha_bar(sched, timesteps[i + 1]) if i + 1 < len(timesteps) else torch.ones(())
                    fresh = torch.randn(x.shape, generator=rng).to(x)
                    x = (ab / ab_prev).sqrt() * x + (1 - ab / ab_prev).sqrt() * fresh
                x_in = x.detach().requires_grad_(scale > 0)
                with torch.enable_grad():
                    eps, x0 = model.split(model.predict(x_in, t), x_in, ab)
                    images = model.decode(x0)
                    loss, value = total_loss(loss_fn, images, rng, regularisers)
                    if not math.isfinite(value):
                        stopped = f"non-finite loss at step {i}: kept the images of the last finite step"
                        break
                    if scale > 0:
                        (grad,) = torch.autograd.grad(loss, x_in)
                if k > 1:
                    ranked = _particle_losses(loss_fn, pictures * k)
                shown = images.detach().clone()
                if scale > 0:
                    rms = grad.pow(2).mean(dim=tuple(range(1, grad.dim())), keepdim=True).sqrt().clamp(min=1e-12)
                    shift = scale * (1 - ab).sqrt() * grad / rms
                    if guidance_space == "clean":
                        x0 = x0.detach() - shift
                        eps = (x_in.detach() - ab.sqrt() * x0) / (1 - ab).sqrt()
                    else:
                        eps = eps.detach() + shift
                        x0 = (x_in.detach() - (1 - ab).sqrt() * eps) / ab.sqrt()
                out = model.join(eps.detach(), x0.detach(), ab)
                x = sched.step(out, t, x.detach(), **step_options).prev_sample
            if stopped:
                break
            if k > 1 and i < guided_steps:      # the particles are resampled where guidance acts
                x = x[_resample(ranked.view(pictures, k))]
            losses.append(value)
            if frame_every and i % frame_every == 0:
                frames.append(_best_particles(shown, ranked, pictures) if k > 1 else shown)
            if callback is not None:
                callback(StepInfo(i, value, _best_particles(shown, ranked, pictures) if k > 1 else shown,
                                  guidance_scale))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
        else:
            if keep is not None:
                x = keep * clean + (1 - keep) * x
            with torch.no_grad():
                shown = model.decode(x).detach()
            finished = True
    except (KeyboardInterrupt, StopSteering) as e:
        stopped = stop_reason(e, len(losses))
    finally:
        if bar is not None:
            bar.close()
    if shown is None:
        with torch.no_grad():
            shown = model.decode(x).detach()
    if region is not None and not finished:     # stopped part-way: the last prediction, held outside the region
        r = region.to(shown)
        shown = r * shown + (1 - r) * init_images.to(shown)
    if k > 1 and (finished or ranked is None):  # finished particles (or none ranked yet): rank them now
        ranked = per_image_loss(loss_fn, shown, seed)
    final = float(losses[-1]) if losses else math.inf
    if k > 1:
        chosen = ranked.view(pictures, k).min(dim=1).values
        shown, final = _best_particles(shown, ranked, pictures), float(chosen.mean())
    provenance.update(best_step=len(losses) - 1, best_loss=final if math.isfinite(final) else None)
    return SteerResult(images=shown, last_images=shown, best_loss=final, best_step=len(losses) - 1, losses=losses,
                       steps=len(losses), stopped=stopped, seconds=time.perf_counter() - start,
                       provenance=provenance, frames=frames)
