"""Wall time of a whole guided generation: `steps` steps of a Fourier image at `size` px with `cutouts`
views per step, guided by the bundled default model (or, before one is bundled, the same architecture
with random weights: the time does not depend on the weights). Medians over runs.

    python bench/steer.py                         # 100 steps, 64 px, 16 cutouts, fp32 and bf16
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--cutouts", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import clipguide
    from clipguide.guide import CLIPLoss, Cutouts, FourierImage, steer

    def make_model():
        if "default" in clipguide.bundled_models():
            return clipguide.load("default"), "default"
        from clipguide.tokenizer import Tokenizer
        from clipguide.world import World

        tok = Tokenizer.train(World(seed=0).captions(range(5000)), vocab_size=1024, context_length=32)
        cfg = clipguide.get_config("world-vit").replace(**{"text.vocab_size": tok.vocab_size})
        torch.manual_seed(0)
        return clipguide.create_model(cfg, tokenizer=tok).eval(), "world-vit (random weights)"

    for precision in ("fp32", "bf16"):
        times = []
        for run in range(args.runs):
            model, name = make_model()
            model.set_precision(precision)
            loss = CLIPLoss(model, "a red star on a blue background",
                            cutouts=Cutouts(size=model.config.vision.image_size, n=args.cutouts))
            image = FourierImage(args.size, generator=torch.Generator().manual_seed(run))
            start = time.perf_counter()
            steer(image, loss, steps=args.steps, lr=0.05, seed=run, progress=False)
            times.append(time.perf_counter() - start)
        print(json.dumps({"task": "steer", "model": name, "precision": precision, "steps": args.steps,
                          "size": args.size, "cutouts": args.cutouts, "median_s": round(statistics.median(times), 2),
                          "runs_s": [round(t, 2) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
