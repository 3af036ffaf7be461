"""The `clipguide` command."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["clipguide", "openai", "open_clip", "hf"], default=None,
                   help="checkpoint layout; detected from the file when omitted")
    p.add_argument("--arch", default=None, help="architecture name when tensor shapes are ambiguous")
    p.add_argument("--activation", choices=["gelu", "quick_gelu"], default=None,
                   help="activation for layouts that do not record it (openai: quick_gelu, open_clip: gelu)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32, bf16 (autocast on CPU) or fp16 (CUDA only); default fp32")


def _load(args):
    import clipguide

    return clipguide.load(args.model, device=args.device, precision=args.precision, format=args.format,
                          arch=args.arch, activation=args.activation)


def cmd_models(args) -> int:
    import clipguide
    from clipguide import hub

    print("architectures:", ", ".join(clipguide.list_models()))
    print("bundled weights:", ", ".join(clipguide.bundled_models()) or "(none)")
    print("remote weights:", ", ".join(sorted(hub.REMOTE)))
    return 0


def cmd_inspect(args) -> int:
    model = _load(args)
    info = {"source": model.source, "format": model.format, "parameters": model.num_parameters(),
            "config": model.config.to_dict(),
            "tokenizer": repr(model.tokenizer) if model.tokenizer is not None else None}
    print(json.dumps(info, indent=2))
    if model.model_card:
        print(model.model_card)
    return 0


def cmd_convert(args) -> int:
    import torch

    import clipguide

    model = _load(args)
    out = clipguide.save(model, args.out, dtype=torch.float16 if args.fp16 else None,
                         model_card=model.model_card or f"Converted from {model.source} ({model.format} layout).")
    print(f"wrote {out}")
    return 0


def cmd_encode(args) -> int:
    import torch

    model = _load(args)
    if not args.image or not args.text:
        raise SystemExit("encode needs at least one --image and one --text")
    with torch.no_grad():
        img = model.encode_image(model.preprocess([Path(p) for p in args.image]), normalize=True)
        txt = model.encode_text(model.tokenize(args.text, truncate=args.truncate), normalize=True)
        probs = (model.logit_scale.exp() * img @ txt.T).softmax(dim=-1)
    for path, row in zip(args.image, probs.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        print(json.dumps({"image": path, "best": args.text[best],
                          "probs": {t: round(p, 4) for t, p in zip(args.text, row)}}))
    return 0


def cmd_demo(args) -> int:
    """The end-to-end demo: zero-shot on held-out world pictures with the bundled model, then one
    picture steered from a prompt (written to --out)."""
    import torch

    import clipguide

    name = args.model or ("default" if "default" in clipguide.bundled_models() else None)
    if name is None:
        print("no bundled model: building a randomly initialised ViT-nano to show the pipeline "
              "(scores are meaningless)")
        from clipguide.tokenizer import Tokenizer

        captions = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
        tok = Tokenizer.train([c for c in captions for _ in range(3)], vocab_size=600, context_length=16)
        torch.manual_seed(0)
        model = clipguide.create_model("ViT-nano", tokenizer=tok).eval()
    else:
        model = clipguide.load(name)
    from clipguide.train.evaluate import class_embeddings, image_features
    from clipguide.world.tasks import get_task

    print(f"model {name or 'ViT-nano (random)'}: {model.num_parameters():,} parameters, "
          f"{model.config.vision.image_size} px input")
    for task_name in ("colour_shape", "scene"):
        task = get_task(task_name)
        items = task.items(4, seed=args.seed, size=model.config.vision.image_size)
        cands = list(items[0].candidates)
        with torch.no_grad():
            probs = (100 * image_features(model, torch.stack([i.image for i in items]))
                     @ class_embeddings(model, cands).T).softmax(-1)
        for item, row in zip(items, probs):
            best = int(row.argmax())
            print(f"held-out picture of {cands[item.label]!r}: the model reads {cands[best]!r} (p={row[best]:.2f})")
    from clipguide.guide.suite import guided_image

    result = guided_image(model, args.prompt, steps=args.steps, seed=args.seed)
    out = result.save(args.out)
    print(f"steered a picture of {args.prompt!r} in {result.seconds:.1f} s: {out}")
    return 0


def cmd_train(args) -> int:
    from clipguide.train.config import TrainConfig
    from clipguide.train.trainer import Trainer

    cfg = TrainConfig.from_file(args.config, args.set or [])
    eval_fn = None
    if cfg.data.split(":")[0] == "world" and not args.no_eval:
        from clipguide.train.evaluate import world_eval_fn

        eval_fn = world_eval_fn(cfg.eval_samples)
    trainer = Trainer(cfg, eval_fn=eval_fn)
    if not args.resume and trainer.latest_checkpoint() is not None:
        raise SystemExit(f"{cfg.out_dir} already holds checkpoints: pass --resume to continue that run, "
                         "or choose another out_dir")
    path = trainer.run(resume=args.resume)
    if trainer.rank == 0:
        print(f"wrote {path}")
    return 0


def cmd_train_generator(args) -> int:
    from clipguide.generators.training import GeneratorTrainConfig, train_generator

    fields = {"out_dir": args.out} if args.out else {}
    if args.steps:
        fields["steps"] = args.steps
    cfg = GeneratorTrainConfig.from_args(args.family, args.set or [], **fields)
    path = train_generator(cfg, resume=args.resume, snapshot=args.snapshot)
    print(f"wrote {path} (model card {path.parent}/MODEL_CARD.md, samples {path.parent}/samples.png)")
    return 0


def cmd_train_prior(args) -> int:
    from clipguide.generators.prior import PriorTrainConfig, train_prior

    fields = {"family": args.generator, "guide": args.model}
    if args.out:
        fields["out_dir"] = args.out
    if args.generator_model:
        fields["generator_model"] = args.generator_model
    cfg = PriorTrainConfig.from_args(args.set or [], **fields)
    path = train_prior(cfg, resume=args.resume)
    print(f"wrote {path} (model card {path.parent}/MODEL_CARD.md)")
    return 0


def cmd_eval(args) -> int:
    """Zero-shot on the world's held-out tasks, retrieval, and a linear probe: one JSON line each;
    or (`eval guided`) pictures steered for the held-out prompt suite, scored by a judge."""
    import torch

    from clipguide.train import evaluate as ev

    if args.what == "guided":
        return _eval_guided(args)
    if args.candidates is not None:
        from clipguide.errors import InputError

        raise InputError(f"--candidates is for 'eval guided' (the captions its judge chooses among), not 'eval {args.what}'")
    if args.what == "edits":
        return _eval_edits(args)
    if args.what == "samples":
        return _eval_samples(args)
    _run_options(args)                                    # refuses options that only steering takes
    model = _load(args)
    torch.manual_seed(0)
    tasks = args.task or ["colour_shape", "count", "relation", "scene", "retrieval", "linear_probe"]
    with torch.no_grad():
        for name in tasks:
            if name == "retrieval":
                result = ev.world_retrieval(model, n=args.retrieval_n, seed=args.seed)
            elif name == "linear_probe":
                result = ev.world_linear_probe(model, n=args.n, seed=args.seed)
            else:
                ens = ev.world_zero_shot(model, name, n=args.n, seed=args.seed, ensemble=True)
                single = ev.world_zero_shot(model, name, n=args.n, seed=args.seed, ensemble=False)
                result = {**ens, "top1_single_prompt": single["top1"], "top5_single_prompt": single["top5"]}
            print(json.dumps({"task": name, "model": args.model, **result}), flush=True)
    return 0


def _eval_guided(args) -> int:
    import clipguide
    from clipguide.guide.suite import guided_eval, world_prompt_suite
    from clipguide.generators.base import SEARCH_VIEWS           # the first is the default

    run_options = _run_options(args)                      # options checked before anything loads
    _steering_settings(args)
    prompts = _lines(args.prompts, "--prompts") if args.prompts else world_prompt_suite()
    candidates = _candidates(args.candidates or "prompts", prompts)
    guide = _load(args)
    judge = clipguide.load(args.judge, device=args.device)
    report, pictures = guided_eval(guide, judge, prompts, generator=args.generator, steps=args.steps, lr=args.lr,
                                   cutouts=args.cutouts, size=args.size, seed=args.seed, tv=args.tv,
                                   generator_model=args.generator_model, generator_options=_generator_options(args),
                                   run_options=run_options, candidates=candidates, prior=args.prior)
    for i, p in enumerate(report.prompts):
        print(json.dumps({"prompt": p, "guide_score": round(report.guide[i], 4),
                          "augmented_score": round(report.augmented[i], 4), "judge_correct": report.judge_correct[i],
                          "judge_choice": report.judge_choice[i] if report.judge_choice else None,
                          "oracle_passed": report.oracle_passed[i],
                          "oracle_failed": report.oracle_failed[i] if report.oracle_failed else [],
                          "adversarial": report.adversarial[i] if report.adversarial else None}), flush=True)
    summary = {"task": "guided", "guide": args.model, "judge": args.judge, "generator": args.generator,
               "steps": args.steps, "cutouts": args.cutouts, "seed": args.seed,
               **({"search_view": SEARCH_VIEWS[0]} if run_options.get("search", 1) > 1 else {}), **run_options,
               **({"prior": args.prior} if args.prior else {}), **_cfg_flag(args), "candidates": len(candidates),
               **report.summary()}
    print(json.dumps(summary), flush=True)
    if args.sheet:
        from clipguide.world import contact_sheet

        contact_sheet(list(pictures), report.prompts, args.sheet)
    return 0


def _eval_samples(args) -> int:
    import clipguide
    from clipguide.generators.quality import sample_quality, unguided_samples

    judge = clipguide.load(args.judge, device=args.device)
    samples = unguided_samples(args.generator, args.n, args.generator_model, seed=args.seed, progress=True)
    print(json.dumps({"task": "samples", "generator": args.generator, "network": args.generator_model or "bundled",
                      "judge": args.judge, **sample_quality(judge, samples)}), flush=True)
    if args.sheet:
        from clipguide.world import contact_sheet

        contact_sheet(list(samples[:64]), [""] * min(64, len(samples)), args.sheet)
    return 0


def _lines(path: str, option: str) -> list[str]:
    """The non-blank lines of a text file given to `option`."""
    from clipguide.errors import InputError

    if not Path(path).is_file():
        raise InputError(f"{option}: no file {path!r}; give a text file, one caption per line")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _candidates(option: str, prompts: list[str]) -> list[str]:
    """The captions the judge chooses among: the prompts, the world's suite, or a file's lines;
    checked to hold every prompt before anything loads."""
    from clipguide.errors import InputError
    from clipguide.guide.score import check_candidates
    from clipguide.guide.suite import world_prompt_suite

    if option == "prompts":
        return prompts
    candidates = world_prompt_suite() if option == "suite" else _lines(option, "--candidates ('prompts', 'suite' or a file)")
    try:
        check_candidates(prompts, candidates)
    except InputError as e:
        raise InputError(f"--candidates {option}: {e}") from None
    return candidates


def _eval_edits(args) -> int:
    import clipguide
    from clipguide.generators import edit_preserve
    from clipguide.generators.diffusion import edit_settings
    from clipguide.guide.edit_study import edit_cases, edit_study

    run_options = _run_options(args)                      # checked before anything loads
    _steering_settings(args, edit=True)
    guide = _load(args)
    judge = clipguide.load(args.judge, device=args.device)
    cases = edit_cases(args.edits, seed=args.seed)
    report, pictures = edit_study(guide, judge, cases, generator=args.generator, steps=args.steps, lr=args.lr,
                                  cutouts=args.cutouts, preserve=args.preserve, outside=args.outside, seed=args.seed,
                                  generator_model=args.generator_model, generator_options=_generator_options(args),
                                  run_options=run_options, prior=args.prior, strength=args.strength)
    for i, c in enumerate(cases):
        print(json.dumps({"kind": c.kind, "source": c.source, "target": c.target, "masked": c.masked,
                          "applied": report.applied[i], "applied_before_edit": report.applied_before[i],
                          "toward_truth": report.toward_truth[i],
                          "truth_rmse": [round(v, 4) for v in report.truth_rmse[i]],
                          "truth_ssim": [round(v, 4) for v in report.truth_ssim[i]],
                          "kept_rmse": round(report.kept_rmse[i], 4), "kept_ssim": round(report.kept_ssim[i], 4)}),
              flush=True)
    print(json.dumps({"task": "edits", "guide": args.model, "judge": args.judge, "generator": args.generator,
                      "steps": args.steps, "preserve": edit_preserve(args.generator, args.preserve),
                      "outside": args.outside, **({"prior": args.prior} if args.prior else {}), **_cfg_flag(args),
                      **(dict(zip(("edit_start", "strength"), edit_settings(args.edit_start, args.strength)))
                         if args.generator == "diffusion" else {}),
                      **report.summary()}),
          flush=True)
    if args.sheet:
        from clipguide.world import contact_sheet

        tiles, captions = [], []
        for c, out in zip(cases, pictures):
            tiles += [c.image, out]
            captions += [c.source, f"-> {c.target}"]
        contact_sheet(tiles, captions, args.sheet, cols=10)
    return 0


def cmd_world(args) -> int:
    """Render a contact sheet of the procedural world, or export it as training shards."""
    if args.action == "sheet":
        from clipguide.world import World, contact_sheet

        world = World(seed=args.seed, split=args.split, size=args.size)
        samples = [world.sample(i) for i in range(args.n)]
        contact_sheet([s.image for s in samples], [s.caption for s in samples], args.out)
        print(f"wrote {args.out}")
    else:
        from clipguide.train.data import export_world_shards

        paths = export_world_shards(args.out, args.n, shard_size=args.shard_size, image_size=args.size,
                                    seed=args.seed, split=args.split)
        print(f"wrote {len(paths)} shards to {args.out}")
    return 0


def cmd_generate(args) -> int:
    """Text to image with a parameterization steered by CLIPLoss."""
    from clipguide.guide.suite import guided_image

    run_options = _run_options(args)                      # checked before anything loads
    _steering_settings(args)
    model = _load(args)
    result = guided_image(model, args.prompt, generator=args.generator, size=args.size, steps=args.steps,
                          lr=args.lr, cutouts=args.cutouts, seed=args.seed, tv=args.tv,
                          frame_every=max(1, args.steps // 40) if args.timelapse else 0,
                          network=_generator_network(args), generator_options=_generator_options(args),
                          run_options=run_options, prior=args.prior)
    return _write_result(result, args)


def _write_result(result, args) -> int:
    """Save a generation or edit (and its timelapse) and print one JSON line about it."""
    out = result.save(args.out)
    if args.timelapse:
        result.save_timelapse(args.timelapse)
    print(json.dumps({"out": str(out), "best_loss": round(result.best_loss, 5), "steps": result.steps,
                      "seconds": round(result.seconds, 2), "stopped": result.stopped}))
    return 0


def _generator_network(args):
    from clipguide.generators import load_network

    options = {"config": args.generator_config} if args.generator == "vqgan" and args.generator_config else {}
    return load_network(args.generator, args.generator_model, **options)


def _steering_settings(args, edit: bool = False) -> None:
    """Fill the --steps, --lr and --tv left unset: an edit takes the generic settings, a generation
    the generator family's own (`generators.steering_defaults`)."""
    from clipguide.generators import STEERING_BASE, steering_defaults

    family = None if edit else args.generator
    steps, lr, tv = (getattr(args, k, None) for k in ("steps", "lr", "tv"))
    if family is None:
        args.steps = int(STEERING_BASE["steps"]) if steps is None else steps
        args.lr = STEERING_BASE["lr"] if lr is None else lr
    else:
        args.steps, args.lr, args.tv = steering_defaults(family, steps, lr, tv)


