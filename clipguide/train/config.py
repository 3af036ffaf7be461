"""Training configuration: a JSON file plus `--set key=value` overrides, checked against the dataclass."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..typedconfig import check_fields, parse_override

PRESETS = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    model: str = "world-vit"          # architecture name (train from scratch) or a loadable checkpoint (fine-tune)
    arch: dict[str, Any] = field(default_factory=dict)   # overrides of the architecture, e.g. {"vision.width": 192}
    data: str = "world"               # data source spec, see clipguide.train.data.open_source
    pos_init: str = "random"          # image position embedding init: random | sincos (2-D sine-cosine)
    noise_aug: float = 0.0            # half the images get Gaussian noise of std up to this (smoother guide gradients)
    adv_eps: float = 0.0              # L2 radius (pixels in [0, 1]) of adversarial training images; 0: off
    adv_steps: int = 3                # projected-gradient steps that find them
    adv_objective: str = "contrastive"   # contrastive: half the batch attacked, InfoNCE | anchor: fine-tune the
                                         # image tower to keep the starting model's embeddings under attack
    wise: float = 1.0                 # fine-tuning: export (1 - wise) x the starting weights + wise x the tuned ones
    lock: str = ""                    # "" | "text" | "image": that tower's weights stay fixed (fine-tuning one tower)
    hard_negatives: bool = False      # add each sample's minimal-edit caption as an extra negative (world data)
    tokenizer: str = "auto"           # auto | train | openai | model  (auto: the checkpoint's, else train one)
    vocab_size: int = 1024            # when a tokenizer is trained from the data's captions
    tokenizer_corpus: int = 50000     # captions read to train it
    steps: int = 1000
    batch_size: int = 256             # global batch over all processes and accumulation steps
    accum_steps: int = 1              # micro-batches per step (exact: features cached, loss over the full batch)
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    max_grad_norm: float = 0.0        # 0: no clipping
    precision: str = "bf16"           # bf16 (autocast) | fp32
    grad_checkpointing: bool = False
    seed: int = 0
    out_dir: str = "runs/clip"
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0               # 0: evaluate only at the end
    eval_samples: int = 500
    num_workers: int = 0
    threads: int = 0                  # torch threads per process, 0: leave as is
    export_fp16: bool = True          # also write model-fp16.safetensors at the end
    model_card: str = ""              # extra text for the model card

    def validate(self) -> "TrainConfig":
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision {self.precision!r} must be bf16 or fp32")
        if not 0.0 <= self.noise_aug <= 1.0:
            raise ConfigError(f"noise_aug {self.noise_aug} must lie in [0, 1]")
        if self.adv_eps < 0 or self.adv_steps < 1:
            raise ConfigError(f"adv_eps must be >= 0 and adv_steps >= 1, got {self.adv_eps} and {self.adv_steps}")
        if self.adv_objective not in ("contrastive", "anchor"):
            raise ConfigError(f"adv_objective {self.adv_objective!r} must be contrastive or anchor")
        if self.adv_objective == "anchor" and self.hard_negatives:
            raise ConfigError("adv_objective=anchor trains the image tower alone: hard_negatives does not apply")
        if not 0.0 <= self.wise <= 1.0:
            raise ConfigError(f"wise {self.wise} must lie in [0, 1] (1: export the fine-tuned weights as they are)")
        if self.lock not in ("", "text", "image"):
            raise ConfigError(f"lock {self.lock!r} must be '' (train both towers), 'text' or 'image'")
        if self.lock and self.adv_objective == "anchor":
            raise ConfigError("adv_objective=anchor already keeps the text tower fixed: leave lock empty")
        if self.pos_init not in ("random", "sincos"):
            raise ConfigError(f"pos_init {self.pos_init!r} must be random or sincos")
        if self.tokenizer not in ("auto", "train", "openai", "model"):
            raise ConfigError(f"tokenizer {self.tokenizer!r} must be auto, train, openai or model")
        for name in ("steps", "batch_size", "accum_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps}")
        if len(self.betas) != 2:
            raise ConfigError("betas needs two values")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train config") -> "TrainConfig":
        return cls(**check_fields(cls, data, where)).validate()

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] = ()) -> "TrainConfig":
        data: dict[str, Any] = {}
        if path and not Path(path).exists() and (PRESETS / f"{path}.json").is_file():
            path = PRESETS / f"{path}.json"                # a preset name, e.g. "default"
        if path:
            path = Path(path)
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"config file {path} not found") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
        for item in overrides:
            key, value = parse_override(item)
            if key.startswith("arch."):
                data.setdefault("arch", {})[key[len("arch."):]] = value
            else:
                data[key] = value
        return cls.from_dict(data, where=str(path) if path else "train config")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
