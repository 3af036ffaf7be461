"""Contrastive training of CLIP encoders: data sources, loss, trainer, evaluation."""
