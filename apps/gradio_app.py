"""The clipguide web app: text-driven generation and editing with CLIP as the loss.

    python apps/gradio_app.py                       # or: clipguide app
    python apps/gradio_app.py --model mine=/models/mine.safetensors --port 7860

Two tabs. Generate: prompts with weights and negatives ("a gothic church:1 | blurry:-0.5"), a
generator, a guide model, steps, cutouts, seed, size, a search among starts (trained generators) or
a start from the bundled text prior (vqgan), with a live preview, a progress bar, a cancel button, a gallery and downloads (PNG with provenance,
GIF timelapse). Edit: upload a picture,
describe the edit (optionally what it shows now, and a mask of where it may change), and how strongly
the rest is kept.

Built for many users on a small machine: a queue with a concurrency limit and a maximum size,
per-request caps on steps, size and cutouts, a maximum upload size, and files served only from the
app's output folder. It uses clipguide's public API only."""
from __future__ import annotations

import argparse
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

import clipguide
from clipguide.generators import edit_preserve
from clipguide.generators.prior import DEFAULT_PRIORS

BUNDLED_GENERATORS = ("fourier", "pixels")


@dataclass
class AppConfig:
    """What the operator decides; every request is checked against these caps."""

    out_dir: Path = Path("runs/app")
    models: dict[str, str] = field(default_factory=dict)       # extra guide models: name -> checkpoint path
    generator_models: dict[str, str] = field(default_factory=dict)   # family -> network path
    max_steps: int = 300
    max_size: int = 256
    max_cutouts: int = 32
    max_search: int = 64                                         # starts the guide may choose among
    max_upload_mb: float = 8.0
    max_upload_pixels: int = 4096 * 4096
    concurrency: int = 1
    queue_size: int = 8
    preview_every: int = 5
    default_steps: int = 60
    default_cutouts: int = 8
    threads: int = 0                                             # torch threads, 0: leave as is

    def __post_init__(self):
        self.out_dir = Path(self.out_dir).resolve()
        for name in ("max_steps", "max_size", "max_cutouts", "max_search", "concurrency", "queue_size",
                     "preview_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class RequestError(Exception):
    """A request the app refuses; its message is shown to the user as is."""


# --- models --------------------------------------------------------------------------------------
class Models:
    """Guide models and generator networks, loaded once and shared by every request."""

    def __init__(self, config: AppConfig):
        self.config = config
        self._clip: dict[str, clipguide.CLIP] = {}
        self._networks: dict[str, object] = {}
        self._priors: dict[str, clipguide.Prior] = {}
        self._lock = threading.Lock()

    def guide_names(self) -> list[str]:
        return [n for n in clipguide.bundled_models() if n != "judge"] + sorted(self.config.models)

    def generator_names(self, edit: bool = False) -> list[str]:
        """Families with a network here: pixels and Fourier always, the trained families when
        their bundled network exists or the operator configured one; for edits also the families
        that only change a given image (the colour grade)."""
        names = list(BUNDLED_GENERATORS)
        for family in clipguide.GENERATORS:
            if family in names or (family in clipguide.EDIT_ONLY and not edit):
                continue
            if family in self.config.generator_models or clipguide.has_bundled_generator(family):
                names.append(family)
        return names

    def clip(self, name: str) -> clipguide.CLIP:
        if name not in self.guide_names():
            raise RequestError(f"unknown model {name!r}: choose one of {self.guide_names()}")
        with self._lock:
            if name not in self._clip:
                source = self.config.models.get(name, name)
                self._clip[name] = clipguide.load(source).eval()
            return self._clip[name]

    def prior(self, family: str, guide: str):
        """The bundled text prior of `family`, which reads the bundled guide and draws in the bundled
        network's latent; RequestError where that is not what the request uses."""
        if family not in DEFAULT_PRIORS:
            raise RequestError(f"there is a text prior for {', '.join(DEFAULT_PRIORS)} only, not {family}: untick "
                               "the prior")
        name = DEFAULT_PRIORS[family]
        if self.config.generator_models.get(family) or self.config.models.get(guide, guide) != "default":
            raise RequestError("the bundled text prior reads the bundled 'default' guide and draws for the bundled "
                               f"{family}: choose those, or untick the prior")
        with self._lock:
            if name not in self._priors:
                self._priors[name] = clipguide.load_prior(name)
            return self._priors[name]

    def network(self, family: str):
        if family not in self.generator_names(edit=True):
            raise RequestError(f"generator {family!r} is not available here: choose one of "
                               f"{self.generator_names(edit=True)}")
        with self._lock:
            if family not in self._networks:
                self._networks[family] = clipguide.load_network(family, self.config.generator_models.get(family))
            return self._networks[family]


# --- checks ----------------------------------------------------------------------------------------
def _int_in(value, name: str, low: int, high: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not low <= v <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {v}")
    return v


def check_prompt(text: str | None, what: str = "prompt") -> str:
    text = (text or "").strip()
    if not text:
        raise RequestError(f"the {what} is empty: describe what you want to see, e.g. 'a gothic church'")
    if len(text) > 2000:
        raise RequestError(f"the {what} is {len(text)} characters long; keep it under 2000")
    try:
        clipguide.parse_prompts(text)
    except clipguide.ClipguideError as e:
        raise RequestError(f"the {what} could not be read: {e}") from None
    return text


def load_upload(path: str | None, config: AppConfig, what: str = "image") -> torch.Tensor:
    """An uploaded picture as (1, 3, H, W) in [0, 1]; refuses what is not a picture, or too big."""
    if not path:
        raise RequestError(f"no {what} uploaded: choose a PNG, JPEG or WebP file")
    p = Path(path)
    size = p.stat().st_size if p.exists() else 0
    if size > config.max_upload_mb * 1024 * 1024:
        raise RequestError(f"the {what} is {size / 2**20:.1f} MB; the limit is {config.max_upload_mb:g} MB")
    try:
        from PIL import Image

        with Image.open(p) as im:
            w, h = im.size
    except Exception:
        raise RequestError(f"the {what} is not a picture this app can read (PNG, JPEG, WebP)") from None
    if w * h > config.max_upload_pixels:
        raise RequestError(f"the {what} is {w} x {h} pixels; the limit is {config.max_upload_pixels:,} pixels")
    try:
        return clipguide.load_image(p)
    except clipguide.ClipguideError as e:
        raise RequestError(f"the {what} could not be read: {e}") from None


# --- running one request in a worker thread, with previews ------------------------------------------
class Job:
    """Runs `work(callback)` in a thread; the callback queues a preview every few steps and raises
    StopSteering once the job is cancelled, so the run ends with its best picture so far."""

    def __init__(self, work, every: int):
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.every = every
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True)

    def callback(self, info) -> None:
        if self.cancelled.is_set():
            raise clipguide.StopSteering("cancelled")
        if info.step % self.every == 0:
            self.events.put(("preview", info.step, info.images[0].clone()))

    def _run(self, work) -> None:
        try:
            self.events.put(("done", work(self.callback)))
        except BaseException as e:                       # noqa: BLE001  handed to the request's thread
            self.events.put(("error", e))

    def __iter__(self):
        self.thread.start()
        try:
            while True:
                try:
                    event = self.events.get(timeout=0.5)
                except queue.Empty:
                    if not self.thread.is_alive():
                        raise RequestError("the run stopped without a result") from None
                    continue
                yield event
                if event[0] in ("done", "error"):
                    return
        finally:
            self.cancelled.set()                         # a closed generator (cancel, disconnect) stops the run


PREVIEW_SIDE = 256


def _to_pil(image: torch.Tensor):
    """A picture for the screen: small pictures are enlarged by a whole factor without smoothing, so
    a 64 px result shows its pixels at 256 px (the PNG download keeps the real size)."""
    from PIL import Image

    pic = clipguide.tensor_to_pil(image)
    k = max(1, PREVIEW_SIDE // max(pic.size))
    return pic.resize((pic.width * k, pic.height * k), Image.NEAREST) if k > 1 else pic


def _save(result, config: AppConfig, stem: str, frames: bool) -> tuple[str, str | None]:
    config.out_dir.mkdir(parents=True, exist_ok=True)
    png = result.save(config.out_dir / f"{stem}.png")
    gif = None
    if frames and len(result.frames) > 1:
        gif = str(result.save_timelapse(config.out_dir / f"{stem}.gif"))
    return str(png), gif


def _status(step: int, total: int, started: float) -> str:
    return f"step {step + 1} / {total} · {time.perf_counter() - started:.1f} s"


# --- the two actions, as generators that yield previews ------------------------------------------
def generate(models: Models, config: AppConfig, prompt, generator, model, steps, cutouts, seed, size, search,
             prior, gallery, progress=None):
    """Yields (preview, status, gallery, png, gif) as the run goes; the last one carries the result.
    `search` > 1: the guide first chooses the start among that many random ones (trained generators).
    `prior`: start from the bundled text prior's picture of the prompt (the bundled VQGAN and guide)."""
    prompt = check_prompt(prompt)
    steps = _int_in(steps, "steps", 1, config.max_steps)
    cutouts = _int_in(cutouts, "cutouts", 1, config.max_cutouts)
    seed = _int_in(seed, "seed", 0, 2**31 - 1)
    size = _int_in(size, "size", 16, config.max_size)
    search = _int_in(search, "search", 1, config.max_search)
    if generator in clipguide.EDIT_ONLY:
        raise RequestError(f"{generator} changes a given picture: use it in the edit tab")
    if search > 1 and generator not in clipguide.SEARCHING:
        raise RequestError(f"search needs a generator that draws random starts ({', '.join(clipguide.SEARCHING)}); "
                           f"set search to 1 for {generator}")
    clip = models.clip(model)
    network = models.network(generator)
    text_prior = models.prior(generator, model) if prior else None
    if text_prior is not None and search > 1 and not text_prior.draws:
        raise RequestError("the text prior gives the start: set search to 1, or untick the prior")
    every = max(1, min(config.preview_every, steps // 4 or 1))

    def work(callback):
        return clipguide.generate_image(clip, prompt, generator=generator, network=network, size=size, steps=steps,
                                        cutouts=cutouts, seed=seed, progress=False, frame_every=every,
                                        callback=callback, run_options={"search": search} if search > 1 else None,
                                        prior=text_prior)

    yield from _drive(Job(work, every), config, steps, gallery, progress)


def edit(models: Models, config: AppConfig, image_path, prompt, source, mask_path, preserve, generator, model,
         steps, seed, gallery, progress=None):
    prompt = check_prompt(prompt, "edit")
    source = (source or "").strip() or None
    image = load_upload(image_path, config)
    if image.dim() == 3:
        image = image[None]                               # (1, 3, H, W)
    mask = None
    if mask_path:
        mask = load_upload(mask_path, config, "mask").mean(dim=1, keepdim=True)
    steps = _int_in(steps, "steps", 1, config.max_steps)
    seed = _int_in(seed, "seed", 0, 2**31 - 1)
    try:
        preserve = float(preserve)
    except (TypeError, ValueError):
        raise RequestError(f"preservation must be a number, got {preserve!r}") from None
    if not 0 <= preserve <= 100:
        raise RequestError(f"preservation must be between 0 and 100, got {preserve}")
    clip = models.clip(model)
    network = models.network(generator)
    every = max(1, min(config.preview_every, steps // 4 or 1))
    scale = config.max_size / max(image.shape[-2:])
    if scale < 1:                                         # larger than the cap: shrink, keeping the aspect ratio
        hw = [max(8, round(d * scale)) for d in image.shape[-2:]]
        image = torch.nn.functional.interpolate(image, size=hw, mode="bicubic", antialias=True).clamp(0, 1)

    def work(callback):
        return clipguide.edit_image(clip, image, prompt, source=source, mask=mask, preserve=preserve,
                                    generator=generator, network=network, steps=steps, seed=seed, progress=False,
                                    frame_every=every, callback=callback)

    yield from _drive(Job(work, every), config, steps, gallery, progress)


def _drive(job: Job, config: AppConfig, steps: int, gallery, progress):
    started = time.perf_counter()
    gallery = list(gallery or [])
    for event in job:
        if event[0] == "preview":
            _, step, image = event
            if progress is not None:
                progress((step + 1, steps), desc="steering")
            yield _to_pil(image), _status(step, steps, started), gallery, None, None
        elif event[0] == "error":
            e = event[1]
            if isinstance(e, (RequestError, clipguide.ClipguideError)):
                raise RequestError(str(e))
            raise e
        else:
            result = event[1]
            stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            png, gif = _save(result, config, stem, frames=True)
            gallery = [png] + gallery[:23]
            note = f" (stopped: {result.stopped})" if result.stopped else ""
            status = f"done: {result.steps} steps in {time.perf_counter() - started:.1f} s{note}"
            yield _to_pil(result.images[0]), status, gallery, png, gif


# --- the interface -------------------------------------------------------------------------------------
def build_app(config: AppConfig | None = None, models: Models | None = None):
    import gradio as gr

    config = config or AppConfig()
    models = models or Models(config)
    guides = models.guide_names()
    if not guides:
        raise SystemExit("no guide model: this installation has no bundled model and none was configured "
                         "(--model NAME=PATH)")
    models.clip(guides[0])                                # loaded now: the first request starts at once
    gens = models.generator_names()

    def wrap(fn):
        def run(*args, progress=gr.Progress()):
            try:
                yield from fn(models, config, *args, progress=progress)
            except RequestError as e:
                raise gr.Error(str(e), duration=None) from None
        run.__name__ = fn.__name__
        return run

    with gr.Blocks(title="clipguide", analytics_enabled=False) as app:
        gr.Markdown("# clipguide\nText-guided image generation and editing with CLIP as the loss. "
                    "Weighted and negative prompts: `a gothic church:1 | blurry:-0.5`.")
        gallery_state = gr.State([])
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="prompt", value="a gothic church", elem_id="prompt",
                                        placeholder="a red star on a blue background")
                    with gr.Row():
                        generator = gr.Dropdown(gens, value=gens[0], label="generator")
                        model = gr.Dropdown(guides, value=guides[0], label="guide model")
                    steps = gr.Slider(1, config.max_steps, value=min(config.default_steps, config.max_steps), step=1,
                                      label="steps")
                    cutouts = gr.Slider(1, config.max_cutouts, value=min(config.default_cutouts, config.max_cutouts),
                                        step=1, label="cutouts")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, label="seed")
                        size = gr.Slider(16, config.max_size, value=min(64, config.max_size), step=8, label="size")
                    search = gr.Slider(1, config.max_search, value=1, step=1,
                                       label="search: starts the guide chooses among (vqgan, stylegan, diffusion)")
                    prior = gr.Checkbox(False, label="start from the text prior's picture of the prompt (vqgan)")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Cancel", elem_id="cancel")
                with gr.Column():
                    preview = gr.Image(label="preview", type="pil", format="png", elem_id="preview",
                                       interactive=False, height=300)
                    status = gr.Markdown(elem_id="status")
                    png = gr.File(label="PNG with provenance")
                    gif = gr.File(label="timelapse")
            gallery = gr.Gallery(label="results (this session)", columns=8, height=220, object_fit="contain",
                                 elem_id="gallery")
            run = go.click(wrap(generate), [prompt, generator, model, steps, cutouts, seed, size, search, prior,
                                        gallery_state],
                           [preview, status, gallery_state, png, gif], api_name="generate",
                           concurrency_id="steer")
            stop.click(None, None, None, cancels=[run], api_name="cancel")
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="picture to edit", type="filepath", sources=["upload", "clipboard"])
                    edit_prompt = gr.Textbox(label="edit", value="at night", placeholder="at night")
                    source = gr.Textbox(label="what it shows now (optional: directional edit)")
                    mask = gr.Image(label="mask (white = may change, optional)", type="filepath",
                                    sources=["upload"])
                    e_gens = models.generator_names(edit=True)
                    preserve = gr.Slider(0, 20, value=edit_preserve(e_gens[0]), step=0.1,
                                         label="keep the rest (preservation)")
                    with gr.Row():
                        e_generator = gr.Dropdown(e_gens, value=e_gens[0], label="generator")
                        e_model = gr.Dropdown(guides, value=guides[0], label="guide model")
                    e_steps = gr.Slider(1, config.max_steps, value=min(config.default_steps, config.max_steps),
                                        step=1, label="steps")
                    e_seed = gr.Number(0, precision=0, label="seed")
                    with gr.Row():
                        e_go = gr.Button("Edit", variant="primary", elem_id="edit")
                        e_stop = gr.Button("Cancel")
                with gr.Column():
                    e_preview = gr.Image(label="preview", type="pil", format="png", interactive=False, height=300)
                    e_status = gr.Markdown()
                    e_png = gr.File(label="PNG with provenance")
                    e_gif = gr.File(label="timelapse")
            e_run = e_go.click(wrap(edit), [image, edit_prompt, source, mask, preserve, e_generator, e_model, e_steps,
                                            e_seed, gallery_state],
                               [e_preview, e_status, gallery_state, e_png, e_gif], api_name="edit",
                               concurrency_id="steer")
            e_stop.click(None, None, None, cancels=[e_run], api_name="cancel_edit")
            # each generator family's own preservation (the grade needs none) as the slider's value
            e_generator.change(edit_preserve, e_generator, preserve, api_name=False)
        gallery_state.change(lambda g: g, gallery_state, gallery, api_name=False)
    app.queue(max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    return app


def launch(config: AppConfig, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True):
    """Start the app; returns (app, url). Files are served from the output folder only."""
    if config.threads:
        torch.set_num_threads(config.threads)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(config)
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                           allowed_paths=[str(config.out_dir)], max_file_size=int(config.max_upload_mb * 2**20),
                           show_error=True, quiet=not block, footer_links=["api"])
    return app, url


def parse_args(argv=None) -> tuple[AppConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="clipguide app", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public share link (off by default)")
    p.add_argument("--out", default="runs/app", help="output folder; the only folder the app serves files from")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="offer a local CLIP checkpoint as guide model NAME (repeatable)")
    p.add_argument("--generator-model", action="append", default=[], metavar="FAMILY=PATH",
                   help="network for a generator family (vqgan, stylegan, diffusion) (repeatable)")
    p.add_argument("--max-steps", type=int, default=300, help="most steps one request may ask for (default 300)")
    p.add_argument("--max-size", type=int, default=256, help="largest picture side in pixels (default 256)")
    p.add_argument("--max-cutouts", type=int, default=32, help="most cutouts per step (default 32)")
    p.add_argument("--max-search", type=int, default=64,
                   help="most random starts the guide may choose among (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload in MB (default 8)")
    p.add_argument("--concurrency", type=int, default=1, help="requests run at once (default 1)")
    p.add_argument("--queue-size", type=int, default=8, help="requests waiting at most; more get 'queue full'")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    def pairs(items, what):
        out = {}
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                p.error(f"{what} takes NAME=PATH, got {item!r}")
            out[name] = path
        return out

    config = AppConfig(out_dir=Path(args.out), models=pairs(args.model, "--model"),
                       generator_models=pairs(args.generator_model, "--generator-model"), max_steps=args.max_steps,
                       max_size=args.max_size, max_cutouts=args.max_cutouts, max_search=args.max_search,
                       max_upload_mb=args.max_upload_mb,
                       concurrency=args.concurrency, queue_size=args.queue_size, threads=args.threads)
    return config, args


def main(argv=None) -> int:
    config, args = parse_args(argv)
    launch(config, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
