"""Guidance: CLIP similarity losses, augmentations and prompts for steering image generators."""
from .augment import CutoutParams, Cutouts
from .loss import LOSS_FORMS, CLIPLoss, encode_text_long
from .losses import cosine_distance, directional_distance, spherical_distance
from .prompts import Prompt, parse_prompt, parse_prompts

__all__ = ["CLIPLoss", "Cutouts", "CutoutParams", "Prompt", "parse_prompt", "parse_prompts",
           "spherical_distance", "cosine_distance", "directional_distance", "encode_text_long", "LOSS_FORMS"]
