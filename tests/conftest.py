"""Shared fixtures. Tests run offline on the CPU with tiny configurations."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CLIPGUIDE_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _open_clip_vocab() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
        return path if path.is_file() else None
    except ImportError:
        return None


OPENAI_VOCAB = _open_clip_vocab()
if OPENAI_VOCAB is not None:
    # the test environment's copy of OpenAI's vocabulary (open_clip ships it); the library itself
    # looks for it in its cache folder or CLIPGUIDE_BPE_PATH
    os.environ.setdefault("CLIPGUIDE_BPE_PATH", str(OPENAI_VOCAB))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPGUIDE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def openai_vocab() -> Path:
    assert OPENAI_VOCAB is not None, "open_clip_torch (a test dependency) must be installed"
    return OPENAI_VOCAB
