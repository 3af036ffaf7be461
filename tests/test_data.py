"""Training data: sources (world, folder, CSV/TSV, tar shards), the deterministic batch stream,
broken-sample handling and the shard exporter."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipguide.errors import ClipguideError, ConfigError
from clipguide.train.data import (BatchStream, BrokenSample, CsvSource, FolderSource, ShardSource, WorldSource,
                                  decode_image, expand_shard_pattern, export_world_shards, fit_image, open_source,
                                  permute)
from clipguide.world.world import World


# ---------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------
def _rgb(seed: int, w: int, h: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image, caption: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """8 good pairs in assorted modes and sizes (two in a subfolder) plus three broken ones."""
    root = tmp_path_factory.mktemp("folder")
    good = {}
    for k in range(4):
        name = f"rgb{k}.png"
        _save(root / name, Image.fromarray(_rgb(k, 40 + 8 * k, 36)), f"rgb picture {k}")
        good[name] = f"rgb picture {k}"
    rgba = np.concatenate([_rgb(10, 30, 30), np.full((30, 30, 1), 128, np.uint8)], axis=-1)
    _save(root / "sub" / "rgba.png", Image.fromarray(rgba), "a half transparent picture")
    _save(root / "sub" / "grey.jpg", Image.fromarray(_rgb(11, 50, 40)[..., 0]), "a grey photo")
    _save(root / "pal.png", Image.fromarray(_rgb(12, 33, 33)).convert("P"), "a palette picture")
    deep = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    _save(root / "deep.png", Image.fromarray(deep), "a sixteen bit picture")
    good |= {"sub/rgba.png": "a half transparent picture", "sub/grey.jpg": "a grey photo",
             "pal.png": "a palette picture", "deep.png": "a sixteen bit picture"}
    (root / "corrupt.jpg").write_bytes(b"this is not a jpeg at all" * 20)
    (root / "corrupt.txt").write_text("a corrupt picture")
    _save(root / "empty.png", Image.fromarray(_rgb(13, 32, 32)), "  \n")
    _save(root / "nocap.png", Image.fromarray(_rgb(14, 32, 32)), None)
    (root / "orphan.txt").write_text("a caption without a picture")
    (root / ".hidden").mkdir()
    _save(root / ".hidden" / "skip.png", Image.fromarray(_rgb(15, 32, 32)), "hidden")
    return root, good


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("shards")
    return export_world_shards(out, 24, shard_size=10, image_size=32, seed=5, progress=False)


def _all_captions(stream: BatchStream, steps: int) -> list[str]:
    caps = []
    for s in range(steps):
        images, c = stream.batch(s)
        assert images.dtype == torch.uint8 and images.shape == (stream.local_batch, 3, stream.image_size,
                                                                   stream.image_size)
        assert len(c) == stream.local_batch
        caps += c
    return caps


# ---------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------
def test_folder_round_trip(folder):
    root, good = folder
    src = open_source(f"folder:{root}")
    assert isinstance(src, FolderSource) and isinstance(open_source(str(root)), FolderSource)
    assert len(src) == len(good) + 3                      # hidden folder and orphan caption not included
    rel = [Path(p).relative_to(root).as_posix() for p in src.paths]
    loaded = {}
    reasons = {}
    for i, name in enumerate(rel):
        try:
            image, text = src.load(i)
        except BrokenSample as e:
            reasons[name] = e.reason
            continue
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
        loaded[name] = text
        if name.startswith("rgb"):
            assert torch.equal(image, torch.from_numpy(np.array(Image.open(root / name))).permute(2, 0, 1))
    assert loaded == good
    assert reasons == {"corrupt.jpg": "corrupt_image", "empty.png": "empty_caption", "nocap.png": "missing_caption"}
    # RGBA is composited on white: the half transparent pixels are lighter than the originals
    rgba = src.load(rel.index("sub/rgba.png"))[0]
    assert rgba.float().mean() > torch.from_numpy(_rgb(10, 30, 30)).float().mean()


def test_csv_and_tsv_round_trip(folder):
    root, good = folder
    table = root.parent / "tables"
    table.mkdir(exist_ok=True)
    rows = [(str(root / name), text) for name, text in good.items()]
    rows.append(("no/such/file.png", "a missing picture"))
    with open(table / "pairs.csv", "w") as f:
        f.write("id,filepath,title\n")
        for k, (p, t) in enumerate(rows):
            f.write(f'{k},{p},"{t}, with a comma"\n')
    src = open_source(f"csv:{table / 'pairs.csv'}")
    assert isinstance(src, CsvSource) and len(src) == len(rows)
    for i, (p, t) in enumerate(rows[:-1]):
        assert src.load(i)[1] == f"{t}, with a comma"
    with pytest.raises(BrokenSample) as e:
        src.load(len(rows) - 1)
    assert e.value.reason == "missing_file"
    # headerless TSV, paths relative to the table's folder
    (root / "pairs.tsv").write_text("".join(f"{name}\t{text}\n" for name, text in good.items()))
    tsv = open_source(str(root / "pairs.tsv"))
    assert isinstance(tsv, CsvSource) and [tsv.load(i)[1] for i in range(len(tsv))] == list(good.values())
    assert tsv.captions(100) == list(good.values())


def test_world_source_and_batch_path():
    src = open_source("world:seed=3,size=32")
    assert isinstance(src, WorldSource) and src.endless and src.world.config.split == "train"
    world = World(seed=3, split="train", size=32)
    image, text = src.load(7)
    assert text == world.caption(7) and image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image, world.image(7, fmt="uint8").permute(2, 0, 1))
    images, texts = src.load_batch([7, 8], 32)
    assert torch.equal(images[0], image) and texts == [world.caption(7), world.caption(8)]
    assert not open_source("world", length=50).endless


def test_world_options_may_hold_json_with_commas():
    src = open_source('world:seed=2,kinds={"object":0.25,"relation":0.75},twins=0.5')
    cfg = src.world.config
    assert (cfg.seed, cfg.twins, cfg.kinds) == (2, 0.5, {"object": 0.25, "relation": 0.75})
    with pytest.raises(ConfigError, match="unknown kind"):
        open_source('world:kinds={"object":1,"planet":1}')


def test_exported_shards_read_back(shards, tmp_path):
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert not list(shards[0].parent.glob("*.tmp"))
    world = World(seed=5, split="train", size=32)
    for spec in (str(shards[0].parent), f"shards:{shards[0].parent}/shard-{{000000..000002}}.tar",
                 f"shards:{shards[0].parent}/shard-*.tar"):
        src = open_source(spec)
        assert isinstance(src, ShardSource) and len(src) == 24
    assert src.captions(24) == world.captions(range(24))
    images = world.render_batch(range(24), size=32).permute(0, 3, 1, 2)
    for i in (0, 9, 10, 23):
        image, text = src.load(i)
        assert text == world.caption(i) and torch.equal(image, images[i])
    with tarfile.open(shards[1]) as tf:
        attrs = json.loads(tf.extractfile("000000012.json").read())
    assert attrs == json.loads(json.dumps(world.attrs(12)))
    # byte-for-byte reproducible
    again = export_world_shards(tmp_path, 24, shard_size=10, image_size=32, seed=5, progress=False)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]


def test_damaged_shards(shards, tmp_path):
    data = bytearray(shards[0].read_bytes())
    with tarfile.open(shards[0]) as tf:
        members = {m.name: m for m in tf.getmembers()}
    # a corrupt image member (its PNG signature overwritten) ...
    bad = members["000000003.png"].offset_data
    data[bad:bad + 8] = b"garbage!"
    # ... and a file cut off in the middle of the last sample's image
    last = members["000000009.png"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bytes(data[:last.offset_data + last.size // 2]))
    src = open_source(f"shards:{cut}")
    assert len(src) == 10
    reasons = {}
    for i in range(10):
        try:
            src.load(i)
        except BrokenSample as e:
            reasons[i] = e.reason
    assert reasons == {3: "corrupt_image", 9: "truncated_member"}
    stream = BatchStream(src, 5, 32, seed=0)
    caps = _all_captions(stream, 4)
    by_reason = stream.stats["broken_by_reason"]
    # each of the two epochs meets both broken samples once; a replacement may meet one again
    assert set(by_reason) == {"corrupt_image", "truncated_member"} and min(by_reason.values()) >= 2
    assert stream.stats["broken"] == sum(by_reason.values()) and stream.stats["loaded"] == 20
    world = World(seed=5, split="train", size=32)
    assert set(caps) <= {world.caption(i) for i in range(9) if i != 3}


# ---------------------------------------------------------------------------------------------------
# the batch stream
# ---------------------------------------------------------------------------------------------------
def test_permutation_is_a_permutation():
    for n in (1, 2, 3, 5, 17, 100, 1000):
        p = permute(np.arange(n), n, key=42)
        assert sorted(p.tolist()) == list(range(n))
    a, b = permute(np.arange(100), 100, 1), permute(np.arange(100), 100, 2)
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(100))
    assert np.array_equal(permute([5, 7], 100, 1), a[[5, 7]])


def test_stream_is_deterministic_stateless_and_rank_independent(folder):
    root, good = folder
    src = open_source(str(root))
    one = BatchStream(src, 4, 24, seed=3)
    ref = [one.batch(s) for s in range(6)]
    fresh = BatchStream(src, 4, 24, seed=3)
    images, caps = fresh.batch(5)                                  # no earlier steps needed
    assert torch.equal(images, ref[5][0]) and caps == ref[5][1]
    threaded = BatchStream(src, 4, 24, seed=3, num_workers=2)
    for s in (5, 0, 3):
        images, caps = threaded.batch(s)
        assert torch.equal(images, ref[s][0]) and caps == ref[s][1]
    threaded.close()
    for s in range(6):
        parts = [BatchStream(src, 4, 24, seed=3, rank=r, world_size=2).batch(s) for r in range(2)]
        assert torch.equal(torch.cat([p[0] for p in parts]), ref[s][0])
        assert parts[0][1] + parts[1][1] == ref[s][1]
    other = BatchStream(src, 4, 24, seed=4)
    assert [other.indices(s) for s in range(3)] != [one.indices(s) for s in range(3)]
    # broken samples were met, replaced by valid ones, and the output is never broken
    assert set(one.stats["broken_by_reason"]) <= {"corrupt_image", "empty_caption", "missing_caption"}
    assert all(c in good.values() for _, caps in ref for c in caps)


def test_epochs_cover_every_sample_once(shards):
    src = open_source(str(shards[0].parent))
    stream = BatchStream(src, 8, 32, seed=0)
    caps = [stream.indices(s) for s in range(3)]
    assert sorted(sum(caps, [])) == list(range(24))
    assert sorted(sum((stream.indices(s) for s in range(3, 6)), [])) == list(range(24))
    assert stream.indices(3) != caps[0]                            # a new order each epoch
    assert stream.epoch(2) == 0 and stream.epoch(3) == 1


def test_world_stream():
    src = open_source("world")
    a = BatchStream(src, 8, 32, seed=1)
    images, caps = a.batch(2)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.uint8
    parts = [BatchStream(src, 8, 32, seed=1, rank=r, world_size=2).batch(2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), images) and parts[0][1] + parts[1][1] == caps
    idx = a.indices(2)
    assert idx == list(range(idx[0], idx[0] + 8)) and idx != BatchStream(src, 8, 32, seed=2).indices(2)
    world = World(seed=0, split="train", size=32)
    assert caps == world.captions(idx)
    # a finite world is shuffled like any other source
    finite = BatchStream(open_source("world:length=16"), 8, 32, seed=1)
    assert sorted(finite.indices(0) + finite.indices(1)) == list(range(16))


def test_broken_samples_counted_by_reason_and_warned_once(folder, caplog):
    root, good = folder
    rows = [(name, text) for name, text in good.items()] + [("missing.png", "a missing picture")]
    (root / "with_missing.csv").write_text("".join(f"{p},{t}\n" for p, t in rows))
    src = open_source(str(root / "with_missing.csv"))
    with caplog.at_level(logging.WARNING, logger="clipguide.train.data"):
        stream = BatchStream(src, 3, 16, seed=0)
        caps = _all_captions(stream, 9)                            # three epochs of 9 samples
    assert stream.stats["broken_by_reason"] == {"missing_file": 3} and stream.stats["broken"] == 3
    assert stream.stats["loaded"] == 27 and "a missing picture" not in caps
    assert sum("missing_file" in r.getMessage() for r in caplog.records) == 1
    folder_stream = BatchStream(FolderSource(root), 11, 16, seed=0)
    _all_captions(folder_stream, 1)
    assert folder_stream.stats["broken_by_reason"] == {"corrupt_image": 1, "empty_caption": 1,
                                                       "missing_caption": 1}


def test_mostly_broken_data_is_an_error(tmp_path):
    for k in range(6):
        (tmp_path / f"bad{k}.png").write_bytes(b"not a png")
        (tmp_path / f"bad{k}.txt").write_text("a caption")
    _save(tmp_path / "good.png", Image.fromarray(_rgb(0, 16, 16)), "the only good picture")
    with pytest.raises(ClipguideError, match="looks wrong"):
        BatchStream(open_source(str(tmp_path)), 2, 16, seed=0).batch(0)


def test_images_are_resized_and_centre_cropped():
    wide = torch.zeros(3, 40, 120, dtype=torch.uint8)
    wide[:, :, 40:80] = 255                                      # white centre square, black sides
    out = fit_image(wide, 20)
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8 and out.float().mean() > 250
    assert fit_image(torch.zeros(3, 5, 900, dtype=torch.uint8), 16).shape == (3, 16, 16)
    buf = io.BytesIO()
    Image.fromarray(_rgb(0, 400, 300)).save(buf, format="JPEG")
    small = decode_image(buf.getvalue(), min_size=64)               # reduced-scale JPEG decoding
    assert small.shape[0] == 3 and 64 <= min(small.shape[1:]) < 300


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
def test_bad_specs_give_clear_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="unknown data source scheme 'foo'"):
        open_source("foo:bar")
    with pytest.raises(ConfigError, match="no such file"):
        open_source(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        open_source(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "nocap.csv").write_text("filepath,width\na.png,3\n")
    with pytest.raises(ConfigError, match="no caption column"):
        open_source(f"csv:{tmp_path / 'nocap.csv'}")
    (tmp_path / "single.csv").write_text("a.png\nb.png\n")
    with pytest.raises(ConfigError, match="no caption column"):
        open_source(str(tmp_path / "single.csv"))
    (tmp_path / "urls.csv").write_text("url,caption\nhttps://example.com/a.jpg,a cat\n")
    with pytest.raises(ConfigError, match="URLs"):
        open_source(str(tmp_path / "urls.csv"))
    with pytest.raises(ConfigError, match="no such file"):
        open_source(f"shards:{tmp_path}/shard-{{000..002}}.tar")
    with pytest.raises(ConfigError, match="unknown key"):
        open_source("world:sede=3")
    with pytest.raises(ConfigError, match="key=value"):
        open_source("world:3")
    src = open_source(str(folder[0]))
    with pytest.raises(ConfigError, match="not divisible"):
        BatchStream(src, 6, 32, seed=0, world_size=4)
    with pytest.raises(ConfigError, match="rank"):
        BatchStream(src, 4, 32, seed=0, rank=2, world_size=2)
    assert expand_shard_pattern("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_shard_pattern("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
