"""Guidance: CLIP similarity losses, augmentations and prompts for steering image generators."""
from .augment import CutoutParams, Cutouts
from .loss import LOSS_FORMS, CLIPLoss, encode_text_long
from .losses import cosine_distance, directional_distance, spherical_distance
from .params import PARAMETERIZATIONS, FourierImage, GradedImage, PixelImage
from .prompts import Prompt, parse_prompt, parse_prompts
from .regularisers import REGULARISERS, l2_to, range_penalty, saturation, total_variation
from .score import ScoreReport, augmented_score, clip_score, judge_choice, score
from .steer import StepInfo, SteerResult, StopSteering, steer

__all__ = ["CLIPLoss", "Cutouts", "CutoutParams", "Prompt", "parse_prompt", "parse_prompts",
           "spherical_distance", "cosine_distance", "directional_distance", "encode_text_long", "LOSS_FORMS",
           "PixelImage", "FourierImage", "GradedImage", "PARAMETERIZATIONS", "total_variation", "range_penalty",
           "saturation", "l2_to", "REGULARISERS", "steer", "SteerResult", "StepInfo", "StopSteering",
           "score", "ScoreReport", "clip_score", "augmented_score", "judge_choice"]
