"""Image-text pairs for contrastive training: sources, a deterministic batch stream and a shard exporter.

A *source* is map-style: `len(source)` samples, `source.load(i) -> (uint8 (3, H, W), caption)`,
raising `BrokenSample` (with a `reason`) for a sample that cannot be used. Four kinds exist:

    open_source("world")                     # the procedural world's training split (endless)
    open_source("world:seed=3,size=32")      # WorldConfig fields as key=value options
    open_source("folder:photos/")            # cat.jpg + cat.txt pairs, recursive
    open_source("csv:pairs.csv")             # (path, caption) rows; "tsv:pairs.tsv" likewise
    open_source("shards:data/shard-{000000..000009}.tar")   # tar shards: {key}.png + {key}.txt
    open_source("data/")                     # a bare path: the kind is guessed

`BatchStream` turns a source into batches. Global batch `step` depends only on (seed, step): the
samples of each epoch are visited in a seeded pseudo-random order computed per position (no
state, no per-epoch table), process `rank` takes a contiguous slice of the global batch, and a
broken sample is replaced by the sample at the same slot of the following global batch(es) in that
order. Resuming at any step, changing the number of processes or the number of loader threads
therefore never changes the data.

Tar shards are indexed on open (one pass over the member headers with `tarfile`; nothing is
cached on disk) and read by offset, so any sample can be read directly by its global index.
`export_world_shards` writes the world as such shards (PNG + caption + ground-truth JSON).
"""
from __future__ import annotations

import csv
import glob
import inspect
import io
import json
import logging
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from ..errors import ClipguideError, ConfigError, InputError
from ..preprocess import pil_to_tensor, resize_center_crop

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")      # member extensions, in order of preference
SHARD_CAPTION_EXTENSION = "txt"
PATH_COLUMNS = ("path", "filepath", "file_path", "image", "image_path", "img", "file", "filename")
CAPTION_COLUMNS = ("caption", "text", "title")
SCHEMES = ("world", "folder", "csv", "tsv", "shards")
MAX_ASPECT = 4            # longer side cropped to at most 4x the shorter before resizing (same final crop)

__all__ = [
    "BrokenSample", "Source", "WorldSource", "FolderSource", "CsvSource", "ShardSource", "BatchStream",
    "open_source", "export_world_shards", "decode_image", "fit_image", "expand_shard_pattern", "permute",
]


# ---------------------------------------------------------------------------------------------------
# errors and the source protocol
# ---------------------------------------------------------------------------------------------------
class BrokenSample(ClipguideError):
    """One sample cannot be used. `reason` is a short stable name (e.g. 'corrupt_image',
    'missing_file', 'missing_caption', 'empty_caption', 'truncated_member'); the message says
    which sample and why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@runtime_checkable
class Source(Protocol):
    """A map-style collection of image-caption pairs."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, str]:
        """uint8 (3, H, W) image and caption of sample `index`; raises BrokenSample."""
        ...


# ---------------------------------------------------------------------------------------------------
# image helpers
# ---------------------------------------------------------------------------------------------------
def _pil_to_uint8(im) -> torch.Tensor:
    if im.mode == "RGB":
        return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    if im.mode == "L":
        return torch.from_numpy(np.array(im, dtype=np.uint8)).unsqueeze(0).expand(3, -1, -1).contiguous()
    # RGBA / LA / P / 16-bit / float / CMYK ...: the library's conversion (alpha composited on white)
    return pil_to_tensor(im).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def decode_image(data: bytes, min_size: int | None = None, what: str = "image") -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, H, W) RGB, any mode converted, EXIF orientation applied.

    With `min_size` a JPEG may be decoded at a reduced scale whose shorter side stays >= min_size.
    Raises BrokenSample('corrupt_image' or 'image_too_large')."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            if min_size and im.format == "JPEG":
                im.draft("RGB", (int(min_size), int(min_size)))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _pil_to_uint8(im)
    except Image.DecompressionBombError as e:
        raise BrokenSample("image_too_large", f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, struct.error, ...
        raise BrokenSample("corrupt_image", f"{what} is not a readable image ({type(e).__name__}: {e})") from None


def fit_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic, antialiased) and crop the centre: uint8 (3, H, W) ->
    uint8 (3, size, size)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise InputError(f"a source returned an image of shape {tuple(image.shape)}; expected (3, H, W)")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype == torch.uint8:
        x = image.float()
    elif image.is_floating_point():
        x = image.float() * 255.0
    else:
        raise InputError(f"a source returned an image of dtype {image.dtype}; expected uint8 (or float in [0, 1])")
    H, W = x.shape[-2:]
    if (H, W) == (size, size):
        return x.round().clamp_(0, 255).to(torch.uint8) if image.dtype != torch.uint8 else image.contiguous()
    # very elongated images: keep only the central part that the final crop can reach
    if W > MAX_ASPECT * H:
        left = (W - MAX_ASPECT * H) // 2
        x = x[..., left:left + MAX_ASPECT * H]
    elif H > MAX_ASPECT * W:
        top = (H - MAX_ASPECT * W) // 2
        x = x[..., top:top + MAX_ASPECT * W, :]
    x = resize_center_crop(x.unsqueeze(0), size)[0]
    return x.round_().clamp_(0, 255).to(torch.uint8).contiguous()


