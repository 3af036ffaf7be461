"""Contrastive training from one CPU process to many GPUs (torchrun).

One step: this rank's slice of the global batch -> normalised features -> gathered from every rank
with gradients -> symmetric InfoNCE -> gradients averaged over ranks -> AdamW -> logit scale clamped
at 100. Data, augmentation and sampling depend only on (seed, step), and checkpoints hold the model,
optimiser and RNG state, so a run killed at any point and resumed ends with the same weights as one
never interrupted."""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import checkpoints
from ..atomic import atomic_torch_save, atomic_write_text
from ..errors import CheckpointError, ConfigError
from ..models import CLIP, get_config
from ..version import __version__
from .config import TrainConfig
from .loss import clip_loss, gather_features
from .robust import l2_attack

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100.0)


# ---------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------
def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Sum every gradient over ranks in one flat buffer and divide by the number of ranks."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _image_features(model: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Normalised image features (B, E) in fp32 of images (B, 3, H, W) in [0, 1]."""
    return model.encode_image(model.preprocess.normalize(images), normalize=True).float()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def tower_parameters(model: CLIP, tower: str) -> list[torch.nn.Parameter]:
    """The parameters of one tower: 'image' (model.visual) or 'text' (everything else but the
    temperature)."""
    if tower == "image":
        return list(model.visual.parameters())
    return [p for name, p in model.named_parameters() if not name.startswith("visual.") and name != "logit_scale"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and convolutions only (not on gains, biases, embeddings' scales)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------
class Trainer:
    """Runs `cfg`. `eval_fn(model) -> dict` is called every `eval_every` steps and at the end."""

    def __init__(self, cfg: TrainConfig, source=None, eval_fn: Callable[[CLIP], dict] | None = None,
                 progress: bool = True):
        from .data import BatchStream, open_source

        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, self.world, self.device = init_distributed()
        if cfg.batch_size % (self.world * cfg.accum_steps):
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by processes x accum_steps "
                              f"= {self.world} x {cfg.accum_steps}")
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.source = source if source is not None else open_source(cfg.data)
        self.eval_fn = eval_fn
        self.progress = progress and self.rank == 0
        torch.manual_seed(cfg.seed)
        self.model = self._build_model().to(self.device)
        self.model.precision = cfg.precision if self.device.type == "cpu" else "fp32"
        self.model.set_grad_checkpointing(cfg.grad_checkpointing)
        if cfg.lock:
            self._require_checkpoint(f"lock={cfg.lock} keeps a trained tower")
            for p in tower_parameters(self.model, cfg.lock):
                p.requires_grad_(False)
            self._train_mode()
        if cfg.wise < 1.0:
            self._require_checkpoint(f"wise={cfg.wise} mixes the tuned weights with the starting checkpoint's")
        self.reference = None
        if cfg.adv_objective == "anchor":
            self._require_checkpoint("adv_objective=anchor keeps a trained model's embeddings")
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=tuple(cfg.betas), eps=cfg.eps)
        self.stream = BatchStream(self.source, cfg.batch_size, self.model.config.vision.image_size, cfg.seed,
                                  rank=self.rank, world_size=self.world, num_workers=cfg.num_workers)
        if cfg.hard_negatives and not self.stream.has_negatives:
            raise ConfigError(f"hard_negatives=true needs a data source that makes negative captions (world); "
                              f"{cfg.data!r} does not")
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []

    # --- model and tokenizer ---------------------------------------------------------------------
    def _require_checkpoint(self, what: str) -> None:
        """Options that fine-tune need a trained start, not an architecture name."""
        if self._from_scratch:
            raise ConfigError(f"{what}: set model= to a checkpoint (or a bundled name) to fine-tune, "
                              f"not an architecture")

    def _build_model(self) -> CLIP:
        cfg = self.cfg
        name = cfg.model
        is_arch = not Path(name).exists() and name not in checkpoints.bundled_models() and ":" not in name
        self._from_scratch = is_arch
        if not is_arch:                                       # fine-tune a loadable checkpoint
            model = checkpoints.load(name)
            if cfg.arch:
                raise ConfigError("arch overrides apply to training from scratch, not to fine-tuning a checkpoint")
            if cfg.tokenizer in ("train",):
                raise ConfigError("a fine-tuned model keeps its tokenizer: use tokenizer=auto or model")
            return model.train()
        arch = get_config(name)
        tokenizer = self._make_tokenizer(arch.text.context_length)
        changes = dict(cfg.arch)
        changes["text.vocab_size"] = tokenizer.vocab_size
        try:
            arch = arch.replace(**changes)
        except ConfigError as e:
            raise ConfigError(f"arch overrides {cfg.arch}: {e}") from None
        model = checkpoints.create_model(arch, tokenizer=tokenizer).train()
        if cfg.pos_init != "random":
            model.visual.init_positions(cfg.pos_init)
        return model

    def _make_tokenizer(self, context_length: int):
        from ..tokenizer import Tokenizer, find_openai_vocab

        cfg = self.cfg
        if cfg.tokenizer == "openai":
            return Tokenizer.from_openai(find_openai_vocab(), context_length=context_length)
        if cfg.tokenizer == "model":
            raise ConfigError("tokenizer=model needs a checkpoint in `model`, not an architecture name")
        captions = self._corpus(cfg.tokenizer_corpus)
        return Tokenizer.train(captions, vocab_size=cfg.vocab_size, context_length=context_length)

    def _corpus(self, n: int) -> list[str]:
        n = min(n, len(self.source)) if hasattr(self.source, "__len__") else n
        if hasattr(self.source, "captions"):
            return list(self.source.captions(n))
        return [self.source.load(i)[1] for i in range(n)]

    # --- checkpoints -----------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        return found[-1] if found else None

    def save_checkpoint(self) -> Path | None:
        if self.rank == 0:
            path = self.ckpt_dir / f"step_{self.step:08d}.pt"
            atomic_torch_save({
                "step": self.step, "elapsed": self.elapsed, "version": __version__,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": torch.get_rng_state(), "config": self.cfg.to_dict(),
                "model_config": self.model.config.to_json(), "tokenizer": self.model.tokenizer.to_json(),
                "data_stats": json.dumps(self.stream.stats),
            }, path)
            old = sorted(self.ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for p in old[:-self.cfg.keep_checkpoints]:
                p.unlink(missing_ok=True)
        if self.world > 1:
            dist.barrier()
        return self.latest_checkpoint()

    def resume(self, path: Path | None = None) -> bool:
        """Restore the latest (or given) checkpoint of this run; False when there is none."""
        path = path or self.latest_checkpoint()
        if path is None:
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds on a damaged file
            raise CheckpointError(f"cannot read training checkpoint {path} ({e}); delete it to resume from "
                                  "the one before") from None
        if state["model_config"] != self.model.config.to_json():
            raise CheckpointError(f"{path} was written for another architecture; use a new out_dir")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.stream.stats.update(json.loads(state.get("data_stats", "{}")))
        self._truncate_metrics()
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def _truncate_metrics(self) -> None:
        path = self.out / "metrics.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- one step --------------------------------------------------------------------------------
    def _features(self, images: torch.Tensor, tokens: torch.Tensor, negatives: torch.Tensor | None):
        with torch.no_grad() if self.cfg.lock == "image" else contextlib.nullcontext():
            img = _image_features(self.model, images.to(self.device))
        with torch.no_grad() if self.cfg.lock == "text" else contextlib.nullcontext():
            if negatives is None:
                return img, self.model.encode_text(tokens, normalize=True), None
            txt = self.model.encode_text(torch.cat([tokens, negatives]), normalize=True)   # one pass for both
        return img, txt[:len(tokens)], txt[len(tokens):]

    def _augment(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """Noise augmentation (noise_aug > 0): every other sample of the global batch gets Gaussian
        noise of a std drawn up to noise_aug. Drawn from (seed, step) for the whole global batch and
        sliced per rank, so resumed and multi-process runs see exactly the same noise."""
        if self.cfg.noise_aug <= 0:
            return images
        n, rest = images.shape[0], images.shape[1:]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        total = n * self.world
        std = torch.rand(total, generator=g) * self.cfg.noise_aug
        std[1::2] = 0.0
        noise = torch.randn(total, *rest, generator=g) * std.view(-1, 1, 1, 1)
        lo = self.rank * n
        return (images + noise[lo:lo + n]).clamp(0, 1)

    def _attack_start(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """The attack's random start, drawn from (seed, step) over the global batch and sliced per
        rank: resumed and multi-process runs attack identically."""
        n, rest = images.shape[0], images.shape[1:]
        lo = self.rank * n
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_033 + step + 7)
        return torch.randn(n * self.world, *rest, generator=g)[lo:lo + n].to(self.device)

    def _train_mode(self) -> None:
        """Training mode, with a locked image tower kept in eval mode (its norm statistics stay)."""
        self.model.train()
        if self.cfg.lock == "image":
            self.model.visual.eval()

    @contextlib.contextmanager
    def _eval_mode(self):
        """The model in eval mode for an attack (norm statistics untouched), restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            if was_training:
                self._train_mode()

    def _adversarial(self, images: torch.Tensor, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """adv_objective 'contrastive' (adv_eps > 0): every other sample of the global batch (the
        half that noise_aug leaves clean) is moved, within an L2 ball of radius adv_eps, to where
        the model matches it worst to its own caption among the batch's captions. Only that half
        goes through the attack, with the model in eval mode (norm statistics untouched)."""
        cfg = self.cfg
        if cfg.adv_eps <= 0 or cfg.adv_objective != "contrastive":
            return images
        images = images.to(self.device)
        start = self._attack_start(images, step)
        first = (self.rank * len(images)) % 2                           # global positions 0, 2, 4 ...
        pick = torch.arange(first, len(images), 2, device=self.device)  # this rank's attacked samples
        labels = self.rank * len(images) + pick                         # their captions in the global batch
        with self._eval_mode():
            with torch.no_grad():
                txt = gather_features(self.model.encode_text(tokens, normalize=True)).float()
                scale = self.model.logit_scale.exp()

            def mismatch(x: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(scale * _image_features(self.model, x) @ txt.T, labels, reduction="sum")

            out = images.clone()
            out[pick] = l2_attack(images[pick], mismatch, cfg.adv_eps, cfg.adv_steps, start[pick])
        return out

    def _anchor_step(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """adv_objective 'anchor': the image tower learns to give every picture within adv_eps of
        an image the embedding the starting model gave the clean image (1 - cosine, averaged);
        the text tower and the temperature do not change, so zero-shot prompts keep their meaning.
        Needs a checkpoint to start from (`model=PATH`): it is the frozen reference."""
        cfg = self.cfg
        images = images.to(self.device)
        with torch.no_grad():
            target = _image_features(self.reference, images)

        def drift(x: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:     # summed over samples
            return (1 - (_image_features(self.model, x) * tgt).sum(dim=-1)).sum()

        adv = images
        if cfg.adv_eps > 0:
            with self._eval_mode():
                adv = l2_attack(images, lambda x: drift(x, target), cfg.adv_eps, cfg.adv_steps,
                                self._attack_start(images, step))
        total = 0.0
        for chunk, tgt in zip(adv.chunk(cfg.accum_steps), target.chunk(cfg.accum_steps)):
            loss = drift(chunk, tgt) / len(images)                     # micro-batch sums: the batch mean
            loss.backward()
            total += float(loss.detach())
        return torch.tensor(total)

    def _loss(self, img, txt, neg) -> torch.Tensor:
        neg = gather_features(neg) if neg is not None else None
        return clip_loss(gather_features(img), gather_features(txt), self.model.logit_scale.exp(), neg)

    def train_step(self, step: int) -> float:
        images, captions = self.stream.batch(step)                      # this rank's slice (uint8)
        images = self._augment(images.float() / 255.0, step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.adv_objective == "anchor":
            loss = self._anchor_step(images, step)
            return self._update(step, loss)
        tokens = self.model.tokenize(captions, truncate=True)
        images = self._adversarial(images, tokens, step)
        negatives = None
        if self.cfg.hard_negatives:
            negatives = self.model.tokenize(self.stream.negatives(step), truncate=True)
        k = self.cfg.accum_steps
        img_chunks, tok_chunks = images.chunk(k), tokens.chunk(k)
        neg_chunks = negatives.chunk(k) if negatives is not None else [None] * k
        if k == 1:
            loss = self._loss(*self._features(images, tokens, negatives))
            loss.backward()
        else:
            # exact accumulation: features of every micro-batch first (no graph), then each micro-batch
            # again with its graph while the others stay fixed; the summed gradients equal the full batch's
            with torch.no_grad():
                cached = [self._features(*c) for c in zip(img_chunks, tok_chunks, neg_chunks)]
            for j, chunk in enumerate(zip(img_chunks, tok_chunks, neg_chunks)):
                fresh = self._features(*chunk)
                parts = [fresh if m == j else c for m, c in enumerate(cached)]
                feats = [torch.cat([p[f] for p in parts]) if parts[0][f] is not None else None for f in range(3)]
                loss = self._loss(*feats)
                # logit_scale's gradient is complete in each micro-batch's loss: count it once
                loss.backward()
                if j == 0:
                    scale_grad = self.model.logit_scale.grad.clone()
            self.model.logit_scale.grad.copy_(scale_grad)
        return self._update(step, loss)

    def _update(self, step: int, loss: torch.Tensor) -> float:
        """Average the gradients over ranks, clip, schedule and step; the logit scale stays <= 100."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        average_gradients(params, self.world)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        lr = lr_at(self.cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return float(loss.detach())

    # --- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = True) -> Path:
        cfg = self.cfg
        if resume:
            self.resume()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        window_t, window_n = time.perf_counter(), 0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step(self.step)
            self.elapsed += time.perf_counter() - t0
            self.step += 1
            window_n += cfg.batch_size
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", scale=f"{self.model.logit_scale.exp().item():.1f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                self._log({"step": self.step, "loss": round(loss, 5), "lr": lr_at(cfg, self.step - 1),
                           "logit_scale": round(self.model.logit_scale.exp().item(), 3),
                           "samples_per_s": round(window_n / max(1e-9, now - window_t), 1),
                           "train_seconds": round(self.elapsed, 1),
                           "broken": self.stream.stats.get("broken", 0)})
                window_t, window_n = now, 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._evaluate()
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self._mix_with_start()
        metrics = self._evaluate()
        return self.export(metrics)

    @torch.no_grad()
    def _mix_with_start(self) -> None:
        """wise < 1: the weights become (1 - wise) x the starting checkpoint's + wise x the tuned ones
        (weight-space ensembling of a fine-tune with its start, evaluated and exported as one model;
        the checkpoints keep the tuned weights, so a resumed run mixes the same way)."""
        if self.cfg.wise >= 1.0:
            return
        start = checkpoints.load(self.cfg.model).state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(start[name].to(value.device, value.dtype), 1.0 - self.cfg.wise)

    def _evaluate(self) -> dict:
        if self.eval_fn is None or self.rank != 0:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.eval_fn(self.model)
        finally:
            self._train_mode()
        self._log({"step": self.step, "eval": metrics})
        return metrics

    def export(self, metrics: dict) -> Path:
        """Write model.safetensors (and model-fp16.safetensors) with a model card."""
        path = self.out / "model.safetensors"
        if self.rank == 0:
            card = self.model_card(metrics)
            self.model.eval()
            checkpoints.save(self.model, path, model_card=card)
            if self.cfg.export_fp16:
                checkpoints.save(self.model, self.out / "model-fp16.safetensors", dtype=torch.float16, model_card=card)
            (self.out / "MODEL_CARD.md").write_text(card)
            self._pictures()
            self.model.train()
        if self.world > 1:
            dist.barrier()
        return path

    def _pictures(self) -> None:
        """Training curves and (on world data) zero-shot confusion matrices, when matplotlib is here."""
        from ..errors import ClipguideError
        from . import report

        try:
            report.plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            if self.eval_fn is not None:
                report.plot_confusion(self.model, self.out / "confusion.png", n=self.cfg.eval_samples)
        except ClipguideError as e:          # matplotlib missing: the model is written all the same
            log.warning("no model-card pictures: %s", e)

    def model_card(self, metrics: dict) -> str:
        cfg = self.cfg
        last = next((h for h in reversed(self.history) if "loss" in h), {})
        lines = [
            f"# {Path(cfg.out_dir).name}",
            "",
            f"CLIP model trained by clipguide {__version__} with contrastive (symmetric InfoNCE) loss.",
            "",
            f"- command: `{shlex.join(['clipguide'] + sys.argv[1:]) if sys.argv[0].endswith(('clipguide', '__main__.py')) else 'Trainer(TrainConfig(...)).run()'}`",
            f"- architecture: {cfg.model} {json.dumps(cfg.arch) if cfg.arch else ''} "
            f"({self.model.num_parameters():,} parameters, {self.model.config.vision.image_size} px input)",
            f"- data: {cfg.data}; steps: {cfg.steps}; global batch: {cfg.batch_size}; seed: {cfg.seed}; "
            f"processes: {self.world}; precision: {cfg.precision}",
            f"- optimiser: AdamW lr {cfg.lr} (warm-up {cfg.warmup}, cosine to {cfg.min_lr}), "
            f"weight decay {cfg.weight_decay}, betas {list(cfg.betas)}",
            *([f"- exported weights: {1 - cfg.wise:g} x the starting checkpoint's ({cfg.model}) + {cfg.wise:g} x "
               f"the fine-tuned ones (wise={cfg.wise:g})"] if cfg.wise < 1.0 else []),
            f"- training time: {self.elapsed / 60:.1f} min; final loss {last.get('loss')}; "
            f"logit scale {last.get('logit_scale')}",
            f"- data: {json.dumps(self.stream.stats)}",
            f"- full config: `{json.dumps(cfg.to_dict(), sort_keys=True)}`",
            "",
            "## Evaluation",
            "",
            "```json",
            json.dumps(metrics, indent=2),
            "```",
        ]
        if cfg.model_card:
            lines += ["", cfg.model_card]
        return "\n".join(lines) + "\n"
