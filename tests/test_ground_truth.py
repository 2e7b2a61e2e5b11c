"""Ground-truth motion checked against independent evidence: the rendered segmentation
and depth of later frames, camera geometry, and the robot's proprio."""

from __future__ import annotations

import numpy as np
import pytest

from curation.sources.metaworld.rollout import RolloutWorkers, _Request
from labelers.eval.ground_truth import (
    grid_queries,
    project,
    true_labels,
    true_motion,
    true_optical_flow,
    true_scene_flow,
    true_tracks,
    unproject,
)
from schemas.episode import EpisodeError

SIZE, STEPS, HORIZON = 64, 24, 16


@pytest.fixture(scope="module")
def episodes():
    """drawer-open (the drawer slides) and pick-place (the arm carries the gripper)."""
    with RolloutWorkers(1) as w:
        eps = list(w.run([_Request("drawer-open-v3", 5, SIZE, STEPS, "third_person", 0),
                          _Request("pick-place-v3", 6, SIZE, STEPS, "third_person", 1)]))
    return eps


def _body_at(seg_frame, xy):
    r = np.clip(np.floor(xy[:, 1]).astype(int), 0, seg_frame.shape[0] - 1)
    c = np.clip(np.floor(xy[:, 0]).astype(int), 0, seg_frame.shape[1] - 1)
    return seg_frame[r, c]


def _static_bodies(ep):
    gt = ep.ground_truth
    same = np.all(gt.body_pos == gt.body_pos[:1], axis=(0, 2)) & np.all(gt.body_quat == gt.body_quat[:1], axis=(0, 2))
    return np.nonzero(same)[0]


def test_shapes_and_padding(episodes):
    ep = episodes[0]
    q = grid_queries(SIZE, SIZE, 20)
    assert q.shape == (400, 2)
    tracks, visible, in_range = true_tracks(ep, STEPS - 5, q, HORIZON)
    assert tracks.shape == (400, HORIZON, 2) and tracks.dtype == np.float32
    assert visible.shape == (400, HORIZON) and visible.dtype == bool
    assert in_range.tolist() == [True] * 5 + [False] * (HORIZON - 5)
    assert np.all(np.isnan(tracks[:, 5:])) and not visible[:, 5:].any()
    pts, valid = true_scene_flow(ep, STEPS - 5, q, HORIZON)
    assert pts.shape == (400, HORIZON, 3) and not valid[:, 5:].any() and np.all(np.isnan(pts[:, 5:]))


def test_query_frame_is_the_query(episodes):
    ep = episodes[0]
    q = grid_queries(SIZE, SIZE, 20) + np.float32(0.3)  # sub-pixel queries
    m = true_motion(ep, 3, q, HORIZON)
    fg = m["foreground"]
    assert fg.mean() > 0.5
    np.testing.assert_array_equal(m["tracks_px"][fg, 0], q[fg])
    assert m["visible"][fg, 0].all()
    # background queries (no depth, segmentation -1): NaN and never visible
    bg = _body_at(ep.ground_truth.segmentation[3], q) < 0
    assert bg.any()
    assert np.all(np.isnan(m["tracks_px"][bg])) and not m["visible"][bg].any() and not fg[bg].any()


def test_static_points_have_exactly_zero_flow(episodes):
    for ep in episodes:
        q = grid_queries(SIZE, SIZE, 20)
        body = _body_at(ep.ground_truth.segmentation[0], q)
        static = np.isin(body, _static_bodies(ep)) & (body >= 0)
        assert static.sum() > 100  # table, walls, robot base
        tracks, _, in_range = true_tracks(ep, 0, q, HORIZON)
        assert np.all(tracks[static][:, in_range] == q[static][:, None, :])
        pts, valid = true_scene_flow(ep, 0, q, HORIZON)
        assert np.all(pts[static] == pts[static][:, :1])
        flow, fvalid = true_optical_flow(ep, 0, 3)
        seg0 = ep.ground_truth.segmentation[0]
        static_px = np.isin(seg0, _static_bodies(ep))
        assert np.all(flow[static_px] == 0.0)


