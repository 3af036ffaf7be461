"""The web app as people use it: a real server process, driven through gradio_client (and a real
browser in test_browser.py). Generate, edit, cancel, bad inputs, many clients at once, and files
outside the app's folder."""
from __future__ import annotations

import concurrent.futures as cf
import json
import re
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client", reason="the app tests need the [test] extra (gradio)")
import httpx  # noqa: E402  (installed with gradio)
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """`clipguide app` in a subprocess, on a free port of 127.0.0.1."""

    def __init__(self, out: Path, *extra: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.out = out
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
        self.log = open(out.parent / f"app-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "clipguide", "app", "--port", str(self.port),
                                      "--out", str(out), "--threads", "1", *extra],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            self.close()
            raise RuntimeError("the app did not start within 120 s")
        self.startup_seconds = time.perf_counter() - self.started

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url, timeout=5).status_code == 200

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "out"
    proc = AppProcess(out, "--max-steps", "200", "--max-size", "96", "--max-cutouts", "8", "--queue-size", "4",
                      "--max-upload-mb", "2")
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def _generate(client, prompt="a red star on a blue background", steps=8, **kw):
    args = dict(prompt=prompt, generator="fourier", model="default", steps=steps, cutouts=4, seed=0, size=64,
                search=1, prior=False)
    args.update(kw)
    return client.predict(*args.values(), api_name="/generate")


def _provenance(path) -> dict:
    with Image.open(path) as im:
        return json.loads(im.info["clipguide"])


def test_app_starts_on_127_0_0_1_in_seconds(app):
    assert app.startup_seconds < 60
    assert app.alive()


def test_generate_returns_a_png_with_provenance(app, client):
    preview, status, png, gif = _generate(client, "a gothic church:1 | blurry:-0.5", steps=10, seed=3)
    assert status.startswith("done: 10 steps")
    prov = _provenance(png)
    assert [p["text"] for p in prov["prompts"]] == ["a gothic church", "blurry"]
    assert [p["weight"] for p in prov["prompts"]] == [1.0, -0.5]
    assert prov["seed"] == 3 and prov["steps"] == 10
    assert Path(png).resolve().parent == app.out.resolve() or Path(png).name in {p.name for p in app.out.iterdir()}
    with Image.open(gif) as im:
        assert im.n_frames >= 2
    with Image.open(preview) as im, Image.open(png) as full:
        assert full.size == (64, 64)
        assert im.size == (256, 256)                           # shown enlarged, pixels kept
        assert im.resize((64, 64), Image.NEAREST).tobytes() == full.convert("RGB").tobytes()


def test_search_chooses_a_start_for_a_trained_generator(client):
    searched = _generate(client, "a red circle", generator="stylegan", steps=2, seed=1, search=8)
    plain = _generate(client, "a red circle", generator="stylegan", steps=2, seed=1)
    assert searched[1].startswith("done: 2 steps")
    assert _provenance(searched[2])["search"] == 8
    assert "search" not in _provenance(plain[2])
    with Image.open(searched[2]) as x, Image.open(plain[2]) as y:
        assert x.tobytes() != y.tobytes()          # the guide chose another start than the seeded one


def test_text_prior_gives_the_start(client):
    started = _generate(client, "a red circle on the left", generator="vqgan", steps=2, seed=1, prior=True)
    plain = _generate(client, "a red circle on the left", generator="vqgan", steps=2, seed=1)
    assert started[1].startswith("done: 2 steps")
    assert _provenance(started[2])["prior"] == "bundled-vqgan" and "prior" not in _provenance(plain[2])
    with Image.open(started[2]) as x, Image.open(plain[2]) as y:
        assert x.tobytes() != y.tobytes()


def test_same_seed_same_picture(client):
    a = _generate(client, "a green heart", steps=5, seed=7)
    b = _generate(client, "a green heart", steps=5, seed=7)
    with Image.open(a[2]) as x, Image.open(b[2]) as y:
        assert x.tobytes() == y.tobytes()


