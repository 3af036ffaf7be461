"""Copy a finished training run into the package as a bundled model.

    python tools/bundle.py runs/default default

writes clipguide/assets/default.safetensors (the run's fp16 export), default.md (its model card,
with the pictures linked) and default-curves.png / default-confusion.png, then checks that every
bundled file together stays under the 64 MB budget and that the model loads by name."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "clipguide" / "assets"
BUDGET = 64 * 2**20


def bundle(run: Path, name: str) -> None:
    weights = run / "model-fp16.safetensors"
    card = run / "MODEL_CARD.md"
    for f in (weights, card):
        if not f.is_file():
            sys.exit(f"{f} is missing: is the run finished (export_fp16=true)?")
    ASSETS.mkdir(exist_ok=True)
    shutil.copyfile(weights, ASSETS / f"{name}.safetensors")
    text = card.read_text()
    for pic in ("curves", "confusion"):
        src = run / f"{pic}.png"
        if src.is_file():
            shutil.copyfile(src, ASSETS / f"{name}-{pic}.png")
            text += f"\n![{pic}]({name}-{pic}.png)\n"
    (ASSETS / f"{name}.md").write_text(text)
    total = sum(p.stat().st_size for p in ASSETS.iterdir() if p.is_file())
    print(f"bundled {name}: {(ASSETS / f'{name}.safetensors').stat().st_size / 2**20:.1f} MB; "
          f"all bundled files {total / 2**20:.1f} MB of {BUDGET / 2**20:.0f} MB")
    if total > BUDGET:
        sys.exit("over the bundled-weights budget")
    import clipguide

    model = clipguide.load(name)
    print(f"loads as {name!r}: {model.num_parameters():,} parameters, {model.config.vision.image_size} px")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/bundle.py RUN_DIR NAME")
    bundle(Path(sys.argv[1]), sys.argv[2])
