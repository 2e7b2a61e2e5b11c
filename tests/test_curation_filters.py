"""Each curation filter trips on an episode built to trip it, and on nothing else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from curation.selection.filters import REASONS, FilterConfig, apply_filters, mean_visibility, motion_px
from test_curation_helpers import make_episode, make_labels


def test_good_episode_passes_both_passes():
    ep = make_episode(0, T=16)
    labels = make_labels(ep, speed_px=1.0, visibility=0.9)
    assert apply_filters(ep, None, FilterConfig()) == []
    assert apply_filters(ep, labels, FilterConfig()) == []


def test_too_short():
    ep = make_episode(0, T=5)
    assert apply_filters(ep, None, FilterConfig(min_steps=8)) == ["too_short"]
    assert apply_filters(ep, None, FilterConfig(min_steps=5)) == []


def test_static_without_labels_uses_frame_differences():
    still = make_episode(0, T=16, moving=False)
    assert apply_filters(still, None, FilterConfig()) == ["static"]
    # the moving square (6x6 px of 32x32 moving 1 px a step) changes well above 0.2% of the pixels
    assert "static" not in apply_filters(make_episode(0, T=16, moving=True), None, FilterConfig())
    # small noise (JPEG-like, below the grey-level threshold) is not motion
    noisy = make_episode(0, T=16, moving=False)
    rng = np.random.default_rng(0)
    noisy.frames["image"] = np.clip(noisy.frames["image"].astype(int) + rng.integers(-5, 6, noisy.frames["image"].shape), 0, 255).astype(np.uint8)
    assert apply_filters(noisy, None, FilterConfig()) == ["static"]


def test_static_with_labels_uses_track_displacement():
    ep = make_episode(0, T=16)
    moving = make_labels(ep, horizon=8, speed_px=1.0)
    # speed 1 px/step over an 8-step horizon: the largest displacement is exactly 7 px
    assert motion_px(moving) == pytest.approx(7.0)
    assert apply_filters(ep, moving, FilterConfig(static_motion_px=1.0)) == []
    assert apply_filters(ep, moving, FilterConfig(static_motion_px=7.5)) == ["static"]
    still = make_labels(ep, speed_px=0.0)
    assert motion_px(still) == 0.0
    assert apply_filters(ep, still, FilterConfig()) == ["static"]


@pytest.mark.parametrize("language", ["", "   \n"])
def test_no_language(language):
    ep = make_episode(0, language=language)
    assert apply_filters(ep, None, FilterConfig()) == ["no_language"]
    assert apply_filters(ep, None, FilterConfig(require_language=False)) == []


def test_placeholder_language_is_kept_unless_asked_to_drop_it():
    ep = make_episode(0, language="pick anything")
    ep.language_informative = False  # kuka: the same placeholder on every episode
    assert apply_filters(ep, None, FilterConfig()) == []
    assert apply_filters(ep, None, FilterConfig(drop_uninformative_language=True)) == ["no_language"]
    assert apply_filters(ep, None, FilterConfig(drop_uninformative_language=True, require_language=False)) == []
    ep.language_informative = True
    assert apply_filters(ep, None, FilterConfig(drop_uninformative_language=True)) == []


def test_low_visibility_needs_labels():
    ep = make_episode(0, T=16)
    labels = make_labels(ep, visibility=0.05, seed=3)
    assert mean_visibility(labels) < 0.2
    assert apply_filters(ep, None, FilterConfig()) == []  # pre-labeling pass cannot judge it
    assert apply_filters(ep, labels, FilterConfig(min_track_visibility=0.2)) == ["low_visibility"]
    assert apply_filters(ep, labels, FilterConfig(min_track_visibility=0.0)) == []


def test_mean_visibility_counts_only_in_range_steps():
    ep = make_episode(0, T=10)
    labels = make_labels(ep, horizon=8, stride=4, visibility=1.0)
    # anchors 0, 4, 8: in-range steps 8, 6, 2, all visible -> exactly 1.0 despite padding
    assert labels.in_range.sum() == 16
    assert mean_visibility(labels) == 1.0


def test_bad_actions():
    ep = make_episode(0)
    ep.actions[3, 2] = np.nan
    assert apply_filters(ep, None, FilterConfig()) == ["bad_actions"]
    ep = make_episode(0)
    ep.actions[1, 0] = np.inf
    assert apply_filters(ep, None, FilterConfig()) == ["bad_actions"]
    ep = make_episode(0)
    ep.actions[5, 6] = 5.0e3
    assert apply_filters(ep, None, FilterConfig(max_abs_action=1.0e3)) == ["bad_actions"]
    assert apply_filters(ep, None, FilterConfig(max_abs_action=None)) == []
    assert apply_filters(ep, None, FilterConfig(max_abs_action=1.0e4)) == []


def test_blank_camera():
    ep = make_episode(0)
    ep.frames["image"][:] = 0
    reasons = apply_filters(ep, None, FilterConfig())
    assert "blank_camera" in reasons
    declared = make_episode(0)
    declared.blank_cameras = ("image",)
    assert apply_filters(declared, None, FilterConfig()) == ["blank_camera"]
    # a blank secondary camera does not drop the episode
    other = make_episode(0)
    other.frames["wrist"] = np.zeros_like(other.frames["image"])
    other.blank_cameras = ("wrist",)
    assert apply_filters(other, None, FilterConfig()) == []


def test_several_reasons_reported_in_stable_order():
    ep = make_episode(0, T=4, language="", moving=False)
    ep.actions[0, 0] = np.nan
    assert apply_filters(ep, None, FilterConfig()) == ["too_short", "bad_actions", "no_language", "static"]


def test_disabled_filters_and_config_round_trip():
    ep = make_episode(0, T=4, language="")
    cfg = FilterConfig(disabled=("too_short",))
    assert apply_filters(ep, None, cfg) == ["no_language"]
    assert FilterConfig.from_dict(cfg.to_dict()) == cfg
    assert set(FilterConfig().to_dict()) == {f.name for f in dataclasses.fields(FilterConfig)}
    with pytest.raises(ValueError, match="unknown filter"):
        FilterConfig(disabled=("nope",))
    with pytest.raises(ValueError, match="unknown filter option"):
        FilterConfig.from_dict({"min_step": 3})
    assert set(REASONS) == {"too_short", "static", "no_language", "low_visibility", "bad_actions", "blank_camera"}


def test_long_episode_blank_and_static_checks_sample_frames():
    ep = make_episode(0, T=300, moving=False)
    assert apply_filters(ep, None, FilterConfig()) == ["static"]
    ep.frames["image"][-1, 10:20, 10:20] = 255 - ep.frames["image"][-1, 10:20, 10:20]  # the last frame always counts
    assert apply_filters(ep, None, FilterConfig()) == []
    ep.frames["image"][:200] = 0  # two thirds of the frames flat
    assert "blank_camera" in apply_filters(ep, None, FilterConfig(blank_frame_fraction=0.5))
    assert "blank_camera" not in apply_filters(ep, None, FilterConfig(blank_frame_fraction=0.9))
