"""The contrastive loss: symmetric InfoNCE over a batch of paired image and text features.

A pure function of features and the logit scale; in a distributed run the features of every rank
are gathered first, with gradients flowing back to the rank that computed them."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """Concatenate `features` (B, E) from every rank in rank order -> (world * B, E), keeping the
    autograd graph: the gradient of the gathered tensor flows back to each rank's own slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), dim=0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              negative_features: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies; row i of each matrix is a pair.

    Features should be L2-normalised; `logit_scale` is the multiplier (exp of the learnt log scale).
    `negative_features` (M, E), extra texts that match no image (hard negatives), join the
    candidates of the image->text direction."""
    logits = logit_scale * image_features @ text_features.T                # (N, N)
    labels = torch.arange(logits.shape[0], device=logits.device)
    i2t = logits
    if negative_features is not None:
        i2t = torch.cat([logits, logit_scale * image_features @ negative_features.T], dim=1)   # (N, N + M)
    return (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels)) / 2
