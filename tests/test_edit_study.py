"""The editing study: cases know their truth from the renderer, and the measures mean what they say."""
from __future__ import annotations

import pytest
import torch

import clipguide

from clipguide.errors import InputError
from clipguide.guide.edit_study import (EDIT_KINDS, box_of, edit_cases, edit_study, judge_edits, largest_part,
                                        ssim)


def test_cases_take_the_kinds_in_turn_and_know_where_the_edit_goes():
    cases = edit_cases(6, size=64)
    assert [c.kind for c in cases] == list(EDIT_KINDS) * 2
    for c in cases:
        assert c.image.shape == c.target_image.shape == (3, 64, 64)
        changed = (c.image - c.target_image).abs().amax(0) > 0.02
        assert changed.any(), c.kind
        if c.kind != "gothic":
            assert bool((c.region[changed] == 1).all())               # the region covers every changed pixel
        if c.kind == "colour":
            assert c.masked and c.region.mean() < 0.5 and c.source != c.target
            assert c.source.split()[-1] == c.target.split()[-1]        # same shape, another colour
        if c.kind == "night":
            assert not c.masked and c.source.endswith("day") and c.target.endswith("at night")
        if c.kind == "gothic":
            assert c.masked and "gothic church" in c.target and "gothic" not in c.source
    with pytest.raises(InputError):
        edit_cases(3, kinds=("cubism",))


def test_gothic_mask_is_the_box_around_the_buildings_not_their_outline():
    cases = edit_cases(10, kinds=("gothic",))
    assert any("snow" in c.source for c in cases)                     # where snowflakes move between the renders
    for c in cases:
        rows, cols = c.region.nonzero().unbind(1)
        box = c.region[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool((box == 1).all())                                 # a filled rectangle
        assert 0.15 < float(c.region.mean()) < 0.75, c.source
        changed = (c.image - c.target_image).abs().amax(0) > 0.02
        assert float(c.region[changed].mean()) > 0.85                # nearly all of the change; stray flakes aside
        # the new spires' outline is not in the mask: inside the box, changed and kept pixels both occur
        inside = changed[c.region > 0]
        assert 0.1 < float(inside.float().mean()) < 0.9


def test_largest_part_and_box():
    m = torch.zeros(12, 12)
    m[1:4, 1:3] = 1                                                   # 6 pixels
    m[6:10, 5:9] = 1                                                  # 16 pixels
    m[10, 9] = 1                                                      # touches the big part diagonally
    m[0, 11] = 1
    big = largest_part(m)
    assert big.sum() == 17 and big[10, 9] == 1 and big[1, 1] == 0 and big[0, 11] == 0
    b = box_of(big)
    assert b.sum() == 5 * 5 and b[6:11, 5:10].all() and b[5].sum() == 0
    assert largest_part(torch.zeros(4, 4)).sum() == 0 and box_of(torch.zeros(4, 4)).sum() == 0


def test_ssim_is_one_for_the_same_picture_and_lower_for_another():
    a = edit_cases(1)[0].image
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-4)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(a, noisy) < 0.8
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1
    half = a.clone()
    half[:, :, 40:] = 0
    assert ssim(a, half, mask) > ssim(a, half)


def test_study_reports_applied_and_kept():
    guide = clipguide.load("default")
    cases = edit_cases(3, size=64)
    report, pics = edit_study(guide, guide, cases, generator="pixels", steps=3, cutouts=2, progress=False)
    assert pics.shape == (3, 3, 64, 64)
    s = report.summary()
    assert s["n"] == 3 and set(s) >= {"all", *EDIT_KINDS}
    for c, out, rmse in zip(cases, pics, report.kept_rmse):
        if c.masked:                                                  # nothing outside the mask moves
            assert rmse < 1e-5 and ((out - c.image).abs() * (1 - c.region)).max() < 1e-5


def test_truth_check_tells_a_real_edit_from_a_recolouring_that_fools_a_judge():
    judge = clipguide.load("judge")
    cases = edit_cases(6, size=64)
    truth = torch.stack([c.target_image for c in cases])
    real = judge_edits(judge, cases, truth)
    assert real.toward_truth == [True] * 6 and sum(real.applied) >= 5
    assert real.kept_rmse[0] < 0.05                                   # a colour edit keeps the rest
    none = judge_edits(judge, cases, torch.stack([c.image for c in cases]))
    assert none.toward_truth == [False] * 6 and none.applied == none.applied_before
    for level in (0.5, 0.6):                                          # the region washed grey, a hazier day
        grey = torch.stack([c.image * (1 - c.region) + level * c.region if c.masked else c.image * 0.9 + 0.05
                            for c in cases])
        washed = judge_edits(judge, cases, grey)
        assert washed.toward_truth == [False] * 6
    blurred = torch.nn.functional.avg_pool2d(truth, 3, 1, 1, count_include_pad=False)
    soft = judge_edits(judge, cases, blurred).toward_truth                  # the right edit, drawn softly
    assert soft == [True] * 6
    mixed = judge_edits(judge, cases, torch.stack([truth[0], cases[1].image, *truth[2:]]))
    assert mixed.toward_truth == [True, False, True, True, True, True]
    s = mixed.summary()
    both = sum(a and t for a, t in zip(mixed.applied, mixed.toward_truth))
    assert s["all"]["applied_and_toward_truth"] == round(both / 6, 4) and s["all"]["toward_truth"] == round(5 / 6, 4)
    assert s["night"]["toward_truth"] == 0.5
    with pytest.raises(InputError):
        judge_edits(judge, cases, truth[:2])


def test_eval_edits_command_prints_each_edit_with_its_truth_check(tmp_path, capsys):
    import json

    from clipguide.cli import main

    sheet = tmp_path / "edits.png"
    assert main(["eval", "edits", "--model", "default", "--judge", "judge", "--edits", "3", "--generator", "grade",
                 "--steps", "2", "--cutouts", "2", "--sheet", str(sheet)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["kind"] for x in lines[:3]] == list(EDIT_KINDS) and lines[-1]["task"] == "edits"
    for x in lines[:3]:
        before, after = x["truth_rmse"]
        assert before > 0 and after >= 0
        s_before, s_after = x["truth_ssim"]
        assert x["toward_truth"] == (after <= 0.8 * before and 1 - s_after <= max(0.8 * (1 - s_before), 0.1))
    assert {"toward_truth", "applied_and_toward_truth"} <= set(lines[-1]["all"])
    assert sheet.stat().st_size > 0
