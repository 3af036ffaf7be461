"""How well a search among starts can choose: the guide's choice against the best there was.

    python tools/search_probe.py --generator diffusion --search 8 [--cfg-scale 3] [--prompts FILE]

For each prompt of the held-out suite (or FILE, one per line), the seeded start and search - 1 others
are drawn exactly as `run(..., search=N)` draws them (diffusion: initial noises and the network's
unguided drafts of them), and every picture is scored by the judge and the oracle. One JSON line
reports the share correct (judge top-1 among the suite and the oracle passing) of the seeded start,
of a random one (the mean), of the guide's choice by each search view ("whole" and "augmented"),
and of the best one (any start correct: what a perfect chooser would get). No guidance runs: this
measures the choice alone.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import clipguide
from clipguide.generators import load_network
from clipguide.generators.base import SEARCH_CHUNK, SEARCH_SEED_OFFSET, SEARCH_VIEWS, ranking_losses
from clipguide.guide.score import score
from clipguide.guide.suite import _generator, suite_loss, world_prompt_suite


def probe(guide, judge, prompts: list[str], generator: str, search: int, *, seed: int = 0, cutouts: int = 16,
          options: dict | None = None, model_path=None) -> dict:
    network = load_network(generator, model_path)
    pictures, losses = [], {view: [] for view in SEARCH_VIEWS}
    for k, prompt in enumerate(prompts):
        gen, _ = _generator(guide, generator, None, seed + k, network, options=options, prompt=prompt)
        rng = torch.Generator().manual_seed(seed + k + SEARCH_SEED_OFFSET)     # as choose_start draws
        with torch.no_grad():
            drawn = torch.cat([gen.decode(part, 0) for part in gen.start_candidates(0, search, rng).split(SEARCH_CHUNK)])
        loss = suite_loss(guide, prompt, cutouts)
        for view in SEARCH_VIEWS:                    # ranked a chunk at a time, as choose_start ranks
            losses[view].append(torch.cat([ranking_losses(loss, part, seed + k, view)
                                           for part in drawn.split(SEARCH_CHUNK)]))
        pictures.append(drawn)
        print(f"{k + 1}/{len(prompts)} {prompt}", file=sys.stderr, flush=True)
    flat = torch.cat(pictures)
    report = score(flat, [p for p in prompts for _ in range(search)], guide, judge, suite=prompts)
    right = torch.tensor([bool(j) and o is not False for j, o in zip(report.judge_correct, report.oracle_passed)])
    right = right.view(len(prompts), search)
    rows = torch.arange(len(prompts))
    out = {"generator": generator, "search": search, "n": len(prompts), "seeded": right[:, 0].float().mean().item(),
           "mean": right.float().mean().item()}
    for view in SEARCH_VIEWS:
        out[f"chosen_{view}"] = right[rows, torch.stack(losses[view]).argmin(dim=1)].float().mean().item()
    out["any"] = right.any(dim=1).float().mean().item()
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="diffusion", choices=("vqgan", "stylegan", "diffusion"))
    ap.add_argument("--generator-model", default=None, help="the network (default: the bundled one)")
    ap.add_argument("--search", type=int, default=8)
    ap.add_argument("--cfg-scale", type=float, default=None, help="diffusion: classifier-free guidance")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="diffusion: DDIM steps of each draft (default: the generator's 20; the command line's "
                    "searches draw them in --steps, 100 in 'eval guided')")
    ap.add_argument("--prompts", default=None, help="a file of prompts, one per line (default: the suite)")
    ap.add_argument("--model", default="default", help="the guide")
    ap.add_argument("--judge", default="judge")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cutouts", type=int, default=16)
    args = ap.parse_args()
    if args.search < 2:
        ap.error("--search must be at least 2 (a choice needs two starts)")
    prompts = ([line.strip() for line in open(args.prompts) if line.strip()] if args.prompts
               else world_prompt_suite())
    options = {k: v for k, v in (("cfg_scale", args.cfg_scale), ("sample_steps", args.sample_steps))
               if v is not None}
    guide, judge = clipguide.load(args.model), clipguide.load(args.judge)
    result = probe(guide, judge, prompts, args.generator, args.search, seed=args.seed, cutouts=args.cutouts,
                   options=options, model_path=args.generator_model)
    print(json.dumps({**result, **options}))


if __name__ == "__main__":
    main()
