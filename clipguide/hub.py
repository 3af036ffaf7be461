"""Named weights: where they come from, their SHA256, and where the library looks for them.

Nothing is downloaded implicitly when `CLIPGUIDE_OFFLINE=1`; when a file is missing and cannot be
fetched, the error names the file, its checksum, and the folder to put it in."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, WeightsNotFoundError

_OPENAI = "https://openaipublic.azureedge.net/clip/models/{sha}/{name}.pt"


@dataclass(frozen=True)
class RemoteWeights:
    name: str          # what users pass to clipguide.load, e.g. "openai:ViT-B-32"
    filename: str
    url: str
    sha256: str
    format: str        # checkpoint format understood by clipguide.checkpoints


def _openai(arch: str, sha: str) -> RemoteWeights:
    return RemoteWeights(f"openai:{arch}", f"{arch}.pt", _OPENAI.format(sha=sha, name=arch), sha, "openai")


REMOTE: dict[str, RemoteWeights] = {w.name: w for w in [
    _openai("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    _openai("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"),
    _openai("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"),
    _openai("ViT-B-32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    _openai("ViT-B-16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    _openai("ViT-L-14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
]}


def cache_dir() -> Path:
    """`$CLIPGUIDE_CACHE`, else `$XDG_CACHE_HOME/clipguide`, else `~/.cache/clipguide`."""
    if os.environ.get("CLIPGUIDE_CACHE"):
        return Path(os.environ["CLIPGUIDE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "clipguide"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_remote(name: str, verify: bool = True) -> tuple[Path, RemoteWeights]:
    """The local path of named remote weights, downloading them unless offline."""
    w = REMOTE[name]
    path = cache_dir() / w.filename
    if not path.exists():
        _download(w, path)
    if verify:
        got = sha256_file(path)
        if got != w.sha256:
            raise CheckpointError(f"{path} has SHA256 {got}, but {w.name} should have {w.sha256}: the file is "
                                  f"corrupted or another file; delete it and fetch it again from {w.url}")
    return path, w


def _download(w: RemoteWeights, path: Path) -> None:
    hint = (f"{w.name} needs the file {w.filename} (SHA256 {w.sha256}). Put it at {path} "
            f"(or set CLIPGUIDE_CACHE to the folder holding it); it is published at {w.url}")
    if os.environ.get("CLIPGUIDE_OFFLINE", "") not in ("", "0"):
        raise WeightsNotFoundError(f"offline (CLIPGUIDE_OFFLINE is set). {hint}")
    from tqdm.auto import tqdm

    from .atomic import atomic_path

    h = hashlib.sha256()
    try:
        with atomic_path(path, suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(w.url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=w.filename) as bar:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
            if h.hexdigest() != w.sha256:
                raise CheckpointError(f"downloaded {w.filename} has SHA256 {h.hexdigest()}, expected {w.sha256}; "
                                      "try again later")
    except OSError as e:
        raise WeightsNotFoundError(f"could not download ({e}). {hint}") from None