def test_edit_an_uploaded_picture(client, tmp_path):
    src = tmp_path / "in.png"
    Image.new("RGB", (80, 60), (200, 40, 40)).save(src)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (80, 60), 0)
    m.paste(255, (0, 0, 40, 60))
    m.save(mask)
    preview, status, png, gif = client.predict(handle_file(str(src)), "a blue square", "", handle_file(str(mask)),
                                               2.0, "fourier", "default", 6, 1, api_name="/edit")
    assert status.startswith("done: 6 steps")
    prov = _provenance(png)
    assert prov["edit"] is True and prov["masked"] is True
    with Image.open(png) as out, Image.open(src) as before:
        assert out.size == (80, 60)
        # white (the left half) marks where the picture may change: the right half stays as it was
        assert out.convert("RGB").crop((40, 0, 80, 60)).tobytes() == before.crop((40, 0, 80, 60)).tobytes()
    wide = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (40, 40, 200)).save(wide)                 # over the app's 96 px cap
    png = client.predict(handle_file(str(wide)), "at night", "a blue picture", None, 1.0, "pixels", "default", 2, 0,
                         api_name="/edit")[2]
    with Image.open(png) as out:
        assert out.size == (96, 48)                                        # shrunk, aspect ratio kept
    status, png = client.predict(handle_file(str(src)), "at night", "", None, 1.0, "grade", "default", 3, 0,
                                 api_name="/edit")[1:3]
    assert status.startswith("done: 3 steps") and _provenance(png)["generator"] == "grade"


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="   "), "empty"),
    (dict(steps=100000), "maximum value 200|steps must be between"),       # the slider's own check, or ours
    (dict(size=4096), "maximum value 96|size must be between"),
    (dict(cutouts=0), "minimum value 1|cutouts must be between"),
    (dict(seed=-5), "seed must be between"),
    (dict(model="../../etc/passwd"), "not in the list of choices|unknown model"),
    (dict(generator="stylegan-xl"), "not in the list of choices|not available"),
    (dict(prompt="a cat | | a dog"), "could not be read"),
    (dict(prompt="a cat:0 | a dog:0"), "could not be read"),
    (dict(search=4), "search needs a generator that draws random starts"),     # Fourier has no random starts
    (dict(generator="grade"), "not in the list of choices|edit tab"),          # it only edits a given picture
    (dict(generator="stylegan", search=1000), "maximum value 64|search must be between"),
    (dict(prior=True), "text prior for vqgan only, not fourier"),
    (dict(generator="vqgan", prior=True, search=4), "the text prior gives the start"),
])
def test_bad_generate_inputs_get_a_clear_message_and_the_app_stays_up(app, client, kwargs, message):
    with pytest.raises(Exception) as e:
        _generate(client, **kwargs)
    assert re.search(message, str(e.value)), str(e.value)
    assert app.alive()


def test_bad_uploads_are_refused_clearly(app, client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(text)), "at night", "", None, 1.0, "fourier", "default", 3, 0, api_name="/edit")
    assert "picture" in str(e.value) or "image" in str(e.value).lower()
    huge = tmp_path / "huge.png"
    Image.new("RGB", (5000, 4000), (10, 10, 10)).save(huge)          # small file, too many pixels
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(huge)), "at night", "", None, 1.0, "fourier", "default", 3, 0, api_name="/edit")
    assert "pixels" in str(e.value)
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3)).save(big)   # 4 MB > the 2 MB limit
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(big)), "at night", "", None, 1.0, "fourier", "default", 3, 0, api_name="/edit")
    assert "maximum file size" in str(e.value) or "MB" in str(e.value)
    # the server refuses it too, not only the client library
    r = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")},
                   timeout=30)
    assert r.status_code >= 400 and "size" in r.text.lower(), (r.status_code, r.text[:200])
    with pytest.raises(Exception) as e:
        client.predict(None, "at night", "", None, 1.0, "fourier", "default", 3, 0, api_name="/edit")
    assert "no image uploaded" in str(e.value)
    assert app.alive()
    assert _generate(client, steps=2)[1].startswith("done")


def test_cancel_stops_the_run(app, client):
    job = client.submit("a yellow circle", "fourier", "default", 200, 8, 0, 96, 1, api_name="/generate")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:      # wait for the first preview
        time.sleep(0.1)
    assert job.outputs(), "no preview arrived"
    job.cancel()
    t = time.perf_counter()
    # concurrency is 1: the next request is served only once the cancelled run has let go
    assert _generate(client, steps=2)[1].startswith("done")
    assert time.perf_counter() - t < 20
    assert app.alive()


def test_files_outside_the_output_folder_are_refused(app):
    for path in ("/etc/passwd", str(ROOT / "pyproject.toml"), str(app.out / ".." / ".." / "etc" / "passwd")):
        for route in (f"gradio_api/file={path}", f"file={path}"):
            r = httpx.get(app.url + route, timeout=10)
            assert r.status_code in (403, 404), (route, r.status_code)
            assert "root:" not in r.text and "[project]" not in r.text


def test_twenty_clients_at_once_are_served_or_told_the_queue_is_full(app):
    def one(k):
        c = Client(app.url, verbose=False)
        try:
            out = c.predict("a purple square", "fourier", "default", 20, 4, k, 64, 1, api_name="/generate")
            return "served" if out[1].startswith("done") else f"odd: {out[1]}"
        except Exception as e:                     # noqa: BLE001
            return "full" if "queue" in str(e).lower() and "full" in str(e).lower() else f"error: {e}"

    with cf.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    assert all(r in ("served", "full") for r in results), results
    assert results.count("served") >= 1
    assert app.alive()
    peak = app.peak_rss_mb()
    print(f"\n20 clients: {results.count('served')} served, {results.count('full')} told 'queue full'; "
          f"app peak RSS {peak:.0f} MB")
    assert peak < 4096
