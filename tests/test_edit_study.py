"""The editing study: cases know their truth from the renderer, and the measures mean what they say."""
from __future__ import annotations

import pytest
import torch

import clipguide

from clipguide.errors import InputError
from clipguide.guide.edit_study import EDIT_KINDS, edit_cases, edit_study, ssim


def test_cases_take_the_kinds_in_turn_and_know_where_the_edit_goes():
    cases = edit_cases(6, size=64)
    assert [c.kind for c in cases] == list(EDIT_KINDS) * 2
    for c in cases:
        assert c.image.shape == c.target_image.shape == (3, 64, 64)
        changed = (c.image - c.target_image).abs().amax(0) > 0.02
        assert changed.any(), c.kind
        assert bool((c.region[changed] == 1).all())                   # the region covers every changed pixel
        if c.kind == "colour":
            assert c.masked and c.region.mean() < 0.5 and c.source != c.target
            assert c.source.split()[-1] == c.target.split()[-1]        # same shape, another colour
        if c.kind == "night":
            assert not c.masked and c.source.endswith("day") and c.target.endswith("at night")
        if c.kind == "gothic":
            assert c.masked and "gothic church" in c.target and "gothic" not in c.source
    with pytest.raises(InputError):
        edit_cases(3, kinds=("cubism",))


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
