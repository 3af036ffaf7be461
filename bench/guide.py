"""One guidance step (cutouts -> CLIP image tower -> spherical loss -> gradient to the pixels) with
clipguide.CLIPLoss against a baseline written the way public guidance scripts do it: open_clip with
frozen weights, a Python loop that crops and pools one cutout at a time, and the spherical loss.

Same process, same weights, same text, interleaved runs, medians. Also prints the share of the step
spent in augmentation, the bf16 gradient's cosine to fp32, and how the step time grows with the
number of cutouts and the image size.

    python bench/guide.py                      # ViT-B-32, 224 px, 32 cutouts
    python bench/guide.py --arch ViT-nano --size 64 --cutouts 16 --skip-scaling
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, versus  # noqa: E402


def baseline_cutouts(image: torch.Tensor, size: int, n: int, power: float = 1.0) -> torch.Tensor:
    """One crop at a time, each pooled to `size`: the common script pattern."""
    _, _, h, w = image.shape
    largest, smallest = min(h, w), min(h, w, size)
    views = []
    for _ in range(n):
        side = int(torch.rand(()) ** power * (largest - smallest) + smallest)
        ox = int(torch.randint(0, w - side + 1, ()))
        oy = int(torch.randint(0, h - side + 1, ()))
        views.append(F.adaptive_avg_pool2d(image[:, :, oy:oy + side, ox:ox + side], size))
    return torch.cat(views)


def spherical(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--size", type=int, default=224, help="image side being guided")
    ap.add_argument("--cutouts", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())

    import open_clip

    os.environ.setdefault("CLIPGUIDE_BPE_PATH", str(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"))
    import clipguide
    from clipguide.guide import CLIPLoss, Cutouts

    torch.manual_seed(0)
    peer = open_clip.create_model(args.arch, pretrained=None).eval().requires_grad_(False)
    cfg = clipguide.get_config(args.arch).replace(activation="gelu")
    ours = clipguide.create_model(cfg).eval()
    ours.load_state_dict(peer.state_dict())
    prompt = "a gothic church at night"
    S = cfg.vision.image_size
    mean = torch.tensor(cfg.vision.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.vision.std).view(1, 3, 1, 1)
    with torch.no_grad():
        target = peer.encode_text(open_clip.tokenize([prompt]))

    def make_ours(precision: str, n: int):
        model = copy.deepcopy(ours).set_precision(precision)
        return CLIPLoss(model, prompt, cutouts=Cutouts(size=S, n=n, overview=2, noise=0.05))

    def baseline_step(image: torch.Tensor, n: int) -> torch.Tensor:
        x = image.clone().requires_grad_(True)
        views = baseline_cutouts(x, S, n)
        emb = peer.encode_image((views - mean) / std)
        spherical(emb, target).mean().backward()
        return x.grad

    def our_step(loss_fn, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
        x = image.clone().requires_grad_(True)
        loss_fn(x, torch.Generator().manual_seed(seed)).backward()
        return x.grad

    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    fp32, bf16 = make_ours("fp32", args.cutouts), make_ours("bf16", args.cutouts)
    t = interleaved({"baseline_fp32": lambda: baseline_step(image, args.cutouts),
                     "clipguide_fp32": lambda: our_step(fp32, image),
                     "clipguide_bf16": lambda: our_step(bf16, image)}, repeats=args.repeats)
    g32, g16 = our_step(fp32, image, 5), our_step(bf16, image, 5)
    cos = F.cosine_similarity(g32.flatten(), g16.flatten(), dim=0).item()
    aug = fp32.cutouts

    def augment_only():
        x = image.clone().requires_grad_(True)
        aug(x, torch.Generator().manual_seed(0)).square().mean().backward()

    t_aug = interleaved({"aug": augment_only}, repeats=args.repeats)["aug"]
    row = {"task": "guidance_step", "arch": args.arch, "image": args.size, "cutouts": args.cutouts,
           **versus(t, "baseline_fp32", digits=1),
           "bf16_grad_cosine_to_fp32": round(cos, 4),
           "augmentation_share_fp32": round(t_aug / t["clipguide_fp32"], 3),
           "augmentation_share_bf16": round(t_aug / t["clipguide_bf16"], 3)}
    print(json.dumps(row), flush=True)
    if args.skip_scaling:
        return
    for n in (8, 16, 32, 64):
        fn = make_ours("bf16", n)
        tt = interleaved({"b": lambda: baseline_step(image, n), "o": lambda: our_step(fn, image)}, repeats=3)
        print(json.dumps({"task": "scaling_cutouts", "cutouts": n, "baseline_fp32_ms": round(tt["b"] * 1e3, 1),
                          "clipguide_bf16_ms": round(tt["o"] * 1e3, 1)}), flush=True)
    for side in (224, 384, 512):
        img = torch.rand(1, 3, side, side)
        fn = make_ours("bf16", args.cutouts)
        tt = interleaved({"b": lambda: baseline_step(img, args.cutouts), "o": lambda: our_step(fn, img)}, repeats=3)
        print(json.dumps({"task": "scaling_image_size", "image": side, "baseline_fp32_ms": round(tt["b"] * 1e3, 1),
                          "clipguide_bf16_ms": round(tt["o"] * 1e3, 1)}), flush=True)


if __name__ == "__main__":
    main()
