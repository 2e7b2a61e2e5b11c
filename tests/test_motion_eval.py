"""Moving / static classes and false motion (labelers/eval/motion.py), the static-point test
of the default tracker (labelers/tracking/lk_refined.py) on hand-made arrays, and the refined
tracker against simulator ground truth on the shared small simulated dataset."""

from __future__ import annotations

import numpy as np
import pytest

from labelers.eval import ground_truth as gt
from labelers.eval import metrics
from labelers.eval import motion as me
from labelers.tracking.lk_refined import RefinedLKTracker, sample_nearest, unchanged_map
from labelers.tracking.common import grid_queries
from labelers.tracking.registry import get_tracker
from schemas.triplet import anchor_steps


def _tracks(*paths):
    """N=1 x K x T x 2 from K lists of (x, y)."""
    return np.array([paths], np.float32)


def test_motion_classes_split_moving_static_and_background():
    T = 4
    gt_tracks = _tracks(
        [(10, 10)] * T,  # static
        [(20, 20), (20.5, 20), (21, 20), (22, 20)],  # moves 2 px
        [(30, 30), (30.3, 30), (30.3, 30), (30.3, 30)],  # neither: 0.3 px
        [(np.nan, np.nan)] * T,  # background query
    )
    in_range = np.ones((1, T), bool)
    c = me.motion_classes(gt_tracks, in_range)
    assert c["moving_2d"].tolist() == [[False, True, False, False]]
    assert c["static_2d"].tolist() == [[True, False, False, False]]
    # Motion past the end of the episode does not count.
    late = _tracks([(10, 10), (10, 10), (10, 10), (15, 10)])
    assert me.motion_classes(late, np.array([[True, True, True, False]]))["static_2d"].tolist() == [[True]]
    assert me.motion_classes(late, np.ones((1, T), bool))["moving_2d"].tolist() == [[True]]


def test_motion_classes_3d():
    pts = np.zeros((1, 2, 3, 3))
    pts[0, 1, 2] = [0.0, 0.0, 0.02]  # 2 cm at the last step
    valid = np.ones((1, 2, 3), bool)
    c = me.motion_classes(np.zeros((1, 2, 3, 2)), np.ones((1, 3), bool), pts, valid)
    assert c["moving_3d"].tolist() == [[False, True]] and c["static_3d"].tolist() == [[True, False]]
    valid[0, 1, 2] = False  # the step that moved is not known: the point looks static
    c = me.motion_classes(np.zeros((1, 2, 3, 2)), np.ones((1, 3), bool), pts, valid)
    assert c["static_3d"].tolist() == [[True, True]]


def test_false_motion_counts_claims_at_visible_scored_steps():
    static = np.array([[True, True, True, False]])
    pred = _tracks(
        [(10, 10), (10.5, 10), (10.9, 10)],  # stays within 1 px: no claim
        [(20, 20), (20, 20), (21.5, 20)],  # claims 1.5 px at a visible step
        [(30, 30), (33, 30), (33, 30)],  # claims 3 px, but only where it says "not visible"
        [(40, 40), (45, 40), (45, 40)],  # moves, but the point truly moves: not counted
    )
    vis = np.ones((1, 4, 3), bool)
    vis[0, 2, 1:] = False
    mask = np.ones((1, 4, 3), bool)
    mask[..., 0] = False
    flags = me.false_motion_2d(pred, vis, static, mask)
    assert flags.tolist() == [False, True, False]
    assert me.share(flags) == pytest.approx(1 / 3)
    assert np.isnan(me.share(flags[:0]))  # nothing counted is not "no false motion"
    # A step outside the scored mask claims nothing.
    mask[0, 1, 2] = False
    assert me.false_motion_2d(pred, vis, static, mask).tolist() == [False, False, False]


def test_false_motion_3d_threshold_and_validity():
    pts = np.zeros((1, 3, 3, 3))
    pts[0, 0, 1] = [0.0, 0.0, 0.004]  # 4 mm: below 5 mm
    pts[0, 1, 2] = [0.006, 0.0, 0.0]  # 6 mm
    pts[0, 2, 1] = [0.05, 0.0, 0.0]  # 5 cm, at an invalid step
    valid = np.ones((1, 3, 3), bool)
    valid[0, 2, 1] = False
    flags = me.false_motion_3d(pts, valid, np.ones((1, 3), bool))
    assert flags.tolist() == [False, True, False]
    valid[0, 1, 0] = False  # no anchor point: nothing to measure motion from
    assert me.false_motion_3d(pts, valid, np.ones((1, 3), bool)).tolist() == [False, False]


