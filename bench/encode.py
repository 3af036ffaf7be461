"""Encoding speed and loading memory against open_clip on the same architecture.

Same process, same weights, interleaved runs, medians. Prints one JSON line per measurement and a
summary table of ratios (> 1 means clipguide is faster).

    python bench/encode.py                    # ViT-B-32, batch 32, 7 repeats
    python bench/encode.py --arch RN50 --batch 16
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved, peak_rss_of, versus  # noqa: E402

PROMPTS = ["a gothic church at night", "a red star on a blue background", "three small green triangles",
           "a photo of a dog", "an oil painting of a lighthouse in a storm, highly detailed, trending",
           "a house in the snow", "a blue circle left of a yellow square", "the sun over a mountain"]


def load_memory(arch: str, tmp: Path) -> dict:
    """Peak RSS growth while clipguide.load reads a fp32 checkpoint of `arch`, as a ratio of file size."""
    import clipguide

    torch.manual_seed(0)
    model = clipguide.create_model(arch)
    results = {}
    for kind in ("safetensors", "torch"):
        path = tmp / f"{arch}.{kind}"
        if kind == "safetensors":
            clipguide.save(model, path)
        else:
            torch.save(model.state_dict(), path)
        code = textwrap.dedent(f"""
            import json, sys, torch
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import clipguide
            from common import vm_hwm_bytes, reset_peak
            def rss():
                for line in open('/proc/self/status'):
                    if line.startswith('VmRSS:'): return int(line.split()[1]) * 1024
            base = rss(); reset_peak()
            m = clipguide.load({str(path)!r}, format={'"open_clip"' if kind == 'torch' else None})
            print(json.dumps({{"peak_growth": vm_hwm_bytes() - base}}))
        """)
        growth = peak_rss_of(code)["peak_growth"]
        size = path.stat().st_size
        results[kind] = {"file_mb": round(size / 2**20, 1), "peak_growth_mb": round(growth / 2**20, 1),
                         "ratio": round(growth / size, 3)}
    del model
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip

    vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    os.environ.setdefault("CLIPGUIDE_BPE_PATH", str(vocab))   # the peer's copy of OpenAI's vocabulary
    import clipguide

    torch.manual_seed(0)
    peer = open_clip.create_model(args.arch, pretrained=None).eval()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "peer.pt"
        torch.save(peer.state_dict(), path)
        ours = clipguide.load(path, format="open_clip")
    import copy

    ours_bf16 = copy.deepcopy(ours).set_precision("bf16")

    size = ours.config.vision.image_size
    images = torch.rand(args.batch, 3, size, size)
    one = images[:1]
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    tokens = open_clip.tokenize(texts)
    assert torch.equal(tokens, ours.tokenize(texts)), "tokenizers disagree"
    rows = []
    with torch.inference_mode():
        for task, x, fo, fp in [
            ("image_throughput", images, ours.encode_image, peer.encode_image),
            ("image_latency_b1", one, ours.encode_image, peer.encode_image),
            ("text_throughput", tokens, ours.encode_text, peer.encode_text),
            ("text_latency_b1", tokens[:1], ours.encode_text, peer.encode_text),
        ]:
            low = ours_bf16.encode_image if task.startswith("image") else ours_bf16.encode_text
            t = interleaved({"open_clip_fp32": lambda: fp(x), "clipguide_fp32": lambda: fo(x),
                             "clipguide_bf16": lambda: low(x)}, repeats=args.repeats)
            cos = torch.cosine_similarity(fo(x), low(x)).min().item()
            n = x.shape[0]
            row = {"task": task, "arch": args.arch, "batch": n, **versus(t, "open_clip_fp32", digits=2),
                   "bf16_min_cosine_to_fp32": round(cos, 5),
                   "clipguide_fp32_items_per_s": round(n / t["clipguide_fp32"], 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as d:
            mem = load_memory(args.arch, Path(d))
        print(json.dumps({"task": "load_memory", "arch": args.arch, **mem}), flush=True)

    print(f"\n{'task':<18}{'open_clip fp32':>16}{'clipguide fp32':>16}{'bf16':>10}{'fp32 x':>8}{'bf16 x':>8}{'cos':>9}")
    for r in rows:
        print(f"{r['task']:<18}{r['open_clip_fp32_ms']:>14}ms{r['clipguide_fp32_ms']:>14}ms"
              f"{r['clipguide_bf16_ms']:>8}ms{r['fp32_speedup']:>8}{r['bf16_speedup']:>8}"
              f"{r['bf16_min_cosine_to_fp32']:>9}")


if __name__ == "__main__":
    main()