def _generator_options(args) -> dict:
    options = {}
    if args.generator == "stylegan":
        options.update({k: getattr(args, k) for k in ("space", "truncation") if hasattr(args, k)})
    if args.generator == "diffusion":
        options.update(sample_steps=args.steps, **_cfg_flag(args))      # --cfg-scale: checked by _run_options
    return options


def _cfg_flag(args) -> dict:
    """--cfg-scale as the summaries record it (only when given)."""
    return {"cfg_scale": args.cfg_scale} if getattr(args, "cfg_scale", None) is not None else {}


def _run_options(args) -> dict:
    """Options of the generator's run(): the search among starts, the diffusion guidance scale and
    guidance stop."""
    from clipguide.errors import InputError
    from clipguide.generators import SEARCHING
    from clipguide.generators.diffusion import check_cfg_scale, check_guidance

    cfg_scale = getattr(args, "cfg_scale", None)
    if cfg_scale is not None:
        if getattr(args, "what", "guided") == "zero-shot":
            raise InputError("--cfg-scale is for 'eval guided' and 'eval edits', not zero-shot evaluation")
        if args.generator != "diffusion":
            raise InputError(f"--cfg-scale only applies to --generator diffusion (got {args.generator})")
        try:
            check_cfg_scale(cfg_scale)
        except InputError as e:
            raise InputError(f"--cfg-scale: {e}") from None
    search = getattr(args, "search", None)
    if search is not None:
        if search < 1:
            raise InputError(f"--search is how many starts the guide chooses among: an integer >= 1, got {search}")
        if getattr(args, "what", "guided") != "guided":
            raise InputError(f"--search is for 'eval guided' (it chooses a guided run's start), not 'eval {args.what}'")
        if args.generator not in SEARCHING:
            raise InputError(f"--search needs a generator network to draw starts from ({', '.join(SEARCHING)}), "
                             f"not --generator {args.generator}")
    searched = {"search": search} if search is not None else {}
    search_view = getattr(args, "search_view", None)
    if search_view is not None:
        if getattr(args, "what", "guided") != "guided":
            raise InputError(f"--search-view is for 'eval guided' (how its search sees the starts), not "
                             f"'eval {args.what}'")
        if search is None or search == 1:
            raise InputError("--search-view says how a search sees its starts' pictures: give --search N (N > 1) too")
        searched["search_view"] = search_view
    particles = getattr(args, "particles", None)
    if particles is not None:
        if particles < 1:
            raise InputError(f"--particles is how many samples run side by side for each picture: an integer >= 1, "
                             f"got {particles}")
        if getattr(args, "what", "guided") != "guided":
            raise InputError(f"--particles is for 'eval guided' (they are a guided run's samples), not "
                             f"'eval {args.what}'")
        if args.generator != "diffusion":
            raise InputError(f"--particles only applies to --generator diffusion (got {args.generator})")
        searched["particles"] = particles
    edit_start = getattr(args, "edit_start", None)
    if edit_start is not None:
        if getattr(args, "what", "edits") != "edits":
            raise InputError(f"--edit-start is for 'eval edits', not 'eval {args.what}'")
        if args.generator != "diffusion":
            raise InputError(f"--edit-start only applies to --generator diffusion (got {args.generator})")
        searched["edit_start"] = edit_start
    options = {name: getattr(args, name) for name in ("guidance_scale", "guidance_stop")
               if getattr(args, name, None) is not None}
    if not options:
        return searched
    flag = "--" + next(iter(options)).replace("_", "-")
    if getattr(args, "what", "guided") == "zero-shot":
        raise InputError(f"{flag} is for 'eval guided' and 'eval edits', not zero-shot evaluation")
    if args.generator != "diffusion":
        raise InputError(f"{flag} only applies to --generator diffusion (got {args.generator})")
    try:
        check_guidance(**options)
    except InputError as e:
        raise InputError(f"--guidance-scale / --guidance-stop: {e}") from None
    return {**options, **searched}


