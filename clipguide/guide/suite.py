"""A held-out prompt suite from the procedural world, and guided evaluation over it.

    prompts = world_prompt_suite()                   # 52 captions no training sample carries
    report, images = guided_eval(guide, judge, prompts, generator="fourier", steps=100)
    report.summary()    # judge top-1 among the suite, oracle pass rate, adversarial share ...

Every prompt names a held-out composition (a colour-shape pair, a count of a shape, two colours
side by side, a scene object under a condition), so a guide cannot pass by recalling a training
caption. The captions are mutually exclusive: no picture can truly show two of them, which makes
"the judge picks this prompt among the suite" a fair test of each picture."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError
from ..world.captions import relation_phrase, scene_phrase
from ..world.heldout import (EVAL_COLOUR_SHAPE, EVAL_SCENES, HELDOUT_COUNT_SHAPE,
                             HELDOUT_RELATION_COLOURS, TRAIN_COLOUR_SHAPE)
from ..world.vocab import COLOURS, POSITION_PHRASES, POSITIONS, count_phrase, with_article
from .score import ScoreReport, check_candidates, score

KINDS = ("object", "count", "relation", "scene")


def world_prompt_suite(kinds: Sequence[str] = KINDS, count_colours: int = 2) -> list[str]:
    """Deterministic held-out prompts: every held-out colour-shape pair once (with a position),
    each held-out (count, shape) pair in `count_colours` colours, one relation per held-out colour
    pair, and every held-out scene. 52 prompts with the defaults."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InputError(f"unknown prompt kinds {unknown}; kinds are {KINDS}")
    out: list[str] = []
    if "object" in kinds:
        for k, (c, s) in enumerate(EVAL_COLOUR_SHAPE):
            pos = POSITIONS[k % len(POSITIONS)]
            out.append(f"{with_article(f'{c} {s}')} {POSITION_PHRASES[pos][0]}")
    if "count" in kinds:
        for k, (n, s) in enumerate(sorted(HELDOUT_COUNT_SHAPE)):
            colours = [c for c in COLOURS if (c, s) in TRAIN_COLOUR_SHAPE]
            for j in range(count_colours):
                out.append(count_phrase(n, colours[(3 * k + 5 * j) % len(colours)], s))
    if "relation" in kinds:
        for k, pair in enumerate(sorted(tuple(sorted(p)) for p in HELDOUT_RELATION_COLOURS)):
            a, b = pair
            sa = [s for c, s in TRAIN_COLOUR_SHAPE if c == a][k % 4]
            sb = [s for c, s in TRAIN_COLOUR_SHAPE if c == b][(k + 2) % 4]
            rel = ("left of", "right of", "above", "below")[k % 4]
            out.append(relation_phrase((a, sa), rel, (b, sb)))
    if "scene" in kinds:
        out.extend(scene_phrase(o, c) for o, c in EVAL_SCENES)
    if len(set(out)) != len(out):
        raise AssertionError("the suite's prompts must be distinct")
    return out


def guided_image(model, prompt: str, *, generator: str = "fourier", size: int | None = None,
                 steps: int | None = None, lr: float | None = None, cutouts: int = 16, seed: int = 0,
                 tv: float | None = None,
                 frame_every: int = 0, progress: bool = True, network=None, generator_model=None,
                 generator_options: dict | None = None, init: torch.Tensor | None = None,
                 callback=None, callback_every: int = 1, run_options: dict | None = None, prior=None):
    """One picture for `prompt` (weighted and negative parts allowed: "a gothic church:1 | blurry:-0.5"):
    a generator of family `generator` (pixels, fourier, vqgan, stylegan, diffusion; its network
    `network` or loaded from `generator_model`) steered by CLIPLoss with `model`. `callback(StepInfo)`
    runs every `callback_every` steps (raise StopSteering there to end early, keeping the best
    picture). `run_options` go to the generator's run() (diffusion: guidance_scale). `steps`, `lr`
    and `tv` left None take the family's own settings (`generators.steering_defaults`). `prior`: a
    text prior (generators.prior; a Prior, a path or a bundled name) gives the start instead of the
    seeded random one; a sampling prior's draw comes from `seed`, and a search (run_options
    search=K) chooses among K of its draws. Returns the SteerResult (image, losses, provenance)."""
    from ..generators import steering_defaults
    from ..generators.prior import load_prior

    steps, lr, tv = steering_defaults(generator, steps, lr, tv)
    if prior is not None and init is not None:
        raise InputError("give either an init image or a text prior: both would set the start")
    gen, size = _generator(model, generator, size, seed, network, generator_model, generator_options, init, prompt)
    if prior is not None:
        prior = load_prior(prior)
        start_from_prior(gen, prior, model, prompt, seed)
    return _steer_prompt(gen, model, prompt, generator=generator, size=size, steps=steps, lr=lr, cutouts=cutouts,
                         seed=seed, tv=tv, frame_every=frame_every, progress=progress, callback=callback,
                         callback_every=callback_every, run_options=run_options, prior=prior)