def test_moving_points_land_on_their_body(episodes):
    """Independent evidence: where the ground truth says a visible point went, the
    segmentation rendered at that later frame shows the same body (> 95%)."""
    total = agree = moving_total = moving_agree = 0
    for ep in episodes:
        seg = ep.ground_truth.segmentation
        for anchor in (0, 6):
            yy, xx = np.mgrid[0:SIZE:2, 0:SIZE:2]
            q = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
            m = true_motion(ep, anchor, q, HORIZON)
            body0 = _body_at(seg[anchor], q)
            moving = m["foreground"] & ~np.isin(body0, _static_bodies(ep))
            for j in range(1, HORIZON):
                if not m["in_range"][j]:
                    continue
                vis = m["visible"][:, j]
                later = _body_at(seg[anchor + j], m["tracks_px"][:, j])
                ok = later == body0
                total += vis.sum()
                agree += (ok & vis).sum()
                moving_total += (vis & moving).sum()
                moving_agree += (ok & vis & moving).sum()
    assert moving_total > 500  # the test sees real motion
    assert agree / total > 0.95
    assert moving_agree / moving_total > 0.95


def test_hidden_points_are_occluded_or_on_a_silhouette(episodes):
    """Points inside the image but marked not visible either have a nearer rendered surface
    at their pixel (occluded), or sit on their body's silhouette (the body is rendered in
    the 3 x 3 pixels around them, but not in the pixel itself): never a bookkeeping error."""
    n = occluded = edge = 0
    for ep in episodes:
        depth = ep.depth_m["image"]
        seg = ep.ground_truth.segmentation
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        q = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
        body0 = seg[0].ravel()
        m = true_motion(ep, 0, q, HORIZON)
        for j in range(1, HORIZON):
            uv = m["tracks_px"][:, j]
            inside = m["foreground"] & np.all((uv >= 0) & (uv < SIZE), axis=1)
            hidden = np.nonzero(inside & ~m["visible"][:, j])[0]
            for k in hidden:
                r, c = int(uv[k, 1]), int(uv[k, 0])
                n += 1
                if depth[j, r, c] < m["depth_m"][k, j]:
                    occluded += 1
                elif (seg[j, max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] == body0[k]).any():
                    edge += 1
    assert n > 50
    assert occluded > 0
    assert (occluded + edge) / n > 0.97


def test_tracks_are_projections_of_scene_flow(episodes):
    ep = episodes[1]
    q = grid_queries(SIZE, SIZE, 20)
    tracks, _, in_range = true_tracks(ep, 2, q, HORIZON)
    pts, valid = true_scene_flow(ep, 2, q, HORIZON)
    uv = project(pts, ep.intrinsics["image"])
    np.testing.assert_allclose(tracks[valid], uv[valid], atol=2e-3)
    m = true_motion(ep, 2, q, HORIZON)
    np.testing.assert_array_equal(m["depth_m"][valid], pts[valid][:, 2])


def test_gripper_moves_with_proprio(episodes):
    """Points on the hand follow the end-effector position in the proprio (the hand keeps
    its orientation in Meta-World): 3D displacement within 1 cm, 2D within 1 px of the
    projected eef displacement."""
    ep = episodes[1]
    names = ep._sim["body_names"]
    hand_ids = [names.index("right_hand")]
    c2w = ep.extrinsics["image"]
    intr = ep.intrinsics["image"]
    eef_cam = (ep.proprio[:, :3].astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3]
    checked = 0
    for anchor in (0, 8):
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        q = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
        on_hand = np.isin(_body_at(ep.ground_truth.segmentation[anchor], q), hand_ids)
        assert on_hand.sum() >= 3
        pts, valid = true_scene_flow(ep, anchor, q[on_hand], HORIZON)
        n = min(HORIZON, STEPS - anchor)
        eef_disp = eef_cam[anchor : anchor + n] - eef_cam[anchor]
        assert np.linalg.norm(eef_disp[-1]) > 0.01  # the gripper really moves
        disp = pts[:, :n] - pts[:, :1]
        np.testing.assert_allclose(disp, np.broadcast_to(eef_disp, disp.shape), atol=0.01)
        tracks, _, _ = true_tracks(ep, anchor, q[on_hand], HORIZON)
        eef_uv = project(eef_cam[anchor : anchor + n], intr)
        track_disp = (tracks[:, :n] - tracks[:, :1]).mean(0)
        np.testing.assert_allclose(track_disp, eef_uv - eef_uv[0], atol=1.0)
        checked += 1
    assert checked == 2