def test_subsample_clip_keeps_durations():
    frames, anchors, h = me.subsample_clip(50, 4, 8, 32)
    assert frames.tolist() == list(range(0, 50, 4)) and h == 8
    assert anchors.tolist() == [0, 2, 4, 6, 8, 10]  # every 8 original steps, all but the last frame
    frames, anchors, h = me.subsample_clip(50, 8, 8, 32)
    assert len(frames) == 7 and anchors.tolist() == [0, 1, 2, 3, 4, 5] and h == 4
    assert me.subsample_clip(10, 1, 4, 8)[2] == 8
    truth = np.arange(2 * 1 * 9).reshape(2, 1, 9)
    assert me.subsample_truth(truth, 4)[0, 0].tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="gap"):
        me.subsample_clip(10, 0, 4, 8)


# ---------------------------------------------------------------- the static-point test


def test_unchanged_map_window_and_tolerance():
    a = np.full((9, 9, 3), 100, np.uint8)
    b = a.copy()
    b[4, 4, 1] = 103  # one channel of one pixel, 3 levels
    m = unchanged_map(a, b, radius=1, tol=2)
    assert not m[3:6, 3:6].any() and m[0, 0] and m[2, 2] and m[6, 6]
    assert unchanged_map(a, b, radius=1, tol=3).all()
    assert unchanged_map(a, b, radius=0, tol=2).sum() == 80  # only the pixel itself
    xy = np.array([[4.5, 4.5], [0.5, 0.5], [-1.0, 3.0], [np.nan, 1.0]])
    assert sample_nearest(m, xy).tolist() == [False, True, False, False]


def test_static_points_next_to_a_moving_square_stay_exactly_put():
    """A textured square slides right by 1 px a frame over a static textured background;
    LK windows of background points beside it see the square. The static-point test keeps
    every background point exactly at its query; the square's points are still tracked."""
    rng = np.random.default_rng(0)
    bg = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    square = (rng.random((12, 12, 3)) * 255).astype(np.uint8)
    frames = []
    for t in range(8):
        f = bg.copy()
        f[18:30, 10 + t : 22 + t] = square
        frames.append(f)
    frames = np.stack(frames)
    q = np.array([[16.0 + 0.5, 24.5], [30.5, 24.5], [8.5, 24.5], [40.5, 10.5]], np.float32)  # square, 3 background
    tracks, vis = RefinedLKTracker()(frames, q)
    # Background points: exactly at the query, visible throughout; point 1 sits one pixel
    # right of the square's last position (x < 29 at t = 7), inside an 11 px LK window.
    for k in (1, 2, 3):
        assert (tracks[k] == q[k]).all() and vis[k].all()
    # The square's point moves 1 px a frame (to within LK's accuracy).
    np.testing.assert_allclose(tracks[0, :, 0] - q[0, 0], np.arange(8), atol=0.3)
    np.testing.assert_allclose(tracks[0, :, 1], q[0, 1], atol=0.3)
    # Without the test, plain LK drags the background points beside the square (0.5-0.9 px here).
    from labelers.tracking.lk import LKTracker

    plain, _ = LKTracker()(frames, q)
    assert np.abs(plain[1:3] - q[1:3, None]).max() > 0.3


def test_refined_tracker_parameters_are_checked():
    with pytest.raises(ValueError, match="chain"):
        RefinedLKTracker(mode="anchor")
    with pytest.raises(ValueError, match=">= 0"):
        RefinedLKTracker(ref_gap=-1)
    assert isinstance(get_tracker("lk"), RefinedLKTracker)
    assert not isinstance(get_tracker("lk", mode="hybrid"), RefinedLKTracker)


# ---------------------------------------------------------------- against simulator ground truth


@pytest.fixture(scope="module")
def sim_episodes(sim_dataset_dir):
    from curation.sources.rlds import read_episodes

    return list(read_episodes(str(sim_dataset_dir)))


