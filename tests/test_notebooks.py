"""The artists' notebooks in examples/ run top to bottom on the bundled models, and make what they
say they make (each notebook also asserts on its own results in its cells)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the [test] extra (nbclient)")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _run(name: str, workdir: Path):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or json.dumps(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_there_are_three_notebooks_without_stored_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_generate.ipynb", "02_edit_a_photo.ipynb", "03_train_your_own.ipynb"]
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{p.name} carries outputs"


def test_generate_notebook(tmp_path):
    nb = _run("01_generate.ipynb", tmp_path)
    for name in ("church.png", "weights.png", "generators.png"):
        assert (tmp_path / name).stat().st_size > 500
    text = _text(nb)
    assert "prompts recorded in the PNG" in text and "fourier" in text and "pixels" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 3


def test_edit_notebook(tmp_path):
    nb = _run("02_edit_a_photo.ipynb", tmp_path)
    assert (tmp_path / "edits.png").is_file()
    assert "the photo: " in _text(nb) and "outside" in _text(nb)


def test_train_your_own_notebook(tmp_path):
    nb = _run("03_train_your_own.ipynb", tmp_path)
    assert len(list((tmp_path / "my_pictures").glob("*.txt"))) == 384
    assert (tmp_path / "my_clip" / "model.safetensors").is_file()
    assert (tmp_path / "mine.png").is_file()
    assert "right (chance 25%)" in _text(nb)
    shutil.rmtree(tmp_path / "my_pictures")
