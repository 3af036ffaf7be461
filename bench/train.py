"""Training throughput against open_clip's own trainer (open_clip_train) on the same tiny
architecture and the same data: PNG files listed in a CSV, read by each trainer's own loader.

Runs alternate (clipguide, open_clip, clipguide, open_clip, ...), each a fresh process; the
throughput of a run is the median samples/s over its steps after warm-up, and the figure printed is
the median over runs. Ratio above 1 means clipguide trains faster.

    python bench/train.py                         # world-vit, batch 128, bf16, 3 rounds
    python bench/train.py --precision fp32 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, n: int, size: int) -> Path:
    from PIL import Image

    from clipguide.world import World

    world = World(seed=123, size=size)
    images = world.render_batch(range(n), size=size)                 # uint8 (n, H, W, 3)
    rows = ["filepath,title"]
    for i in range(n):
        path = folder / f"{i:06d}.png"
        Image.fromarray(images[i].numpy() if hasattr(images[i], "numpy") else images[i]).save(path)
        caption = world.caption(i).replace('"', "'")
        rows.append(f'{path},"{caption}"')
    csv = folder / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def open_clip_config(arch: str, folder: Path) -> str:
    """The same architecture in open_clip's JSON schema (OpenAI vocabulary on both sides)."""
    import clipguide

    c = clipguide.get_config(arch)
    v, t = c.vision, c.text
    name = f"bench-{arch}"
    cfg = {"embed_dim": c.embed_dim,
           "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                          "patch_size": v.patch_size, "head_width": v.head_width, "mlp_ratio": v.mlp_ratio},
           "text_cfg": {"context_length": t.context_length, "vocab_size": 49408, "width": t.width,
                        "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
           "quick_gelu": c.activation == "quick_gelu"}
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    return name


def run_open_clip(csv: Path, model_dir: Path, name: str, args, work: Path) -> list[float]:
    code = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads({args.threads})
        import open_clip
        open_clip.add_model_config({str(model_dir)!r})
        from open_clip_train.main import main
        main(sys.argv[1:])
    """)
    logs = work / "oc_logs"
    cmd = [sys.executable, "-c", code, "--train-data", str(csv), "--dataset-type", "csv",
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", ",", "--model", name,
           "--batch-size", str(args.batch), "--epochs", "1", "--workers", "0", "--device", "cpu",
           "--precision", "amp_bf16" if args.precision == "bf16" else "fp32", "--lr", "1e-3",
           "--warmup", "10", "--log-every-n-steps", "1", "--save-frequency", "0", "--zeroshot-frequency", "0",
           "--val-frequency", "0", "--logs", str(logs), "--name", f"run{len(list(work.glob('oc_logs/*')))}",
           "--report-to", "", "--seed", "0", "--wd", "0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    text = out.stdout + out.stderr
    rates = [float(m) for m in re.findall(r"Batch \(t\): [\d.]+, ([\d.e+]+)/s,", text)]
    if out.returncode != 0 or not rates:
        raise SystemExit(f"open_clip trainer failed:\n{text[-3000:]}")
    return rates[args.warmup_steps:]


def run_clipguide(csv: Path, arch: str, args, work: Path, k: int) -> list[float]:
    out_dir = work / f"cg{k}"
    steps = args.samples // args.batch
    sets = [f"model={arch}", f"data=csv:{csv}", "tokenizer=openai", f"batch_size={args.batch}",
            f"steps={steps}", "lr=0.001", "warmup=10", "log_every=1", f"save_every={steps}",
            f"precision={args.precision}", f"out_dir={out_dir}", f"threads={args.threads}",
            "export_fp16=false", "weight_decay=0.1"]
    cmd = [sys.executable, "-m", "clipguide", "train", "--no-eval"] + sum([["--set", s] for s in sets], [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if out.returncode != 0:
        raise SystemExit(f"clipguide trainer failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return [r["samples_per_s"] for r in rows][args.warmup_steps:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="world-vit")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=3840, help="images in the CSV (one epoch per run)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    import open_clip

    os.environ.setdefault("CLIPGUIDE_BPE_PATH", str(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"))
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "data").mkdir()
        (work / "models").mkdir()
        csv = make_dataset(work / "data", args.samples, 64)
        name = open_clip_config(args.arch, work / "models")
        ours, theirs = [], []
        for k in range(args.rounds):
            o = statistics.median(run_clipguide(csv, args.arch, args, work, k))
            t = statistics.median(run_open_clip(csv, work / "models", name, args, work))
            ours.append(o)
            theirs.append(t)
            print(json.dumps({"round": k, "clipguide_samples_per_s": round(o, 1),
                              "open_clip_samples_per_s": round(t, 1)}), flush=True)
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(json.dumps({"task": "train_throughput", "arch": args.arch, "batch": args.batch,
                      "precision": args.precision, "clipguide_samples_per_s": round(mo, 1),
                      "open_clip_samples_per_s": round(mt, 1), "ratio": round(mo / mt, 2)}))


if __name__ == "__main__":
    main()
