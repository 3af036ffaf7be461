"""Copy a finished training run into the package as a bundled model.

    python tools/bundle.py runs/default default        # a CLIP run (clipguide train)
    python tools/bundle.py runs/gen-diffusion          # a generator run (clipguide train-generator)
    python tools/bundle.py runs/gen-vqgan/snapshot-002000   # or a snapshot of one part-way (--snapshot)
    python tools/bundle.py runs/prior-vqgan            # a text prior (clipguide train-prior)

A CLIP run gives clipguide/assets/default.safetensors (the run's fp16 export), default.md (its model
card, with the pictures linked) and default-curves.png / default-confusion.png. A generator run gives
the family's bundled network under the name the generators look for (world-diffusion/,
world-vqgan.safetensors, world-stylegan.safetensors), its card (world-<family>.md) and its sheet of
unguided samples. A text-prior run (clipguide train-prior) gives world-<family>-prior.safetensors and
its card. All of them then check that every bundled file together stays under the 64 MB budget
and that the network loads."""
from __future__ import annotations

import json
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
    _check_budget(name, ASSETS / f"{name}.safetensors")
    import clipguide

    model = clipguide.load(name)
    print(f"loads as {name!r}: {model.num_parameters():,} parameters, {model.config.vision.image_size} px")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_budget(name: str, weights: Path) -> None:
    total = _size(ASSETS)
    print(f"bundled {name}: {_size(weights) / 2**20:.1f} MB; "
          f"all bundled files {total / 2**20:.1f} MB of {BUDGET / 2**20:.0f} MB")
    if total > BUDGET:
        sys.exit("over the bundled-weights budget")


def _check_fits(export: Path, target: Path) -> None:
    """Exit unless `export`, replacing `target`, keeps the bundled files within the budget."""
    others = _size(ASSETS) - (_size(target) if target.exists() else 0)
    if others + _size(export) > BUDGET:
        sys.exit(f"{export} ({_size(export) / 2**20:.1f} MB) would take the bundled files over the "
                 f"{BUDGET / 2**20:.0f} MB budget")


def bundle_generator(run: Path) -> None:
    """A finished `clipguide train-generator` run into the assets as its family's bundled network."""
    from clipguide.generators import BUNDLED, load_network

    family = json.loads(_run_config(run).read_text())["family"]
    if family not in BUNDLED:
        sys.exit(f"{run} trained a {family}, which is bundled only inside the latent diffusion pipeline trained "
                 "on it: bundle that diffusion run")
    asset = BUNDLED[family]
    export, card = run / asset, run / "MODEL_CARD.md"
    for f in (export, card):
        if not f.exists():
            sys.exit(f"{f} is missing: is the run finished?")
    stem = asset.removesuffix(".safetensors")
    load_network(family, str(export))                      # loads before anything in the package changes
    ASSETS.mkdir(exist_ok=True)
    target = ASSETS / asset
    _check_fits(export, target)
    if target.is_dir():
        shutil.rmtree(target)
    if export.is_dir():
        shutil.copytree(export, target)
    else:
        shutil.copyfile(export, target)
    text = card.read_text().replace("`samples.png`", f"`{stem}-samples.png`")
    if (run / "samples.png").is_file():
        shutil.copyfile(run / "samples.png", ASSETS / f"{stem}-samples.png")
        text += f"\n![unguided samples]({stem}-samples.png)\n"
    (ASSETS / f"{stem}.md").write_text(text)
    _check_budget(stem, target)
    load_network(family)
    print(f"loads as the bundled {family} network")


def bundle_prior(run: Path) -> None:
    """A finished `clipguide train-prior` run into the assets as the bundled prior of its family."""
    from clipguide.generators.prior import BUNDLED_PRIORS, bundled_prior_name, load_prior, prior_file

    cfg = json.loads((run / "config.json").read_text())
    name = bundled_prior_name(cfg["family"], cfg.get("kind", "mean"))
    asset = prior_file(cfg["family"], cfg.get("kind", "mean"))
    if BUNDLED_PRIORS.get(name) != asset:
        sys.exit(f"no bundled prior slot {name!r} for {asset}; add it to generators.prior.BUNDLED_PRIORS")
    export, card = run / asset, run / "MODEL_CARD.md"
    for f in (export, card):
        if not f.is_file():
            sys.exit(f"{f} is missing: is the run finished?")
    load_prior(export)                                     # loads before anything in the package changes
    target = ASSETS / asset
    _check_fits(export, target)
    shutil.copyfile(export, target)
    (ASSETS / asset.replace(".safetensors", ".md")).write_text(card.read_text())
    _check_budget(name, target)
    load_prior(name)
    print(f"loads as {name!r}")


def _is_prior_run(run: Path) -> bool:
    cfg = run / "config.json"
    return cfg.is_file() and "pairs" in json.loads(cfg.read_text())


def _run_config(run: Path) -> Path:
    """A generator run's config.json; a snapshot folder (RUN/snapshot-STEP) has its run's."""
    own = run / "config.json"
    return own if own.is_file() or not run.name.startswith("snapshot-") else run.parent / "config.json"


def _is_generator_run(run: Path) -> bool:
    cfg = _run_config(run)
    return cfg.is_file() and "family" in json.loads(cfg.read_text())


if __name__ == "__main__":
    usage = "usage: python tools/bundle.py RUN_DIR NAME (a CLIP run) | RUN_DIR (a generator run)"
    if len(sys.argv) not in (2, 3):
        sys.exit(usage)
    run = Path(sys.argv[1])
    if _is_prior_run(run):
        if len(sys.argv) == 3:
            sys.exit(f"{run} is a text-prior run: its bundled name is fixed by its family; give only RUN_DIR")
        bundle_prior(run)
    elif _is_generator_run(run):
        if len(sys.argv) == 3:
            sys.exit(f"{run} is a generator run: its bundled name is fixed by its family; give only RUN_DIR")
        bundle_generator(run)
    elif len(sys.argv) == 3:
        bundle(run, sys.argv[2])
    else:
        sys.exit(f"{run} is not a generator run: give the bundled name too ({usage})")
