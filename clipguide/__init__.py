"""clipguide: text-guided image generation and editing with CLIP as a loss.

Public API (everything else is internal and may change)::

    model = clipguide.load("default")                  # or "openai:ViT-B-32", a file, an HF directory
    feats = model.encode_image(model.preprocess(images))
    text = model.encode_text(model.tokenize(["a red circle"]))
"""
from .checkpoints import FORMATS, bundled_models, create_model, load, save
from .errors import (CheckpointError, ClipguideError, ConfigError, InputError, TextTooLongError,
                     WeightsNotFoundError)
from .generators import EDIT_ONLY, GENERATORS, SEARCHING, build_generator, has_bundled_generator, load_network
from .generators.prior import LatentPrior, Prior, TokenPrior, load_prior
from .guide import CLIPLoss, Cutouts, FourierImage, PixelImage, Prompt, StopSteering, parse_prompts, steer
from .guide.edit import edit_image
from .guide.suite import guided_image as generate_image
from .models import CLIP, CLIPConfig, TextConfig, VisionConfig, get_config, list_models
from .preprocess import Preprocess, load_image, save_image, tensor_to_pil
from .tokenizer import Tokenizer
from .version import __version__

__all__ = [
    "__version__",
    # models
    "CLIP", "CLIPConfig", "VisionConfig", "TextConfig", "list_models", "get_config", "create_model",
    # checkpoints
    "load", "save", "bundled_models", "FORMATS",
    # guidance
    "CLIPLoss", "Cutouts", "Prompt", "parse_prompts", "PixelImage", "FourierImage", "steer", "StopSteering",
    "generate_image", "edit_image",
    # generators
    "GENERATORS", "EDIT_ONLY", "SEARCHING", "build_generator", "load_network", "has_bundled_generator",
    "Prior", "LatentPrior", "TokenPrior", "load_prior",
    # text and images
    "Tokenizer", "Preprocess", "load_image", "save_image", "tensor_to_pil",
    # errors
    "ClipguideError", "ConfigError", "CheckpointError", "InputError", "TextTooLongError", "WeightsNotFoundError",
]
