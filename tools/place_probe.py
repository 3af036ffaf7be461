"""How well a CLIP model reads where a single object is.

    python tools/place_probe.py judge runs/judge-tw/model-fp16.safetensors [--n 300]

For n single-object pictures of each split (training and held-out colour-shape pairs), the model
chooses among the picture's detailed caption ('a small red star at the top on a plain background')
with each of the five place phrases; one JSON line per model and split gives the share it gets right
(chance 20%). Retrieval misses of a model that does not read places are mostly these."""
from __future__ import annotations

import argparse
import json

import torch

from clipguide.checkpoints import load
from clipguide.world import World
from clipguide.world.vocab import POSITION_PHRASES, POSITIONS


def probe(model, split: str, n: int, seed: int = 11) -> float:
    world = World(seed=seed, split=split, kinds={"object": 1.0})
    right = 0
    with torch.no_grad():
        for start in range(0, n, 100):
            idx = range(start, min(n, start + 100))
            images = world.render_batch(idx, fmt="float")
            feats = model.encode_image(model.preprocess(images), normalize=True)
            for k, i in enumerate(idx):
                attrs = world.attrs(i)
                said = POSITION_PHRASES[attrs["position"]][0]
                texts = [attrs["detailed"].replace(said, POSITION_PHRASES[p][0]) for p in POSITIONS]
                t = model.encode_text(model.tokenize(texts), normalize=True)
                right += int((t @ feats[k]).argmax()) == POSITIONS.index(attrs["position"])
    return right / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="bundled names or checkpoint paths")
    ap.add_argument("--n", type=int, default=300, help="pictures per split")
    args = ap.parse_args()
    for name in args.models:
        model = load(name).eval()
        for split in ("train", "eval"):
            print(json.dumps({"model": name, "split": split, "n": args.n,
                              "place_top1": round(probe(model, split, args.n), 4)}))


if __name__ == "__main__":
    main()