def _generator(model, generator: str, size, seed: int, network=None, generator_model=None,
               options: dict | None = None, init: torch.Tensor | None = None, prompt: str | None = None):
    """A seeded generator drawing `prompt` (if its network reads text) and the size asked of it: a
    generator without a network of its own (pixels, Fourier) makes pictures at the guide's input
    size unless told otherwise."""
    from ..generators import build_generator, load_network

    if network is None:
        network = load_network(generator, generator_model)
    if network is None:
        size = size or model.config.vision.image_size
    gen = build_generator(generator, size=size, seed=seed, init=init, network=network, **(options or {}))
    gen.condition(prompt)
    return gen, size


# a sampling prior draws a picture's start from seed + this, apart from the steering's own draws
PRIOR_SEED_OFFSET = 104729


def prior_latent_of(gen, prior) -> torch.nn.Parameter:
    """`gen`'s one latent, checked to be what `prior` draws (family, shape, codebook)."""
    from ..generators.prior import check_prior_for

    params = gen.latent_parameters()
    if len(params) != 1:
        raise InputError(f"the {gen.family} generator has no single latent a prior could give")
    check_prior_for(prior, gen.family, params[0], getattr(gen, "codebook", None))
    return params[0]


def prior_generator(seed: int) -> torch.Generator:
    """The generator a prior's draws for the picture of seed `seed` come from."""
    return torch.Generator().manual_seed(int(seed) + PRIOR_SEED_OFFSET)


def start_from_prior(gen, prior, model, prompt: str, seed: int = 0) -> None:
    """Set `gen`'s start to what the text prior `prior` gives `prompt` read by the guide `model`. A
    sampling prior (prior.draws) draws each picture's start from `seed` and becomes the generator's
    proposer, so that a search chooses among more of its drafts of the prompt."""
    from ..generators.prior import prior_latent

    latent = prior_latent_of(gen, prior)
    if not prior.draws:
        gen.set_start(prior_latent(prior, model, [prompt]))
        return
    gen.set_start(prior_latent(prior, model, [prompt] * latent.shape[0], prior_generator(seed)))
    gen.set_proposer(lambda n, generator: prior_latent(prior, model, [prompt] * n, generator))


# run() arguments the callers set themselves; run_options may not repeat them
_OWN_ARGUMENTS = frozenset({"loss_fn", "steps", "lr", "seed", "regularisers", "frame_every", "progress", "settings",
                            "callback", "callback_every", "latent_weight", "strength"})


def check_run_options(gen, run_options: dict | None) -> None:
    """Refuse run options that `gen.run()` does not take (guidance_scale for a Fourier image) or
    that have an argument of their own, with a message instead of a TypeError."""
    import inspect

    from ..generators.base import Generator
    from .steer import steer

    if not run_options:
        return
    params = inspect.signature(type(gen).run).parameters
    taken = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
    if type(gen).run is Generator.run:                          # the base run() passes the rest to steer()
        taken |= set(inspect.signature(steer).parameters) - {"generator"}
    for key in run_options:
        if key in _OWN_ARGUMENTS:
            raise InputError(f"run option {key!r} has its own argument: pass it as {key}=...")
        if key not in taken:
            raise InputError(f"{type(gen).__name__} does not take run option {key!r}; it takes "
                             f"{sorted(taken - _OWN_ARGUMENTS)}")


