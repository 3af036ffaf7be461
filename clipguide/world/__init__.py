"""The procedural captioned world: the project's built-in data for training and evaluating small
CLIP models without downloads.

    from clipguide.world import World, get_task, oracle, parse_caption
    world = World(seed=0, split="train")
    sample = world.sample(7)            # image (3, 64, 64) float, caption, attrs
    images = world.render_batch(range(512), size=64)      # uint8 (512, 64, 64, 3)

Modules: vocab (words and palette), spec / render / raster / shapes / scenes (drawing),
sampling (random specs per kind and split), heldout (compositions kept out of training),
captions, parse, attributes / oracle (ground truth and image checks), tasks (zero-shot tasks and
retrieval pairs), sheet (contact sheets)."""
from . import heldout, oracle, vocab
from .attributes import ground_truth
from .captions import canonical_caption, detailed_caption
from .heldout import (HELDOUT_COLOUR_SHAPE, HELDOUT_COUNT_SHAPE, HELDOUT_RELATION_COLOURS,
                      HELDOUT_SCENES, heldout_hits, is_heldout)
from .oracle import OracleReport, check
from .parse import parse_caption
from .render import render
from .sheet import contact_sheet
from .spec import BackgroundSpec, LandscapeSpec, SceneSpec, ShapeSpec
from .tasks import TASKS, TEMPLATES, EvalItem, EvalTask, eval_items, get_task, retrieval_pairs
from .world import Sample, World, WorldConfig

__all__ = [
    "World", "WorldConfig", "Sample", "render", "SceneSpec", "ShapeSpec", "BackgroundSpec",
    "LandscapeSpec", "canonical_caption", "detailed_caption", "parse_caption", "ground_truth",
    "check", "OracleReport", "oracle", "heldout", "vocab", "is_heldout", "heldout_hits",
    "HELDOUT_COLOUR_SHAPE", "HELDOUT_COUNT_SHAPE", "HELDOUT_RELATION_COLOURS", "HELDOUT_SCENES",
    "TASKS", "TEMPLATES", "EvalTask", "EvalItem", "get_task", "eval_items", "retrieval_pairs",
    "contact_sheet",
]