def cmd_edit(args) -> int:
    """Edit an image by text, keeping the rest of it."""
    from clipguide.guide.edit import edit_image
    from clipguide.preprocess import load_image

    run_options = _run_options(args)                      # checked before anything loads
    model = _load(args)
    image = load_image(args.image)[None]
    mask = load_image(args.mask).mean(dim=0) if args.mask else None
    result = edit_image(model, image, args.prompt, source=args.source, generator=args.generator, mask=mask,
                        preserve=args.preserve, outside=args.outside, latent_weight=args.latent_weight,
                        steps=args.steps, lr=args.lr, cutouts=args.cutouts, seed=args.seed, size=args.size,
                        strength=args.strength, network=_generator_network(args),
                        generator_options=_generator_options(args),
                        run_options=run_options, frame_every=max(1, args.steps // 40) if args.timelapse else 0,
                        prior=args.prior)
    return _write_result(result, args)


# generator families on the command line (clipguide.generators.GENERATORS and EDIT_ONLY; a test holds them equal)
_DRAWING = ("pixels", "fourier", "vqgan", "stylegan", "diffusion")
_EDITING = _DRAWING + ("grade",)


def _add_generator_args(p: argparse.ArgumentParser, default: str = "fourier", edit: bool = False) -> None:
    p.add_argument("--generator", choices=_EDITING if edit else _DRAWING, default=default,
                   help=f"what is steered (default {default}): raw pixels, a Fourier image, or the latent of a "
                   "VQGAN, a StyleGAN2, or a diffusion model's sampling" + (
                       "; grade: the image's colours as a whole (a 3 x 3 colour matrix and offset: light and "
                       "colour edits such as 'at night', no texture, shapes kept)" if edit else ""))
    p.add_argument("--generator-model", default=None, metavar="PATH",
                   help="the generator's network: a taming VQGAN .ckpt, a rosinality StyleGAN2 .pt, a diffusers "
                   "pipeline directory, or a clipguide safetensors file (default: the bundled one)")
    p.add_argument("--generator-config", default=None, metavar="YAML",
                   help="vqgan: the taming YAML beside the .ckpt (else read from the weights)")
    p.add_argument("--space", choices=["w", "w+"], default="w+", help="stylegan: latent space (default w+)")
    p.add_argument("--truncation", type=float, default=0.7, help="stylegan: truncation of the start (default 0.7)")
    _add_guidance_scale(p)


def _add_strength(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--strength", type=float, default=None, help=f"{where}: how far up the schedule the image is "
                   "taken (in (0, 1]; default 1 with --edit-start inversion, 0.6 with noise)")
    p.add_argument("--edit-start", choices=["inversion", "noise"], default=None,
                   help=f"{where}: how the image is taken that far: 'inversion' (DDIM inversion, under --source "
                   "where the UNet reads CLIP text embeddings; the default) or 'noise' (SDEdit)")


def _add_outside(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outside", type=float, default=10.0, metavar="W",
                   help="masked edits: weight of the generator's own picture staying like the original outside "
                   "the mask, so that a grade or a StyleGAN latent changes only what the mask holds (default 10)")


def _add_prior(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", default=None, metavar="PATH",
                   help="start from a text prior's picture of the prompt instead of a random one: 'bundled' (the "
                   "VQGAN prior of the bundled guide, which draws the mean picture) or a file written by clipguide "
                   "train-prior (a token prior, --set kind=tokens, samples the start; with --search N the guide "
                   "chooses among N samples). eval edits: a token prior redraws each picture's codes under the mask "
                   "(or, unmasked, the ones unlikely for the target) before guidance")


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search", type=int, default=None, metavar="N",
                   help="vqgan, stylegan, diffusion: the guide chooses each picture's start among N random ones "
                   "by the pictures the network draws from them (diffusion: its own unguided draft draws) "
                   "before the guided run (default 1: no search)")
    p.add_argument("--search-view", choices=("whole", "augmented"), default=None,
                   help="how the search sees each start's picture: whole (default) or through the guidance's "
                   "augmented cutouts")
    p.add_argument("--particles", type=int, default=None, metavar="K",
                   help="diffusion: K samples run side by side for each picture, the guide's choice resampling "
                   "them at every guided step, the best one kept (default 1)")