def suite_loss(model, prompt: str, cutouts: int = 16):
    """The CLIPLoss the suite steers `prompt` with: `cutouts` views of at least half the picture,
    light noise, never mirrored (a flip turns "a red circle on the left" into its opposite)."""
    from .augment import Cutouts
    from .loss import CLIPLoss

    return CLIPLoss(model, prompt, cutouts=Cutouts(size=model.config.vision.image_size, n=cutouts, min_size=0.5,
                                                   noise=0.05, flip=0.0))


def _steer_prompt(gen, model, prompt: str, *, generator: str, size, steps: int, lr: float, cutouts: int, seed: int,
                  tv: float, frame_every: int = 0, progress: bool = True, callback=None, callback_every: int = 1,
                  run_options: dict | None = None, prior=None):
    from .regularisers import total_variation

    check_run_options(gen, run_options)
    loss = suite_loss(model, prompt, cutouts)
    return gen.run(loss, steps=steps, lr=lr, seed=seed,
                   regularisers=[(total_variation, tv)] if tv else (), frame_every=frame_every,
                   progress=progress, settings={"generator": generator, "size": size, "cutouts": cutouts, "tv": tv,
                                                **({"prior": prior.source} if prior is not None else {})},
                   callback=callback, callback_every=callback_every, **(run_options or {}))


def guided_eval(guide, judge, prompts: Sequence[str] | None = None, *, generator: str = "fourier",
                steps: int | None = None, lr: float | None = None, cutouts: int = 16, size: int | None = None,
                seed: int = 0, tv: float | None = None, progress: bool = True, generator_model=None,
                generator_options: dict | None = None, run_options: dict | None = None,
                candidates: Sequence[str] | None = None, prior=None) -> tuple[ScoreReport, torch.Tensor]:
    """Steer one picture per prompt with `guide`, then score them: the guide's score, an augmented
    score, the judge's top-1 among `candidates` (default: the prompts themselves; every prompt must
    be one of them), the oracle's checks, the adversarial flag (guide score up, judge score not), and
    the same judge and oracle on the generator's unguided picture from the same seed (the baseline).
    `steps`, `lr` and `tv` left None take the family's own settings. `prior`: a text prior gives each
    picture's start (then the unguided baseline is the prior's picture). Returns the report and the
    pictures (N, 3, H, W)."""
    from ..generators import load_network, steering_defaults
    from ..generators.prior import load_prior

    steps, lr, tv = steering_defaults(generator, steps, lr, tv)
    prompts = list(prompts) if prompts is not None else world_prompt_suite()
    if not prompts:
        raise InputError("the prompt suite is empty")
    candidates = list(candidates) if candidates is not None else prompts
    check_candidates(prompts, candidates)                  # before any picture is made
    network = load_network(generator, generator_model)          # once, shared by every prompt
    prior = load_prior(prior) if prior is not None else None
    images, starts = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="guided eval", unit="prompt", dynamic_ncols=True)
    for k, p in enumerate(prompts):
        gen, gen_size = _generator(guide, generator, size, seed + k, network, options=generator_options, prompt=p)
        if prior is not None:
            start_from_prior(gen, prior, guide, p, seed + k)
        with torch.no_grad():
            starts.append(gen()[0])                              # the picture the run starts from
        result = _steer_prompt(gen, guide, p, generator=generator, size=gen_size, steps=steps, lr=lr,
                               cutouts=cutouts, seed=seed + k, tv=tv, progress=False, run_options=run_options,
                               prior=prior)
        images.append(result.images[0])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    pics = torch.stack(images)
    report = score(pics, prompts, guide, judge, suite=candidates, initial_images=torch.stack(starts))
    return report, pics
