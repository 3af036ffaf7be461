"""How well a CLIP model reads where a single object is.

    python tools/place_probe.py judge runs/judge-tw/model-fp16.safetensors [--n 300]

For n single-object pictures of each split (training and held-out colour-shape pairs), the model
chooses among the picture's detailed caption ('a small red star at the top on a plain background')
with each of the five place phrases; one JSON line per model and split gives the share it gets right
(chance 20%). Retrieval misses of a model that does not read places are mostly these."""
from __future__ import annotations

import argparse
import json

from clipguide.checkpoints import load
from clipguide.train.evaluate import zero_shot
from clipguide.world import World
from clipguide.world.captions import detailed_caption
from clipguide.world.vocab import POSITIONS


def probe(model, split: str, n: int, seed: int = 11) -> float:
    """Top-1 among the five place variants of each picture's detailed caption."""
    world = World(seed=seed, split=split, kinds={"object": 1.0})
    attrs = [world.attrs(i) for i in range(n)]
    candidates = [[detailed_caption({**a, "position": p}) for p in POSITIONS] for a in attrs]
    labels = [POSITIONS.index(a["position"]) for a in attrs]
    return zero_shot(model, world.render_batch(range(n), fmt="float"), labels, candidates)["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="bundled names or checkpoint paths")
    ap.add_argument("--n", type=int, default=300, help="pictures per split")
    args = ap.parse_args()
    for name in args.models:
        model = load(name).eval()
        for split in ("train", "eval"):
            print(json.dumps({"model": name, "split": split, "n": args.n,
                              "place_top1": probe(model, split, args.n)}))


if __name__ == "__main__":
    main()
