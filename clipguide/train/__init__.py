"""Contrastive training of CLIP encoders: data sources, loss, trainer, evaluation.

    from clipguide.train import TrainConfig, Trainer
    cfg = TrainConfig.from_dict({"model": "world-rn", "data": "folder:my_pictures/", "steps": 1000})
    path = Trainer(cfg).run()                   # model.safetensors + model card in cfg.out_dir
"""
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