def _score(tracker, episodes, horizon=16):
    """All-points and moving-point TAP-Vid delta_avg and 2D false motion of a tracker."""
    acc = {k: [] for k in ("p", "v", "g", "gv", "m", "mm", "fm")}
    for ep in episodes:
        frames = ep.frames[ep.primary_camera]
        H, W = frames.shape[1:3]
        anchors = anchor_steps(frames.shape[0], 4)
        q = grid_queries(H, W, 20)
        per = [gt.true_motion(ep, int(a), q, horizon) for a in anchors]
        t = {k: np.stack([m[k] for m in per]) for k in per[0]}
        tracks, vis = tracker.track_anchors(frames, anchors, q, horizon)
        mask = t["in_range"][:, None, :] & np.isfinite(t["tracks_px"][:, :, :1, 0])
        mask[..., 0] = False
        classes = me.motion_classes(t["tracks_px"], t["in_range"])
        for k, v in zip(acc, (tracks, vis, t["tracks_px"], t["visible"], mask, mask & classes["moving_2d"][..., None],
                              me.false_motion_2d(tracks, vis, classes["static_2d"], mask))):
            acc[k].append(v)
    c = {k: np.concatenate(v) for k, v in acc.items()}
    allm = metrics.tapvid_metrics(c["p"], c["v"], c["g"], c["gv"], (H, W), eval_mask=c["m"])
    mov = metrics.tapvid_metrics(c["p"], c["v"], c["g"], c["gv"], (H, W), eval_mask=c["mm"])
    return {"all": allm["delta_avg"], "moving": mov["delta_avg"], "n_moving": mov["n_visible"],
            "false_motion": me.share(c["fm"]), "n_static": c["fm"].size}


def test_refined_tracker_beats_plain_chain_on_ground_truth(sim_episodes):
    refined = _score(get_tracker("lk"), sim_episodes)
    plain = _score(get_tracker("lk", static_anchor=False, static_step=False, ref_gap=0), sim_episodes)
    print("refined", refined, "plain chain", plain)
    assert refined["n_static"] > 5_000 and refined["n_moving"] > 3_000
    # Measured (64 px, pick-place + drawer-open, horizon 16): false motion 0.024 vs 0.100,
    # all points 0.959 vs 0.906, moving points 0.632 vs 0.612.
    assert refined["false_motion"] < 0.05 and refined["false_motion"] < plain["false_motion"] / 2
    assert refined["all"] >= 0.93 and refined["all"] > plain["all"] + 0.03
    assert refined["moving"] >= plain["moving"] and refined["moving"] >= 0.58


def test_plain_chain_settings_reproduce_the_plain_tracker(sim_episodes):
    """With both tests and the re-solve off, the refined tracker is exactly LKTracker "chain"."""
    from labelers.tracking.lk import LKTracker

    ep = sim_episodes[0]
    frames = ep.frames[ep.primary_camera]
    q = grid_queries(*frames.shape[1:3], 10)
    a = RefinedLKTracker(static_anchor=False, static_step=False, ref_gap=0).track_anchors(frames, [0, 4], q, 8)
    b = LKTracker().track_anchors(frames, [0, 4], q, 8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_static_window_scales_with_the_image_only_when_asked():
    """static_scale (the default) keeps the static test's window at its 128 px extent: 3 x 3 at 128 px (the
    default's window, unchanged), 5 x 5 at 256 px; a change 2 px from a query pins nothing at
    256 px with the scaled window and is outside the plain 3 x 3 one."""
    from labelers.tracking.lk_refined import static_window_radius

    assert [static_window_radius(1, w, True) for w in (64, 128, 192, 256, 512)] == [1, 1, 2, 2, 4]
    assert [static_window_radius(1, w, False) for w in (64, 128, 256)] == [1, 1, 1]
    assert static_window_radius(0, 256, True) == 0
    # the default tracker scales: 3 x 3 at 128 px (as chosen there), 5 x 5 at 256 px
    default = RefinedLKTracker()
    assert default.static_scale and default.static_radius == 1
    assert [static_window_radius(default.static_radius, w, default.static_scale) for w in (128, 256)] == [1, 2]
    frames = np.zeros((2, 256, 256, 3), np.uint8)
    frames[1, 100, 102] = 255  # one pixel changes, 2 px right of the query's pixel (100, 100)
    q = np.array([[100.5, 100.5]], np.float32)
    p0 = q[None]  # A M 2
    for scale, pinned in ((False, True), (True, False)):
        at_query, still = RefinedLKTracker(static_scale=scale)._static(list(frames), np.array([0]), 0, q, p0)
        assert at_query[0, 0] == pinned and still[0, 0] == pinned, scale
    small = np.zeros((2, 128, 128, 3), np.uint8)
    small[1, 50, 52] = 255  # at 128 px both windows are 3 x 3: 2 px away is outside either
    q = np.array([[50.5, 50.5]], np.float32)
    for scale in (False, True):
        at_query, _ = RefinedLKTracker(static_scale=scale)._static(list(small), np.array([0]), 0, q, q[None])
        assert at_query[0, 0]