def _read_caption(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BrokenSample("bad_caption", f"{what} is not UTF-8 text ({e})") from None
    text = text.strip()
    if not text:
        raise BrokenSample("empty_caption", f"{what} is empty")
    return text


def _read_file(path: Path, reason_missing: str = "missing_file") -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BrokenSample(reason_missing, f"{path} does not exist") from None
    except OSError as e:
        raise BrokenSample("unreadable_file", f"{path} cannot be read ({e})") from None


def _spread(n_total: int, n: int) -> list[int]:
    """n indices spread evenly over range(n_total)."""
    if n >= n_total:
        return list(range(n_total))
    return [i * n_total // n for i in range(n)]


class _FileSource:
    """Shared parts of the file-backed sources."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int, min_size: int | None = None) -> tuple[torch.Tensor, str]:
        raise NotImplementedError

    def caption(self, index: int) -> str:
        raise NotImplementedError

    def _check(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"sample index {index!r} out of range for {self!r}")
        return int(index)

    def captions(self, n: int) -> list[str]:
        """Captions of up to `n` samples spread over the source, skipping broken ones (reads no images)."""
        out = []
        for i in _spread(len(self), n):
            try:
                out.append(self.caption(i))
            except BrokenSample:
                continue
        return out


# ---------------------------------------------------------------------------------------------------
# the procedural world
# ---------------------------------------------------------------------------------------------------
class WorldSource:
    """Samples of the procedural world; index i is the world's sample i.

    Endless by default: a BatchStream then reads consecutive indices from a seeded offset instead of
    shuffling `len()` samples. Give `length=` (or `endless=False`) for a finite world dataset."""

    def __init__(self, world=None, endless: bool | None = None, **config: Any):
        from ..world.world import World

        if world is None:
            config.setdefault("split", "train")
            try:
                world = World(**config)
            except ClipguideError as e:
                raise ConfigError(f"data source 'world': {e}") from None
        elif config:
            raise ConfigError("WorldSource: pass either a World or config options, not both")
        self.world = world
        self.endless = ("length" not in config) if endless is None else bool(endless)

    def __repr__(self) -> str:
        c = self.world.config
        return (f"WorldSource(seed={c.seed}, split={c.split!r}, size={c.size}, "
                f"{'endless' if self.endless else f'{len(self)} samples'})")

    def __len__(self) -> int:
        return len(self.world)

    def load(self, index: int) -> tuple[torch.Tensor, str]:
        images, captions = self.world.batch([index])
        return images[0].permute(2, 0, 1).contiguous(), captions[0]

    def load_batch(self, indices: Sequence[int], size: int) -> tuple[torch.Tensor, list[str]]:
        """Fast path for a whole batch: uint8 (N, 3, size, size) and captions."""
        from ..world.render import MAX_SIZE, MIN_SIZE

        indices = [int(i) for i in indices]
        render_size = size if MIN_SIZE <= size <= MAX_SIZE else None
        images, captions = self.world.batch(indices, size=render_size)
        images = images.permute(0, 3, 1, 2).contiguous()
        if images.shape[-1] != size:
            images = torch.stack([fit_image(im, size) for im in images])
        return images, captions

    def caption(self, index: int) -> str:
        return self.world.caption(index)

    def captions(self, n: int) -> list[str]:
        """Captions of the first `n` samples (nothing is rendered)."""
        return self.world.captions(range(n))

    def negative_captions(self, indices: Sequence[int]) -> list[str]:
        """Hard-negative captions: each sample's caption with one attribute wrong."""
        return self.world.negative_captions(int(i) for i in indices)


# ---------------------------------------------------------------------------------------------------
# a folder of image + .txt pairs
# ---------------------------------------------------------------------------------------------------
class FolderSource(_FileSource):
    """Images under `root` (recursive, hidden files and folders skipped), each captioned by the
    `.txt` file of the same name next to it. An image without its caption is a broken sample
    ('missing_caption'); captions without an image are reported once on open."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data folder {self.root} does not exist or is not a directory")
        images: list[str] = []
        captions: set[str] = set()
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:                                   # a symlink loop or a second link to a folder
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                stem, ext = os.path.splitext(os.path.join(dirpath, name))
                if ext.lower() in IMAGE_EXTENSIONS:
                    images.append(stem + ext)
                elif ext == ".txt":
                    captions.add(stem)
        images.sort(key=lambda p: Path(p).relative_to(self.root).as_posix())
        if not images:
            tars = sorted(self.root.glob("*.tar"))
            hint = f"; it holds tar shards: use 'shards:{self.root}'" if tars else ""
            raise ConfigError(f"data folder {self.root} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                              f"expected image files with .txt captions of the same name{hint}")
        if not captions:
            raise ConfigError(f"data folder {self.root} has {len(images)} images but no .txt captions; "
                              "each image needs a caption file of the same name (cat.jpg + cat.txt)")
        self.paths = images
        stems = {os.path.splitext(p)[0] for p in images}
        uncaptioned = len(stems - captions)
        orphans = len(captions - stems)
        if uncaptioned:
            log.warning("data folder %s: %d of %d images have no .txt caption; they are skipped as broken samples",
                        self.root, uncaptioned, len(images))
        if orphans:
            log.warning("data folder %s: %d .txt captions have no image of the same name; they are not used",
                        self.root, orphans)

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, {len(self)} samples)"

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        path = Path(os.path.splitext(self.paths[self._check(index)])[0] + ".txt")
        return _read_caption(_read_file(path, "missing_caption"), f"caption {path}")

    def load(self, index: int, min_size: int | None = None) -> tuple[torch.Tensor, str]:
        text = self.caption(index)
        path = Path(self.paths[index])
        return decode_image(_read_file(path), min_size, f"image {path}"), text


# ---------------------------------------------------------------------------------------------------
# CSV / TSV of (path, caption)
# ---------------------------------------------------------------------------------------------------
class CsvSource(_FileSource):
    """Rows of (image path, caption) in a CSV or TSV file.

    A header row is recognised by its column names (path: path/filepath/image/...; caption:
    caption/text/title); without one the first two columns are path and caption. Relative paths
    resolve against the file's folder. A listed image that does not exist is a broken sample."""

    def __init__(self, path: str | Path, delimiter: str | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(f"caption table {self.path} does not exist or is not a file")
        if delimiter is None:
            delimiter = "\t" if self.path.suffix.lower() in (".tsv", ".tab") else ","
        kind = "TSV" if delimiter == "\t" else "CSV"
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if any(c.strip() for c in r)]
        if not rows:
            raise ConfigError(f"{kind} file {self.path} is empty")
        head = [c.strip().lower() for c in rows[0]]
        path_col = next((head.index(n) for n in PATH_COLUMNS if n in head), None)
        cap_col = next((head.index(n) for n in CAPTION_COLUMNS if n in head), None)
        if path_col is not None or cap_col is not None or "url" in head:
            if cap_col is None:
                raise ConfigError(f"{kind} file {self.path} has columns {rows[0]} but no caption column; "
                                  f"name it one of {list(CAPTION_COLUMNS)}")
            if path_col is None:
                hint = (" (it lists URLs: download the images first, e.g. into tar shards)"
                        if "url" in head else "")
                raise ConfigError(f"{kind} file {self.path} has columns {rows[0]} but no image path column"
                                  f"{hint}; name it one of {list(PATH_COLUMNS[:3])}")
            rows = rows[1:]
        else:
            if len(rows[0]) < 2:
                raise ConfigError(f"{kind} file {self.path} has a single column and no header: no caption column "
                                  f"found; use rows of (path, caption) or a header naming the columns "
                                  f"{list(PATH_COLUMNS[:3])} and {list(CAPTION_COLUMNS)}")
            path_col, cap_col = 0, 1
        if not rows:
            raise ConfigError(f"{kind} file {self.path} has a header but no rows")
        first = rows[0][path_col].strip() if len(rows[0]) > path_col else ""
        if re.match(r"^[a-z][a-z0-9+.-]*://", first, re.I):
            raise ConfigError(f"{kind} file {self.path} lists URLs ({first}); download the images first "
                              "(e.g. into tar shards) and list local paths")
        base = self.path.parent
        need = max(path_col, cap_col)
        self.files: list[str | None] = []
        self.texts: list[str | None] = []
        for r in rows:
            if len(r) <= need:
                self.files.append(None)
                self.texts.append(None)
                continue
            p = r[path_col].strip()
            self.files.append(str(base / os.path.expanduser(p)) if p else "")
            self.texts.append(r[cap_col])
        self.kind = kind

    def __repr__(self) -> str:
        return f"CsvSource({str(self.path)!r}, {len(self)} samples)"

    def __len__(self) -> int:
        return len(self.files)

    def _where(self, index: int) -> str:
        return f"{self.path} data row {index + 1}"

    def caption(self, index: int) -> str:
        text = self.texts[self._check(index)]
        if text is None:
            raise BrokenSample("bad_row", f"{self._where(index)} has too few columns")
        text = text.strip()
        if not text:
            raise BrokenSample("empty_caption", f"{self._where(index)} has an empty caption")
        return text

    def load(self, index: int, min_size: int | None = None) -> tuple[torch.Tensor, str]:
        text = self.caption(index)
        file = self.files[index]
        if not file:
            raise BrokenSample("missing_file", f"{self._where(index)} has an empty image path")
        path = Path(file)
        return decode_image(_read_file(path), min_size, f"image {path} ({self._where(index)})"), text


# ---------------------------------------------------------------------------------------------------
# tar shards
# ---------------------------------------------------------------------------------------------------
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shard_pattern(pattern: str) -> list[str]:
    """Expand brace ranges and lists: 'a-{000..002}.tar' -> a-000.tar, a-001.tar, a-002.tar;
    '{x,y}.tar' -> x.tar, y.tar. Several groups multiply out, left to right."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", body)
    if rng:
        a, b = rng.groups()
        lo, hi = int(a), int(b)
        if hi < lo:
            raise ConfigError(f"shard pattern {pattern!r}: range {{{body}}} is descending")
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ConfigError(f"shard pattern {pattern!r}: cannot read {{{body}}}; use {{000..009}} or {{a,b}}")
    return [head + item + rest for item in items for rest in expand_shard_pattern(tail)]


def _shard_paths(pattern: str) -> list[Path]:
    p = Path(os.path.expanduser(pattern))
    if p.is_dir():
        found = sorted(p.glob("*.tar"))
        if not found:
            raise ConfigError(f"shard folder {p} has no .tar files")
        return found
    out: list[Path] = []
    missing: list[str] = []
    for item in expand_shard_pattern(os.path.expanduser(pattern)):
        if glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                missing.append(item)
            out += [Path(m) for m in matches if os.path.isfile(m)]
        elif os.path.isfile(item):
            out.append(Path(item))
        else:
            missing.append(item)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(f"shard pattern {pattern!r}: no such file(s) {missing[:3]}{more}")
    if not out:
        raise ConfigError(f"shard pattern {pattern!r} matches no .tar files")
    return out


def _split_member(name: str) -> tuple[str, str] | None:
    """Tar member name -> (key, extension): 'a/b/000123.seg.png' -> ('a/b/000123', 'seg.png')."""
    d, _, base = name.rpartition("/")
    if not base or base.startswith("."):
        return None
    stem, dot, ext = base.partition(".")
    if not dot:
        return None
    return (f"{d}/{stem}" if d else stem), ext.lower()


class ShardSource(_FileSource):
    """Samples in tar shards: members `{key}.jpg|jpeg|png|webp` and `{key}.txt`, grouped by key.

    On open each shard's member headers are read once (with `tarfile`) into an index of data
    offsets; samples are then read by global index with one seek each. Nothing is written to disk.
    A key without image or caption, a member cut off by a truncated file or an undecodable image
    is a broken sample. Shards must be uncompressed .tar files."""

    def __init__(self, pattern: str | Path | Sequence[str | Path]):
        if isinstance(pattern, (list, tuple)):
            self.shards = [Path(p) for p in pattern]
            self.pattern = ",".join(map(str, pattern))
        else:
            self.pattern = str(pattern)
            self.shards = _shard_paths(self.pattern)
        shard_ids: list[int] = []
        cols: list[list[int]] = [[], [], [], []]        # image offset, image length, caption offset, length
        self.keys: list[str] = []
        self.file_sizes: list[int] = []
        for sid, path in enumerate(self.shards):
            entries, size = self._index_shard(path)
            self.file_sizes.append(size)
            for key, (io_, il, to, tl) in entries.items():
                shard_ids.append(sid)
                self.keys.append(key)
                for c, v in zip(cols, (io_, il, to, tl)):
                    c.append(v)
        if not self.keys:
            raise ConfigError(f"shards {self.pattern!r} ({len(self.shards)} file(s)) hold no samples: expected "
                              f"members named {{key}}.{'|'.join(SHARD_IMAGE_EXTENSIONS)} and {{key}}.txt")
        self._shard = np.asarray(shard_ids, dtype=np.int32)
        self._img_off, self._img_len, self._txt_off, self._txt_len = (np.asarray(c, dtype=np.int64) for c in cols)
        n_img, n_txt = int((self._img_off >= 0).sum()), int((self._txt_off >= 0).sum())
        if n_txt == 0:
            raise ConfigError(f"shards {self.pattern!r} hold {n_img} images but no .txt captions")
        if n_img == 0:
            raise ConfigError(f"shards {self.pattern!r} hold {n_txt} captions but no images "
                              f"({', '.join(SHARD_IMAGE_EXTENSIONS)})")

    @staticmethod
    def _index_shard(path: Path) -> tuple[dict[str, list[int]], int]:
        """{key: [image offset, image length, caption offset, caption length]} (-1 when absent)."""
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00" or \
                magic[:4] == b"\x28\xb5\x2f\xfd":
            raise ConfigError(f"shard {path} is compressed; random access needs uncompressed .tar shards "
                              "(decompress it, e.g. gunzip)")
        entries: dict[str, list[int]] = {}
        damaged = None
        try:
            tf = tarfile.open(path, mode="r:")
        except tarfile.ReadError as e:
            if size == 0:
                log.warning("shard %s is empty", path)
                return entries, size
            raise ConfigError(f"shard {path} is not a tar file ({e}); remove it or leave it out of the "
                              "pattern") from None
        with tf:
            try:
                for m in tf:
                    if not m.isfile():
                        continue
                    parts = _split_member(m.name)
                    if parts is None:
                        continue
                    key, ext = parts
                    if ext in SHARD_IMAGE_EXTENSIONS:
                        slot = 0
                    elif ext == SHARD_CAPTION_EXTENSION:
                        slot = 2
                    else:
                        continue
                    rank = SHARD_IMAGE_EXTENSIONS.index(ext) if slot == 0 else 0
                    e = entries.setdefault(key, [-1, -1, -1, -1, len(SHARD_IMAGE_EXTENSIONS)])
                    if e[slot] >= 0 and (slot == 2 or rank >= e[4]):
                        continue                               # first caption, preferred image type
                    e[slot], e[slot + 1] = m.offset_data, m.size
                    if slot == 0:
                        e[4] = rank
                end = tf.offset
            except tarfile.ReadError as e:
                damaged, end = str(e), tf.offset
        if damaged is None and end < size:
            # tarfile stops quietly at an unreadable header: anything but zero padding after it is lost data
            with open(path, "rb") as f:
                f.seek(end)
                while chunk := f.read(1 << 16):
                    if chunk.strip(b"\0"):
                        damaged = f"unreadable member header at byte {end}"
                        break
        if damaged:
            log.warning("shard %s is damaged (%s): %d samples before the damage are indexed, the rest is lost",
                        path, damaged, len(entries))
        return {k: v[:4] for k, v in entries.items()}, size

    def __repr__(self) -> str:
        return f"ShardSource({self.pattern!r}, {len(self.shards)} shards, {len(self)} samples)"

    def __len__(self) -> int:
        return len(self.keys)

    def _where(self, index: int) -> str:
        return f"{self.shards[self._shard[index]]} key {self.keys[index]!r}"

    def _member(self, f, offset: int, length: int, index: int, what: str) -> bytes:
        f.seek(offset)
        data = f.read(length)
        if len(data) != length:
            raise BrokenSample("truncated_member", f"{self._where(index)}: {what} member is cut off "
                                                   f"({len(data)} of {length} bytes; truncated shard?)")
        return data

    def _open(self, index: int):
        path = self.shards[self._shard[index]]
        try:
            return open(path, "rb")
        except OSError as e:
            raise BrokenSample("missing_file", f"shard {path} cannot be opened ({e})") from None

    def caption(self, index: int) -> str:
        i = self._check(index)
        if self._txt_off[i] < 0:
            raise BrokenSample("missing_caption", f"{self._where(i)} has no .txt member")
        with self._open(i) as f:
            data = self._member(f, int(self._txt_off[i]), int(self._txt_len[i]), i, "caption")
        return _read_caption(data, f"caption of {self._where(i)}")

    def load(self, index: int, min_size: int | None = None) -> tuple[torch.Tensor, str]:
        i = self._check(index)
        if self._img_off[i] < 0:
            raise BrokenSample("missing_image", f"{self._where(i)} has no image member "
                                                f"({', '.join(SHARD_IMAGE_EXTENSIONS)})")
        with self._open(i) as f:
            image = self._member(f, int(self._img_off[i]), int(self._img_len[i]), i, "image")
            if self._txt_off[i] < 0:
                raise BrokenSample("missing_caption", f"{self._where(i)} has no .txt member")
            text = _read_caption(self._member(f, int(self._txt_off[i]), int(self._txt_len[i]), i, "caption"),
                                 f"caption of {self._where(i)}")
        return decode_image(image, min_size, f"image of {self._where(i)}"), text


# ---------------------------------------------------------------------------------------------------
# open a source from a spec string
# ---------------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets and braces, so a JSON value may hold commas:
    'seed=3,kinds={"object":1,"scene":2}'."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_options(spec: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in _top_level_split(text))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"data source {spec!r}: option {part!r} is not key=value "
                              "(e.g. 'world:seed=3,split=train')")
        out[key.strip()] = _parse_value(value.strip())
    return out


def open_source(spec: str | Path, **kw: Any):
    """A source from a spec: 'world' or 'world:key=value,...' (WorldConfig fields; `kw` too),
    'folder:PATH', 'csv:PATH', 'tsv:PATH', 'shards:PATTERN' (a folder of .tar, a glob or
    brace ranges like 'shard-{000000..000009}.tar'), or a bare path whose kind is guessed: a folder
    holding .tar files -> shards, another folder -> folder, .csv/.tsv -> table, .tar or a pattern ->
    shards."""
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data source must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    scheme, colon, rest = spec.partition(":")
    scheme_l = scheme.lower()
    if not colon and scheme_l == "world":
        scheme_l, colon, rest = "world", ":", ""
    if colon and scheme_l in SCHEMES:
        if scheme_l == "world":
            return WorldSource(**(_parse_options(spec, rest) | kw))
        if kw:
            raise ConfigError(f"data source {spec!r} takes no options, got {sorted(kw)}")
        if not rest:
            raise ConfigError(f"data source {spec!r} needs a path after '{scheme}:'")
        if scheme_l == "folder":
            return FolderSource(rest)
        if scheme_l in ("csv", "tsv"):
            return CsvSource(rest, delimiter="\t" if scheme_l == "tsv" else ",")
        return ShardSource(rest)
    # a bare path (a one-letter "scheme" is a Windows drive)
    if kw:
        raise ConfigError(f"data source {spec!r} takes no options, got {sorted(kw)}")
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return ShardSource(str(path)) if any(path.glob("*.tar")) else FolderSource(path)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in (".csv", ".tsv", ".tab"):
            return CsvSource(path)
        if suffix == ".tar":
            return ShardSource(str(path))
        raise ConfigError(f"data source {spec!r}: cannot tell the kind of {path.name}; use a .csv/.tsv table, "
                          "a .tar shard, a folder, or a prefix (folder:, csv:, tsv:, shards:)")
    if suffix == ".tar" and (glob.has_magic(spec) or _BRACE.search(spec)):
        return ShardSource(spec)
    if colon and len(scheme) > 1 and "/" not in scheme and "\\" not in scheme:
        raise ConfigError(f"unknown data source scheme {scheme!r} in {spec!r}; use one of "
                          f"{', '.join(s + ':' for s in SCHEMES)} or a path")
    raise ConfigError(f"data source {spec!r}: no such file or folder")


# ---------------------------------------------------------------------------------------------------
# deterministic order: a keyed permutation computed per position
# ---------------------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1


def _hash(*keys: int) -> int:
    h = 0x6A09E667F3BCC908
    for k in keys:
        h = (h ^ (int(k) & _M64)) & _M64
        h = (h + 0x9E3779B97F4A7C15) & _M64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
        h ^= h >> 31
    return h


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(positions: np.ndarray | Sequence[int], n: int, key: int, rounds: int = 6) -> np.ndarray:
    """The image of `positions` (each in [0, n)) under a pseudo-random permutation of range(n) chosen
    by `key`: a balanced Feistel network on the smallest even number of bits covering n, walked
    until the value falls inside [0, n). Needs no table, so any position is computed on its own."""
    pos = np.asarray(positions, dtype=np.int64)
    if n < 1 or (pos.size and (pos.min() < 0 or pos.max() >= n)):
        raise InputError(f"positions must be in [0, {n})")
    bits = max(2, (n - 1).bit_length())
    bits += bits & 1
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = [np.uint64(_hash(key, r)) for r in range(rounds)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << half) | right

    x = encrypt(pos.astype(np.uint64))
    out_of_range = x >= np.uint64(n)
    while out_of_range.any():                 # cycle walking: the domain is < 4n, so few rounds
        x[out_of_range] = encrypt(x[out_of_range])
        out_of_range = x >= np.uint64(n)
    return x.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# the batch stream
# ---------------------------------------------------------------------------------------------------
class BatchStream:
    """Deterministic, stateless batches: `batch(step)` is this rank's slice of global batch `step`.

    Global position p = step * global_batch + j reads, for a finite source of n samples, the
    sample at position p % n of epoch p // n's seeded permutation; for an endless source (the
    world) index offset + p with a seeded offset. Rank r takes positions r*B/W ... (r+1)*B/W - 1
    of the global batch. A broken sample at position p is counted (`stats`), logged the first time
    its reason occurs, and replaced by the sample at position p + global_batch (then + 2 *
    global_batch, ...), so the replacement depends on neither timing nor the number of processes.
    More than `max_broken_fraction` broken among the samples tried for one batch (at least 4
    broken tolerated for tiny batches) raises ClipguideError. `num_workers > 0` loads a batch's
    samples in that many threads, with identical results."""

    def __init__(self, source, global_batch: int, image_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, max_broken_fraction: float = 0.5):
        for name, v, lo in (("global_batch", global_batch, 1), ("image_size", image_size, 1),
                            ("world_size", world_size, 1), ("rank", rank, 0), ("num_workers", num_workers, 0),
                            ("seed", seed, None)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (lo is not None and v < lo):
                raise ConfigError(f"BatchStream: {name} must be an int{f' >= {lo}' if lo is not None else ''}, "
                                  f"got {v!r}")
        if global_batch % world_size:
            raise ConfigError(f"BatchStream: global_batch {global_batch} is not divisible by world_size "
                              f"{world_size}; every process needs the same number of samples")
        if rank >= world_size:
            raise ConfigError(f"BatchStream: rank {rank} must be < world_size {world_size}")
        if not 0.0 < max_broken_fraction < 1.0:
            raise ConfigError(f"BatchStream: max_broken_fraction must be in (0, 1), got {max_broken_fraction!r}")
        if not callable(getattr(source, "load", None)):
            raise ConfigError(f"BatchStream: {source!r} is not a data source (no load method); see open_source")
        self.source = source
        self.global_batch, self.image_size, self.seed = int(global_batch), int(image_size), int(seed)
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.local_batch = self.global_batch // self.world_size
        self.max_broken_fraction = float(max_broken_fraction)
        self.endless = bool(getattr(source, "endless", False))
        self.length = None if self.endless else len(source)
        if self.length is not None and self.length < 1:
            raise ConfigError(f"BatchStream: data source {source!r} is empty")
        if self.length is not None and self.length < self.global_batch:
            log.warning("data source has %d samples, fewer than the global batch %d: batches repeat samples",
                        self.length, self.global_batch)
        # even, so that consecutive pairs (2k, 2k+1) of an endless world, its hard-negative twins, share a batch
        self.offset = (_hash(self.seed, 0x5EED) % (1 << 40)) & ~1
        try:
            params = inspect.signature(source.load).parameters
        except (TypeError, ValueError):
            params = {}
        self._load_kw = {"min_size": self.image_size} if "min_size" in params else {}
        self._pool: ThreadPoolExecutor | None = None
        self._warned: set[str] = set()
        self.stats: dict[str, Any] = {"loaded": 0, "broken": 0, "broken_by_reason": {}}

    def __repr__(self) -> str:
        return (f"BatchStream({self.source!r}, global_batch={self.global_batch}, image_size={self.image_size}, "
                f"seed={self.seed}, rank={self.rank}, world_size={self.world_size})")

    # --- order -----------------------------------------------------------------------------------
    def indices_at(self, positions: Sequence[int] | np.ndarray) -> list[int]:
        """Source indices of global positions."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.length is None:
            return [self.offset + int(p) for p in pos]
        n = self.length
        epochs, within = pos // n, pos % n
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = permute(within[sel], n, _hash(self.seed, int(e)))
        return out.tolist()

    def positions(self, step: int) -> list[int]:
        """Global positions of this rank's slice of batch `step` (before any replacement)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InputError(f"step must be an int >= 0, got {step!r}")
        start = int(step) * self.global_batch + self.rank * self.local_batch
        return list(range(start, start + self.local_batch))

    def indices(self, step: int) -> list[int]:
        """Source indices of this rank's slice of batch `step` (before any replacement)."""
        return self.indices_at(self.positions(step))

    def epoch(self, step: int) -> int:
        """Epoch of the first sample of batch `step` (0 for an endless source)."""
        return 0 if self.length is None else step * self.global_batch // self.length

    # --- loading ---------------------------------------------------------------------------------
    def _load_one(self, index: int):
        try:
            image, text = self.source.load(index, **self._load_kw)
            if not isinstance(text, str) or not text.strip():
                raise BrokenSample("empty_caption", f"sample {index} has an empty caption")
            return fit_image(image, self.image_size), text
        except BrokenSample as e:
            return e

    def _map(self, indices: list[int]) -> list:
        if self.num_workers > 0 and len(indices) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="clipguide-data")
            return list(self._pool.map(self._load_one, indices))
        return [self._load_one(i) for i in indices]

    def _record_broken(self, index: int, err: BrokenSample) -> None:
        self.stats["broken"] = self.stats.get("broken", 0) + 1
        by = self.stats.setdefault("broken_by_reason", {})
        by[err.reason] = by.get(err.reason, 0) + 1
        if err.reason not in self._warned:
            self._warned.add(err.reason)
            log.warning("data: skipping a broken sample (%s) at index %d: %s. Broken samples are replaced by "
                        "the next valid ones and counted in the stream's stats; this warning is shown once "
                        "per reason", err.reason, index, err)

    @property
    def has_negatives(self) -> bool:
        return hasattr(self.source, "negative_captions") and hasattr(self.source, "load_batch")

    def negatives(self, step: int) -> list[str]:
        """Hard-negative captions for this rank's slice of batch `step` (sources that make them)."""
        if not self.has_negatives:
            raise ConfigError(f"data source {self.source!r} does not make hard-negative captions")
        return self.source.negative_captions(self.indices_at(self.positions(step)))

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """This rank's slice of global batch `step`: uint8 (global_batch / world_size, 3, S, S) and captions."""
        positions = self.positions(step)
        if hasattr(self.source, "load_batch"):
            images, captions = self.source.load_batch(self.indices_at(positions), self.image_size)
            self.stats["loaded"] = self.stats.get("loaded", 0) + len(captions)
            return images, list(captions)
        results: list[tuple[torch.Tensor, str] | None] = [None] * self.local_batch
        pending = list(range(self.local_batch))
        allowed = max(4, int(self.max_broken_fraction / (1.0 - self.max_broken_fraction) * self.local_batch))
        broken: list[BrokenSample] = []
        tries = 0
        while pending:
            idx = self.indices_at([positions[j] + tries * self.global_batch for j in pending])
            failed = []
            for j, i, out in zip(pending, idx, self._map(idx)):
                if isinstance(out, BrokenSample):
                    self._record_broken(i, out)
                    broken.append(out)
                    failed.append(j)
                else:
                    results[j] = out
                    self.stats["loaded"] = self.stats.get("loaded", 0) + 1
            if len(broken) > allowed:
                self._fail(step, broken, self.local_batch - len(failed))
            pending, tries = failed, tries + 1
        return torch.stack([r[0] for r in results]), [r[1] for r in results]

    def _fail(self, step: int, broken: list[BrokenSample], loaded: int) -> None:
        reasons: dict[str, int] = {}
        for b in broken:
            reasons[b.reason] = reasons.get(b.reason, 0) + 1
        examples = "; ".join(str(b) for b in broken[:3])
        raise ClipguideError(
            f"data: {len(broken)} of {len(broken) + loaded} samples tried for batch {step} (rank {self.rank}) are "
            f"broken ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))}), e.g. {examples}. "
            f"That is more than {self.max_broken_fraction:.0%}: the data source {self.source!r} looks wrong "
            "(paths, format, captions), not merely noisy")

    def close(self) -> None:
        """Stop the loader threads (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------------
# exporter
# ---------------------------------------------------------------------------------------------------
def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tf.addfile(info, io.BytesIO(data))


def export_world_shards(out_dir: str | Path, n_samples: int, shard_size: int = 1000, image_size: int = 64,
                        seed: int = 0, split: str = "train", progress: bool = True) -> list[Path]:
    """Write world samples 0 .. n_samples-1 of `split` as tar shards `shard-000000.tar`, ... in
    `out_dir`: per sample `{index:09d}.png` (lossless, so pixels equal the world's), `.txt` (the
    caption) and `.json` (ground-truth attributes). Each shard is written to a `.tmp` file and
    renamed when complete; the output is byte-for-byte reproducible. Returns the shard paths."""
    from PIL import Image
    from tqdm import tqdm

    from ..world.world import World

    for name, v in (("n_samples", n_samples), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"export_world_shards: {name} must be an int >= 1, got {v!r}")
    try:
        world = World(seed=seed, split=split, size=image_size)
    except ClipguideError as e:
        raise ConfigError(f"export_world_shards: {e}") from None
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (n_samples + shard_size - 1) // shard_size
    paths = [out / f"shard-{s:06d}.tar" for s in range(n_shards)]
    stale = sorted(set(out.glob("shard-*.tar")) - set(paths))
    if stale:
        log.warning("%s already holds %d other shard file(s) (e.g. %s) that a reader of the folder will also "
                    "read; remove them or export into an empty folder", out, len(stale), stale[0].name)
    chunk = 256
    with tqdm(total=n_samples, desc="export shards", unit="sample", disable=not progress) as bar:
        for s, path in enumerate(paths):
            tmp = path.with_name(path.name + ".tmp")
            try:
                with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tf:
                    lo, hi = s * shard_size, min(n_samples, (s + 1) * shard_size)
                    for c in range(lo, hi, chunk):
                        idx = list(range(c, min(hi, c + chunk)))
                        images, captions = world.batch(idx, size=image_size)
                        for i, image, text in zip(idx, images.numpy(), captions):
                            buf = io.BytesIO()
                            Image.fromarray(image).save(buf, format="PNG", compress_level=6)
                            key = f"{i:09d}"
                            _add_member(tf, f"{key}.png", buf.getvalue())
                            _add_member(tf, f"{key}.txt", text.encode("utf-8"))
                            attrs = world.attrs(i)
                            _add_member(tf, f"{key}.json", json.dumps(attrs, sort_keys=True,
                                                                      default=_json_default).encode("utf-8"))
                        bar.update(len(idx))
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
    return paths
