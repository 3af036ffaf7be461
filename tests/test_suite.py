"""The held-out prompt suite and guided evaluation (`clipguide eval guided`)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

import clipguide
from clipguide.cli import main
from clipguide.errors import InputError
from clipguide.guide.suite import guided_eval, world_prompt_suite
from clipguide.tokenizer import Tokenizer
from clipguide.world import World
from clipguide.world.heldout import heldout_hits
from clipguide.world.parse import parse_caption


def test_suite_is_held_out_parsable_and_mutually_exclusive():
    prompts = world_prompt_suite()
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)
    parsed = [parse_caption(p) for p in prompts]
    assert all(a is not None for a in parsed)
    assert {a["kind"] for a in parsed} == {"object", "count", "relation", "scene"}
    # every prompt names a composition the training split never shows
    assert all(heldout_hits(a) for a in parsed), [p for p, a in zip(prompts, parsed) if not heldout_hits(a)]
    # no training caption is a suite prompt
    train = set(World(seed=0, split="train").captions(range(20000)))
    assert not train & set(prompts)
    # no two prompts describe the same picture
    for a, b in itertools.combinations(parsed, 2):
        assert a != b
    assert world_prompt_suite(kinds=["scene"]) == prompts[-5:]
    with pytest.raises(InputError, match="unknown prompt kinds"):
        world_prompt_suite(kinds=["planet"])


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    tok = Tokenizer.train(world_prompt_suite() * 2, vocab_size=600, context_length=32)
    return clipguide.create_model("ViT-nano", tokenizer=tok).eval()


def test_guided_eval_reports_every_prompt(nano):
    judge = clipguide.create_model("ViT-nano", tokenizer=nano.tokenizer).eval()
    prompts = ["a red star on the left", "two cyan hearts", "a tree at night"]
    report, pictures = guided_eval(nano, judge, prompts, steps=2, cutouts=2, progress=False)
    assert pictures.shape == (3, 3, 32, 32) and 0 <= pictures.min() and pictures.max() <= 1
    assert report.prompts == prompts and len(report.guide) == len(report.judge_correct) == 3
    assert len(report.adversarial) == 3 and len(report.oracle_passed) == 3
    assert report.oracle_passed[0] is not None           # colour and position are checkable
    summary = report.summary()
    assert summary["n"] == 3 and 0 <= summary["judge_top1"] <= 1
    # same seed, same pictures
    again, pictures2 = guided_eval(nano, judge, prompts[:1], steps=2, cutouts=2, progress=False)
    assert torch.equal(pictures2[0], pictures[0])
    with pytest.raises(InputError, match="empty"):
        guided_eval(nano, judge, [], steps=1, progress=False)


def test_eval_guided_command(nano, tmp_path, capsys):
    path = clipguide.save(nano, tmp_path / "nano.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red star on the left\n\na tree at night\n")
    sheet = tmp_path / "sheet.png"
    assert main(["eval", "guided", "--model", str(path), "--judge", str(path), "--prompts", str(prompts),
                 "--steps", "2", "--cutouts", "2", "--sheet", str(sheet)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["prompt"] for x in lines[:2]] == ["a red star on the left", "a tree at night"]
    assert lines[-1]["task"] == "guided" and lines[-1]["n"] == 2 and "adversarial_share" in lines[-1]
    assert sheet.stat().st_size > 0


def test_guided_eval_judges_among_the_candidates(nano, monkeypatch):
    import clipguide.guide.suite as suite_module

    judge = clipguide.create_model("ViT-nano", tokenizer=nano.tokenizer).eval()
    prompts = ["a red star on the left", "a tree at night"]
    seen = {}
    real_score = suite_module.score

    def spy(*args, **kwargs):
        seen["suite"] = kwargs["suite"]
        return real_score(*args, **kwargs)

    monkeypatch.setattr(suite_module, "score", spy)
    suite = world_prompt_suite()
    report, pictures = guided_eval(nano, judge, prompts, steps=1, cutouts=2, progress=False, candidates=suite)
    assert seen["suite"] == suite and len(report.judge_correct) == 2
    guided_eval(nano, judge, prompts, steps=1, cutouts=2, progress=False)
    assert seen["suite"] == prompts                        # by default the prompts themselves
    with pytest.raises(InputError, match="1 of the prompts are not among .*'a tree at night'"):
        guided_eval(nano, judge, prompts, steps=1, progress=False, candidates=prompts[:1])


def test_eval_guided_command_candidates(nano, tmp_path, capsys):
    path = clipguide.save(nano, tmp_path / "nano.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red star on the left\n")
    args = ["eval", "guided", "--model", str(path), "--judge", str(path), "--prompts", str(prompts),
            "--steps", "1", "--cutouts", "2"]
    assert main(args + ["--candidates", "suite"]) == 0
    summary = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1]
    assert summary["candidates"] == len(world_prompt_suite()) and summary["n"] == 1
    # bad values are refused before any model loads (the model path below does not exist)
    lacking = tmp_path / "lacking.txt"
    lacking.write_text("two cyan hearts\n")
    nowhere = str(tmp_path / "none.safetensors")
    for bad, message in ((["--candidates", str(tmp_path / "no-such-file.txt")], "no file"),
                         (["--candidates", str(lacking)], "add them to the candidates"),
                         (["--prompts", str(tmp_path / "no-prompts.txt")], "--prompts: no file")):
        assert main(["eval", "guided", "--model", nowhere, "--prompts", str(prompts)] + bad) != 0
        assert message in capsys.readouterr().err
    assert main(["eval", "zero-shot", "--model", nowhere, "--candidates", "suite"]) != 0
    assert "--candidates is for 'eval guided'" in capsys.readouterr().err