def test_depth_round_trip_through_world(episodes):
    """Unproject rendered depth to the world with the extrinsics and project back."""
    ep = episodes[0]
    intr, c2w = ep.intrinsics["image"], ep.extrinsics["image"]
    d = ep.depth_m["image"][4]
    ii, jj = np.nonzero(np.isfinite(d))
    px = np.stack([jj + 0.5, ii + 0.5], 1)
    world = unproject(px, d[ii, jj], intr) @ c2w[:3, :3].T + c2w[:3, 3]
    cam = (world - c2w[:3, 3]) @ c2w[:3, :3]
    np.testing.assert_allclose(project(cam, intr), px, atol=1e-4)
    np.testing.assert_allclose(cam[:, 2], d[ii, jj], rtol=1e-6)
    # the table top (body 'tablelink') lies on a horizontal plane in the world
    names = ep._sim["body_names"]
    table = ep.ground_truth.segmentation[4][ii, jj] == names.index("tablelink")
    z = world[table, 2]
    assert table.sum() > 100 and np.percentile(z, 90) - np.percentile(z, 10) < 0.02


def test_dense_flow_agrees_with_tracks(episodes):
    ep = episodes[0]
    flow, valid = true_optical_flow(ep, 4, 2)
    assert flow.shape == (SIZE, SIZE, 2) and valid.shape == (SIZE, SIZE)
    seg = ep.ground_truth.segmentation[4]
    assert not valid[seg < 0].any() and np.all(np.isnan(flow[seg < 0]))
    assert valid.mean() > 0.5
    moving = valid & (np.abs(flow).max(-1) > 0.2)
    assert moving.sum() > 10  # the drawer/arm moves
    r, c = np.nonzero(moving)
    q = np.stack([c + 0.5, r + 0.5], 1)
    tracks, vis, _ = true_tracks(ep, 4, q, 3)
    np.testing.assert_allclose(flow[r, c], tracks[:, 2] - q, atol=1e-4)
    assert vis[:, 2].all()
    # past the end: nothing valid
    f_end, v_end = true_optical_flow(ep, STEPS - 1, 1)
    assert not v_end.any() and np.all(np.isnan(f_end))


def test_true_labels_layout(episodes):
    ep = episodes[0]
    labels = true_labels(ep, [0, 8, 16], grid=10, horizon=HORIZON)
    assert labels.tracks_px.shape == (3, 100, HORIZON, 2)
    assert labels.points_cam_m.shape == (3, 100, HORIZON, 3)
    assert labels.in_range[2].sum() == STEPS - 16
    assert labels.valid_3d.sum() <= labels.visible.sum()
    assert labels.depth_kind == "metric" and labels.backends["tracks"] == "ground_truth"


def test_bad_input_names_the_episode(episodes):
    import copy

    ep = copy.copy(episodes[0])
    with pytest.raises(EpisodeError, match="anchor 99"):
        true_tracks(ep, 99, grid_queries(SIZE, SIZE), 4)
    ep.ground_truth = None
    with pytest.raises(EpisodeError, match="no simulator ground truth") as e:
        true_tracks(ep, 0, grid_queries(SIZE, SIZE), 4)
    assert "metaworld_sim" in str(e.value)


def test_ground_truth_on_an_episode_read_from_disk(sim_dataset_dir):
    """The labelers' path: an episode read back through the RLDS reader (float32 poses,
    depth 0 -> NaN) gives the same evidence: exact zero flow on static bodies and
    moving points landing on their body."""
    from curation.sources.rlds import read_episodes

    ep = next(iter(read_episodes(str(sim_dataset_dir), "train", 2, 3)))  # drawer-open, episode 0
    assert ep.ground_truth is not None and ep.ground_truth.body_names
    seg = ep.ground_truth.segmentation
    yy, xx = np.mgrid[0:64:2, 0:64:2]
    q = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    m = true_motion(ep, 0, q, HORIZON)
    body0 = _body_at(seg[0], q)
    static = m["foreground"] & np.isin(body0, _static_bodies(ep))
    assert static.sum() > 100
    assert np.all(m["tracks_px"][static] == q[static][:, None, :])
    moving = m["foreground"] & ~static
    vis = m["visible"][:, 1:] & moving[:, None]
    later = np.stack([_body_at(seg[j], m["tracks_px"][:, j]) for j in range(1, HORIZON)], 1)
    assert vis.sum() > 200
    assert (later == body0[:, None])[vis].mean() > 0.95
