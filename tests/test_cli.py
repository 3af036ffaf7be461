"""The `clipguide` command: every subcommand runs, and errors come out as one clear line."""
from __future__ import annotations

import json

import pytest
import torch

import clipguide
from clipguide.cli import build_parser, main
from clipguide.errors import InputError
from clipguide.tokenizer import Tokenizer


@pytest.fixture
def nano_path(tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red circle", "a blue square"] * 5, vocab_size=600, context_length=16)
    model = clipguide.create_model("ViT-nano", tokenizer=tok)
    return clipguide.save(model, tmp_path / "nano.safetensors", model_card="tiny")


def test_models_lists_everything(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B-32" in out and "openai:ViT-B-32" in out


def test_inspect_and_convert(nano_path, tmp_path, capsys):
    assert main(["inspect", str(nano_path)]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[: out.rindex("}") + 1])
    assert info["format"] == "clipguide" and info["parameters"] > 0
    sd_path = tmp_path / "nano.pt"
    torch.save(clipguide.load(nano_path).state_dict(), sd_path)
    out_path = tmp_path / "converted.safetensors"
    assert main(["convert", str(sd_path), str(out_path), "--format", "open_clip", "--fp16"]) == 0
    back = clipguide.load(out_path)
    assert back.format == "clipguide" and back.config.vision.image_size == 32


def test_encode_prints_best_caption(nano_path, tmp_path, capsys):
    img = tmp_path / "x.png"
    clipguide.save_image(torch.rand(3, 40, 40), img)
    assert main(["encode", "--model", str(nano_path), "--image", str(img), "--text", "a red circle",
                 "--text", "a blue square"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["best"] in ("a red circle", "a blue square") and abs(sum(row["probs"].values()) - 1) < 1e-3


def test_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipguide: error:") and "bad.pt" in err


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help text"


def test_app_options_have_help(capsys):
    pytest.importorskip("gradio")
    from clipguide.cli import _app_module

    app = _app_module()
    with pytest.raises(SystemExit) as e:
        app.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--share", "--out", "--model", "--max-steps", "--max-size", "--max-cutouts",
                   "--max-upload-mb", "--concurrency", "--queue-size"):
        assert option in text
    config, args = app.parse_args(["--model", "mine=x.safetensors", "--max-steps", "50"])
    assert config.models == {"mine": "x.safetensors"} and config.max_steps == 50 and args.host == "127.0.0.1"
    assert not args.share
    with pytest.raises(SystemExit):
        app.parse_args(["--model", "no-equals-sign"])


def test_train_presets_are_valid_configs():
    from clipguide.train.config import TrainConfig

    default, judge = TrainConfig.from_file("default"), TrainConfig.from_file("judge")
    towers = []
    for cfg in (default, judge):
        assert cfg.steps > 0
        with torch.device("meta"):
            model = clipguide.create_model(cfg.model, tokenizer=object())
        assert model.num_parameters() <= 10_000_000          # the bundled models' budget
        assert model.config.vision.image_size == 64
        towers.append(model.config.vision.is_resnet)
    assert towers[0] != towers[1], "the judge has another kind of image tower than the guide"
    assert default.seed != judge.seed and default.data != judge.data
    tune = TrainConfig.from_file("default-tune")          # the guide's second stage starts from its first
    assert tune.model == f"{default.out_dir}/model.safetensors" and tune.steps < default.steps
    assert tune.data != default.data and tune.out_dir != default.out_dir


def test_world_sheet_and_export(tmp_path, capsys):
    assert main(["world", "sheet", "--out", str(tmp_path / "s.png"), "--n", "4", "--size", "32"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["world", "export", "--out", str(tmp_path / "shards"), "--n", "6", "--shard-size", "4"]) == 0
    from clipguide.train.data import open_source

    assert len(open_source(f"shards:{tmp_path / 'shards'}")) == 6


def test_generate_writes_a_png_with_provenance(nano_path, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "g.png"
    assert main(["generate", "a red circle:1 | a blue square:-0.5", "--model", str(nano_path), "--out", str(out),
                 "--steps", "3", "--cutouts", "2", "--timelapse", str(tmp_path / "t.gif")]) == 0
    with Image.open(out) as im:
        prov = json.loads(im.text["clipguide"])
    assert prov["prompts"][1] == {"text": "a blue square", "weight": -0.5, "stop": None}
    assert (tmp_path / "t.gif").exists()


def test_generate_takes_the_generator_families_own_settings(nano_path, tmp_path):
    """Unset --lr and --tv take the family's settings (Fourier's differ from the generic ones); given
    ones win; the help states the families' step counts as steering_defaults has them."""
    from PIL import Image

    from clipguide.cli import _FAMILY_DEFAULTS
    from clipguide.generators import STEERING_BASE, steering_defaults

    def provenance(*extra):
        out = tmp_path / "g.png"
        assert main(["generate", "a red circle", "--model", str(nano_path), "--out", str(out), "--steps", "2",
                     "--cutouts", "2", *extra]) == 0
        with Image.open(out) as im:
            return json.loads(im.text["clipguide"])

    fourier = steering_defaults("fourier")
    assert fourier != (STEERING_BASE["steps"], STEERING_BASE["lr"], STEERING_BASE["tv"])
    prov = provenance()
    assert (prov["generator"], prov["steps"], prov["lr"], prov["tv"]) == ("fourier", 2, fourier[1], fourier[2])
    prov = provenance("--generator", "pixels")
    assert (prov["lr"], prov["tv"]) == (STEERING_BASE["lr"], STEERING_BASE["tv"])
    prov = provenance("--lr", "0.2", "--tv", "3")
    assert (prov["lr"], prov["tv"]) == (0.2, 3.0)
    assert f"Fourier {fourier[0]}" in _FAMILY_DEFAULTS and f"others {STEERING_BASE['steps']}" in _FAMILY_DEFAULTS
    with pytest.raises(InputError, match="not one of"):
        steering_defaults("sketch")


def test_command_line_generator_choices_follow_the_registry():
    from clipguide.cli import _DRAWING, _EDITING
    from clipguide.generators import EDIT_ONLY, GENERATORS

    assert set(_EDITING) == set(GENERATORS) and set(_DRAWING) == set(GENERATORS) - set(EDIT_ONLY)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "a red star", "--out", "x.png", "--generator", "grade"])
    assert build_parser().parse_args(["edit", "--image", "a.png", "--prompt", "at night", "--out", "b.png",
                                      "--generator", "grade"]).generator == "grade"


def test_demo_reads_pictures_and_steers_one(nano_path, tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--model", str(nano_path), "--steps", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("held-out picture of") == 8 and "steered a picture of 'a gothic church'" in text
    assert out.stat().st_size > 0