def _add_guidance_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance-scale", type=float, default=None, metavar="S",
                   help="diffusion: weight of the CLIP gradient on each denoising step (default 0.15)")
    p.add_argument("--guidance-stop", type=float, default=None, metavar="F",
                   help="diffusion: the fraction of denoising steps that are guided, the first ones (default 1: all)")
    p.add_argument("--cfg-scale", type=float, default=None, metavar="W",
                   help="diffusion with a text-conditional UNet: classifier-free guidance toward the prompt "
                        "(default: the model's own; 1: none, 0: unconditional)")


# what --steps says of the families' own settings (generators.steering_defaults; a test holds them equal)
_FAMILY_DEFAULTS = "the generator's own, Fourier 300, others 100"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipguide", description=(
        "Text-guided image generation and editing with CLIP as a loss. "
        "Models are named like 'default' (bundled), 'openai:ViT-B-32' (remote, cached), or given as a path "
        "to a checkpoint file or a Hugging Face model directory."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list architectures, bundled and remote weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("inspect", help="load a checkpoint and print its format, config and model card")
    p.add_argument("model", help="model name or checkpoint path")
    _add_load_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert any supported checkpoint to a clipguide safetensors file")
    p.add_argument("model", help="model name or checkpoint path")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16 (half the size)")
    _add_load_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("encode", help="zero-shot: which of the texts best matches each image")
    p.add_argument("--model", default="default", help="model name or checkpoint path (default: bundled 'default')")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--text", action="append", default=[], help="candidate text (repeatable)")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the context instead of failing")
    _add_load_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("train", help="train a CLIP contrastively (torchrun for several processes)",
                       description="Train or fine-tune a CLIP. Options come from a JSON file (--config) and "
                       "--set key=value overrides, checked against clipguide.train.config.TrainConfig "
                       "(e.g. --set steps=2000 --set batch_size=256 --set arch.vision.width=192). "
                       "Several processes: torchrun --nproc_per_node N -m clipguide train ...")
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one field (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.add_argument("--no-eval", action="store_true", help="skip the zero-shot evaluation on world data")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="zero-shot, retrieval and linear-probe evaluation on held-out world data",
                       description="Prints one JSON line per task. Tasks: colour_shape, count, relation, scene "
                       "(zero-shot on held-out compositions, with and without prompt ensembling), retrieval "
                       "(R@1/5/10 both ways) and linear_probe (logistic regression on frozen image features).")
    p.add_argument("what", nargs="?", choices=["zero-shot", "guided", "edits", "samples"], default="zero-shot",
                   help="zero-shot (default): the held-out tasks below; guided: steer one picture per prompt of "
                   "the held-out suite with --model and score it with --judge and the world oracle; edits: edit "
                   "rendered world pictures (colour, at night, gothic church) and report how often the judge "
                   "sees the edit and how much of the rest stays (L2, SSIM); samples: how world-like --generator's "
                   "unguided pictures are (--n of them): the Frechet distance of the judge's embeddings to world "
                   "renders', beside a second set of renders (fd_world) and flat pictures (fd_flat)")
    p.add_argument("--model", default="default", help="model name or checkpoint path (default: bundled 'default'); "
                   "for 'guided' the guide")
    p.add_argument("--judge", default="judge", help="guided: the independent scoring model (default: bundled 'judge')")
    p.add_argument("--prompts", default=None, help="guided: a text file, one prompt per line (default: the world's "
                   "held-out suite, 52 prompts)")
    p.add_argument("--candidates", default=None,
                   help="guided: the captions the judge chooses among: 'prompts' (the default: the prompts themselves), "
                   "'suite' (the world's 52-prompt suite, e.g. for a part of it given by --prompts) or a text file")
    p.add_argument("--generator", choices=_EDITING, default="fourier",
                   help="guided, edits: the generator steered (default fourier; grade: edits only)")
    p.add_argument("--generator-model", default=None,
                   help="guided, edits: the generator's network (default: the bundled one of its family)")
    _add_guidance_scale(p)
    _add_search(p)
    _add_prior(p)
    p.add_argument("--edits", type=int, default=30, help="edits: pictures edited (default 30)")
    p.add_argument("--preserve", type=float, default=None, help="edits: weight of staying near the original "
                   "(default 1; grade 0)")
    _add_outside(p)
    _add_strength(p, "edits, diffusion")
    p.add_argument("--steps", type=int, default=None, help="guided, edits: steps per picture (default: " + _FAMILY_DEFAULTS
                   + "; edits 100)")
    p.add_argument("--lr", type=float, default=None, help="guided, edits: learning rate (default: the generator's own; "
                   "edits 0.05)")
    p.add_argument("--cutouts", type=int, default=16, help="guided: augmented views per step (default 16)")
    p.add_argument("--size", type=int, default=None, help="guided: picture side (default: the guide's input size)")
    p.add_argument("--tv", type=float, default=None, help="guided: total-variation weight (default: the generator's own)")
    p.add_argument("--sheet", default=None, help="guided: also write a contact sheet of the pictures (PNG)")
    p.add_argument("--task", action="append", choices=["colour_shape", "count", "relation", "scene", "retrieval",
                                                       "linear_probe"], help="task to run (repeatable; default all)")
    p.add_argument("--n", type=int, default=500, help="images per zero-shot task, or samples (default 500)")
    p.add_argument("--retrieval-n", type=int, default=1000, help="image-caption pairs for retrieval (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation samples")
    _add_load_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("world", help="the procedural captioned world: contact sheets and training shards")
    p.add_argument("action", choices=["sheet", "export"],
                   help="sheet: a PNG grid of samples with captions; export: webdataset-style tar shards")
    p.add_argument("--out", required=True, help="PNG path (sheet) or output folder (export)")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--split", choices=["train", "eval", "all"], default="train",
                   help="train (never shows held-out compositions), eval (only those) or all")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard for export (default 1000)")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("generate", help="text to image: steer pixels, Fourier, VQGAN, StyleGAN2 or diffusion with CLIPLoss",
                       description="Prompts use 'text:weight:stop | text2:weight' (negative weights push away).")
    p.add_argument("prompt", help='e.g. "a red star on a blue background" or "a gothic church:1 | blurry:-0.5"')
    p.add_argument("--out", required=True, help="output image (.png keeps the provenance)")
    p.add_argument("--model", default="default", help="guide model name or checkpoint path (default: bundled)")
    _add_generator_args(p)
    _add_search(p)
    _add_prior(p)
    p.add_argument("--steps", type=int, default=None, help="optimisation (or, for diffusion, denoising) steps "
                   "(default: " + _FAMILY_DEFAULTS + ")")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the generator's own, Fourier 0.5, "
                   "others 0.05)")
    p.add_argument("--cutouts", type=int, default=16, help="augmented views per step (default 16)")
    p.add_argument("--size", type=int, default=None, help="image side (default: the model's input size)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same picture (default 0)")
    p.add_argument("--tv", type=float, default=None, help="total-variation weight (smoothness; default: the "
                   "generator's own, Fourier 100, others 0)")
    p.add_argument("--timelapse", default=None, help="also write the optimisation as a GIF here")
    _add_load_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="edit an image by text, keeping the rest of it",
                       description="Starts the generator from the image and steers it toward --prompt (or, with "
                       "--source, along the direction from the source text to the prompt), keeping the pixels "
                       "outside --mask close to the original.")
    p.add_argument("--image", required=True, help="the image to edit (PNG/JPEG/WebP; RGBA and grayscale are converted)")
    p.add_argument("--prompt", required=True, help='what it should show, e.g. "at night" or "a gothic church"')
    p.add_argument("--source", default=None, help="what it shows now (makes the loss directional)")
    p.add_argument("--out", required=True, help="output image (.png keeps the provenance)")
    p.add_argument("--mask", default=None, help="image whose white part may change (default: all of it)")
    p.add_argument("--preserve", type=float, default=None, help="weight of staying close to the original "
                   "(default 1; grade 0: it cannot draw or move anything)")
    _add_outside(p)
    p.add_argument("--latent-weight", type=float, default=0.0, help="weight of staying close to the image's latent")
    _add_strength(p, "diffusion")
    p.add_argument("--model", default="default", help="guide model name or checkpoint path (default: bundled)")
    _add_generator_args(p, edit=True)
    p.add_argument("--steps", type=int, default=100, help="steps (default 100)")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    p.add_argument("--cutouts", type=int, default=16, help="augmented views per step (default 16)")
    p.add_argument("--size", type=int, default=None, help="working size (default: the image's, at most 256 px)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--timelapse", default=None, help="also write the edit as a GIF here")
    p.add_argument("--prior", default=None, metavar="PATH",
                   help="vqgan: a token prior (a file written by clipguide train-prior --set kind=tokens) first "
                   "redraws the image's codes under the mask, or without a mask the ones it "
                   "finds unlikely for the prompt against --source, for the prompt; guidance goes on from there")
    _add_load_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("train-generator", help="train a small world generator (vqgan, stylegan, diffusion) to steer",
                       description="Train a VQGAN, StyleGAN2 or diffusers UNet on 64 px pictures of the procedural "
                                   "world (or any training data source); resumable, exported in fp16 with a model card. "
                                   "'autoencoder' trains a diffusers KL autoencoder; a diffusion run given one "
                                   "(--set arch.vae=RUN/world-autoencoder) denoises in its latent space.")
    p.add_argument("family", choices=["vqgan", "stylegan", "diffusion", "autoencoder"],
                   help="which generator family (or the autoencoder of a latent diffusion model)")
    p.add_argument("--out", default=None, help="run folder (default runs/gen)")
    p.add_argument("--steps", type=int, default=0, help="training steps (default 3000)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting (data, size, batch_size, lr, seed, save_every, arch.FIELD, ...); repeatable")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--snapshot", action="store_true",
                   help="do not train: export the run's last checkpoint (network, card, samples) into "
                   "OUT/snapshot-STEP to try it part-way (same settings as the run)")
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("train-prior", help="train a text prior: where a generator's latent starts for a prompt",
                       description="Encode image-caption pairs (the generator's latent of each image, the guide's "
                       "text embedding of its caption), then train a small network from the embedding to the "
                       "latent: kind=mean, a decoder of the mean latent, or kind=tokens, a masked-token transformer "
                       "that samples VQGAN codes. generate and eval guided start from it with --prior. Resumable; "
                       "exported in fp16 with a model card.")
    p.add_argument("--generator", choices=["vqgan"], default="vqgan",
                   help="the family whose latent it predicts (vqgan: the encoder gives each image's latent)")
    p.add_argument("--generator-model", default=None, metavar="PATH", help="the generator's network (default: bundled)")
    p.add_argument("--model", default="default", help="the guide whose text tower it reads (default: bundled)")
    p.add_argument("--out", default=None, help="run folder (default runs/prior)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting (kind, data, pairs, steps, batch_size, lr, width, depth, heads, seed, "
                   "threads, ...); repeatable")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=cmd_train_prior)

    p = sub.add_parser("app", help="start the web app (Gradio) on 127.0.0.1; `clipguide app --help` lists its options",
                       add_help=False)
    p.add_argument("app_args", nargs=argparse.REMAINDER, help="the app's own options (clipguide app --help)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded default model")
    p.add_argument("--model", default=None, help="model name or path (default: the bundled 'default')")
    p.add_argument("--prompt", default="a gothic church", help="what to steer a picture of (default 'a gothic church')")
    p.add_argument("--steps", type=int, default=None, help="steering steps (default: the Fourier image's own, 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pictures (default 0)")
    p.add_argument("--out", default="runs/demo.png", help="where the steered picture goes (default runs/demo.png)")
    p.set_defaults(func=cmd_demo)
    return parser


def _app_module():
    """apps/gradio_app.py of this source tree (the app lives beside the package, not inside it)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "apps" / "gradio_app.py"
    if not path.is_file():
        raise SystemExit("clipguide app: apps/gradio_app.py is not beside this installation; run it from a "
                         "checkout of clipguide (pip install -e .) or `python apps/gradio_app.py`")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("clipguide app needs gradio: pip install 'clipguide[app]'") from None
    spec = importlib.util.spec_from_file_location("clipguide_gradio_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cmd_app(args) -> int:
    return _app_module().main(args.app_args)


def main(argv: list[str] | None = None) -> int:
    from clipguide.errors import ClipguideError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:                       # the app parses its own options (clipguide app --help)
        return _app_module().main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClipguideError as e:
        print(f"clipguide: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
