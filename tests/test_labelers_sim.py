"""The label stage scored against simulator ground truth (labelers/ground_truth.py is the
oracle), on the shared small simulated dataset (`sim_dataset_dir`: pick-place and
drawer-open, 24 steps, 64 px), plus the bad-input cases of the issue on real episodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from labelers.eval import ground_truth as gt
from labelers.eval import metrics
from labelers.episode_labeler import EpisodeLabeler, LabelConfig
from labelers.flow import decode_motion_image, get_flow_backend
from schemas.episode import EpisodeError
from schemas.triplet import LATENT_PAD_TOKEN, anchor_steps


@pytest.fixture(scope="module")
def sim_episodes(sim_dataset_dir):
    from curation.sources.rlds import read_episodes

    eps = list(read_episodes(str(sim_dataset_dir)))
    assert len(eps) == 4 and all(e.ground_truth is not None for e in eps)
    return eps


@pytest.fixture(scope="module")
def labeled(sim_episodes):
    labeler = EpisodeLabeler(LabelConfig())
    return [(ep, labeler(ep)) for ep in sim_episodes]


def _truth(ep, labels):
    """Ground truth on the labeler's own query points (its tracks at j = 0)."""
    q = labels.tracks_px[0, :, 0]
    per = [gt.true_motion(ep, int(a), q, labels.tracks_px.shape[2]) for a in labels.anchors]
    return {k: np.stack([m[k] for m in per]) for k in per[0]}


def test_labels_fill_the_contract(labeled):
    for ep, lab in labeled:
        T, H, W = ep.frames["image"].shape[:3]
        N = len(anchor_steps(T, 4))
        assert lab.anchors.tolist() == anchor_steps(T, 4).tolist()
        assert lab.tracks_px.shape == (N, 400, 32, 2) and lab.tracks_px.dtype == np.float32
        assert lab.visible.shape == (N, 400, 32) and lab.in_range.shape == (N, 32)
        assert lab.points_cam_m.shape == (N, 400, 32, 3) and lab.depth_m.shape == (N, 400, 32)
        assert lab.motion_image.shape == (N, H, W, 3) and lab.motion_image.dtype == np.uint8
        assert lab.depth_kind == "metric" and not lab.intrinsics_estimated
        np.testing.assert_allclose(lab.intrinsics, ep.intrinsics["image"].as_array())
        assert lab.backends == {"depth": "dataset", "tracks": "lk", "flow": "dis"}
        # in range <=> step exists; out of range: NaN tracks, nothing visible or valid
        steps = lab.anchors[:, None] + np.arange(32)
        assert (lab.in_range == (steps < T)).all()
        out = ~lab.in_range[:, None, :].repeat(400, 1)
        assert np.isnan(lab.tracks_px[out]).all() and not lab.visible[out].any() and not lab.valid_3d[out].any()
        # valid_3d is exactly: visible with finite 3D; everything else NaN (masked, not dropped)
        assert not (lab.valid_3d & ~lab.visible).any()
        assert np.isfinite(lab.points_cam_m[lab.valid_3d]).all() and np.isnan(lab.points_cam_m[~lab.valid_3d]).all()
        assert (lab.points_cam_m[lab.valid_3d][:, 2] > 0).all()
        assert lab.flow_valid.tolist() == (lab.anchors + 1 < T).tolist()
        np.testing.assert_array_equal(lab.uvd()[..., 2], lab.depth_m)


def test_tracks_match_ground_truth(labeled):
    preds, pvis, truth, tvis, mask, moving = [], [], [], [], [], []
    for ep, lab in labeled:
        t = _truth(ep, lab)
        m = lab.in_range[:, None, :] & np.isfinite(t["tracks_px"][:, :, :1, 0])
        m[..., 0] = False
        with np.errstate(invalid="ignore"):
            mov = np.nanmax(np.linalg.norm(t["tracks_px"] - t["tracks_px"][:, :, :1], axis=-1), -1) >= 1.0
        preds.append(lab.tracks_px)
        pvis.append(lab.visible)
        truth.append(t["tracks_px"])
        tvis.append(t["visible"])
        mask.append(m)
        moving.append(m & mov[..., None])
    c = np.concatenate
    allm = metrics.tapvid_metrics(c(preds), c(pvis), c(truth), c(tvis), (64, 64), eval_mask=c(mask))
    movm = metrics.tapvid_metrics(c(preds), c(pvis), c(truth), c(tvis), (64, 64), eval_mask=c(moving))
    print("tracks all", allm, "moving", movm)
    assert allm["n_visible"] > 10_000 and movm["n_visible"] > 200
    assert allm["delta_avg"] >= 0.80  # the target (CPU default)
    assert allm["oa"] >= 0.85 and allm["aj"] >= 0.65
    assert movm["delta_avg"] >= 0.45  # measured 0.57: moving points are the hard part (textureless arm at 64 px)


def test_static_points_stay_put(labeled):
    # Points on bodies that do not move have exactly zero true displacement; LK must keep them.
    errs = []
    for ep, lab in labeled:
        t = _truth(ep, lab)
        with np.errstate(invalid="ignore"):
            static = np.nanmax(np.linalg.norm(t["tracks_px"] - t["tracks_px"][:, :, :1], axis=-1), -1) == 0.0
        sel = static[..., None] & t["visible"] & lab.visible
        errs.append(np.linalg.norm(lab.tracks_px - t["tracks_px"], axis=-1)[sel])
    e = np.concatenate(errs)
    assert e.size > 5_000
    # Measured (64 px): median 0.003 px, 90% within 0.5 px (the rest sit next to the moving arm,
    # whose pixels enter LK's window).
    assert np.median(e) < 0.05 and np.mean(e < 0.5) > 0.85


def test_scene_flow_matches_ground_truth(labeled):
    errs, covered, total = [], 0, 0
    for ep, lab in labeled:
        t = _truth(ep, lab)
        both = lab.valid_3d & t["valid_3d"]
        errs.append(metrics.scene_flow_errors_m(lab.points_cam_m, t["points_cam_m"], both))
        covered += both[..., 1:].sum()
        total += t["valid_3d"][..., 1:].sum()
    e = np.concatenate(errs)
    print("3D median mm", np.median(e) * 1000, "under 1 cm", (e < 0.01).mean(), "coverage", covered / total)
    assert np.median(e) * 1000 < 10.0  # the target with dataset depth
    assert (e < 0.01).mean() > 0.8
    assert covered / total > 0.8


def test_depth_jump_limit_follows_the_frame_rate_and_cuts_depth_errors(sim_episodes, labeled):
    """At the simulator's 80 Hz the per-step depth-jump limit is 1.6 / 80 = 2 % (the fixed 0.2
    stays the limit at Open-X rates); against ground truth it removes depth-channel error
    (d - d at the anchor, the uvd motion's third channel) while masking little that was right."""
    from labelers.sceneflow import depth_jump_threshold

    assert depth_jump_threshold(0.2, 1.6, 80.0) == pytest.approx(0.02)
    assert depth_jump_threshold(0.2, 1.6, 5.0) == 0.2 and depth_jump_threshold(0.2, 1.6, float("nan")) == 0.2
    assert depth_jump_threshold(0.0, 1.6, 80.0) == pytest.approx(0.02) and depth_jump_threshold(0.0, 0.0, 80.0) == 0.0
    assert all(ep.control_hz == 80.0 for ep in sim_episodes)
    fixed = EpisodeLabeler(LabelConfig(max_depth_speed_rel=0.0))
    err_new, err_old, wrongly_masked, masked = [], [], 0, 0
    for ep, lab in labeled:
        old = fixed(ep)
        t = _truth(ep, lab)
        true_d = t["depth_m"] - t["depth_m"][..., :1]
        for labels, out in ((lab, err_new), (old, err_old)):
            ok = labels.valid_3d & labels.valid_3d[..., :1] & t["valid_3d"] & t["valid_3d"][..., :1]
            out.append(np.abs((labels.depth_m - labels.depth_m[..., :1]) - true_d)[ok])
        ok_old = old.valid_3d & old.valid_3d[..., :1] & t["valid_3d"] & t["valid_3d"][..., :1]
        newly = ok_old & ~lab.valid_3d
        good = np.abs((old.depth_m - old.depth_m[..., :1]) - true_d) < 0.005
        masked += newly.sum()
        wrongly_masked += (newly & good).sum()
        assert not (lab.valid_3d & ~old.valid_3d).any()  # the tighter limit only masks
    new, before = np.concatenate(err_new), np.concatenate(err_old)
    print("depth channel rms mm", np.sqrt((before ** 2).mean()) * 1000, "->", np.sqrt((new ** 2).mean()) * 1000,
          "masked", masked, "of which right", wrongly_masked, "kept", new.size, "of", before.size)
    assert masked > 0 and np.sqrt((new ** 2).mean()) < 0.8 * np.sqrt((before ** 2).mean())
    assert new.size > 0.97 * before.size


def test_motion_images_decode_to_true_flow(labeled):
    errs = []
    for ep, lab in labeled:
        for n, a in enumerate(lab.anchors):
            if not lab.flow_valid[n]:
                continue
            flow, valid = gt.true_optical_flow(ep, int(a), 1)
            dec = decode_motion_image(lab.motion_image[n])
            errs.append(np.linalg.norm(dec - flow, axis=-1)[valid])
    e = np.concatenate(errs)
    print("motion image EPE", e.mean(), "outliers", (e > 3).mean())
    assert e.mean() < 1.0 and (e > 3).mean() < 0.02


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_flow_backends_vs_true_flow(sim_episodes, backend):
    ep = sim_episodes[0]
    fr = ep.frames["image"]
    be = get_flow_backend(backend)
    errs = []
    for t in (4, 12):
        flow, valid = gt.true_optical_flow(ep, t, 1)
        errs.append(np.linalg.norm(be(fr[t], fr[t + 1]) - flow, axis=-1)[valid])
    e = np.concatenate(errs)
    assert e.mean() < 1.0


def _moving_flow_epe(ep, backend, steps) -> float:
    """Mean EPE of `backend` on the moving pixels (true flow >= 0.5 px, not occluded) t -> t + 1."""
    from labelers.flow import to_gray

    grays = [to_gray(f) for f in ep.frames[ep.primary_camera]]
    errs = []
    for t in steps:
        flow, valid = gt.true_optical_flow(ep, t, 1)
        with np.errstate(invalid="ignore"):
            moving = valid & (np.linalg.norm(flow, axis=-1) >= 0.5)
        errs.append(np.linalg.norm(backend.flow_gray(grays[t], grays[t + 1]) - flow, axis=-1)[moving])
    e = np.concatenate(errs)
    assert e.size > 5000  # enough moving pixels to compare
    return float(e.mean())


def test_default_dis_beats_medium_on_moving_pixels_at_128px():
    """The default DIS preset ("fine", chosen on pick-place, drawer-open and button-press) against
    OpenCV's medium preset, the previous default, on a 128 px episode of a task it was not chosen on."""
    from curation.sources.metaworld.rollout import rollout_episode
    from labelers.flow import DISFlow

    ep = rollout_episode("door-open-v3", seed=1, size=128, max_steps=24)
    steps = range(0, 23, 2)
    fine, medium = _moving_flow_epe(ep, DISFlow(), steps), _moving_flow_epe(ep, DISFlow("medium"), steps)
    print("moving-pixel EPE, fine", fine, "medium", medium)
    assert fine < 0.4 and fine < 0.85 * medium


def test_lifting_true_tracks_reproduces_true_3d(sim_episodes):
    # Depth sampling alone: true tracks lifted with dataset depth move like the true 3D points.
    # (Absolute positions differ by up to half a pixel footprint, ~1 cm at 64 px, because the
    # oracle takes the depth of the pixel containing the query, we interpolate at the query.)
    from labelers.sceneflow import lift_tracks

    ep = sim_episodes[1]
    q = gt.grid_queries(64, 64, 20)
    m = gt.true_motion(ep, 0, q, 16)
    sf = lift_tracks(m["tracks_px"], m["visible"], ep.depth_m["image"][:16], ep.intrinsics["image"])
    both = sf.valid_3d & m["valid_3d"]
    assert both.sum() > 3000
    np.testing.assert_array_equal(sf.valid_3d, m["visible"] & np.isfinite(sf.depth_m))
    disp = metrics.scene_flow_errors_m(sf.points_cam_m, m["points_cam_m"], both)
    assert np.median(disp) < 0.001 and np.mean(disp < 0.01) > 0.95
    absolute = np.linalg.norm(sf.points_cam_m - m["points_cam_m"], axis=-1)[both]
    assert np.median(absolute) < 0.01


# ---------------------------------------------------------------- bad input on real episodes


def _with(ep, **changes):
    return dataclasses.replace(ep, **changes)


def _sliced(ep, n):
    return _with(
        ep,
        frames={k: v[:n] for k, v in ep.frames.items()},
        actions=ep.actions[:n],
        proprio=None if ep.proprio is None else ep.proprio[:n],
        depth_m={k: v[:n] for k, v in ep.depth_m.items()},
        ground_truth=None,
    )


def test_single_frame_episode(sim_episodes):
    lab = EpisodeLabeler(LabelConfig())(_sliced(sim_episodes[0], 1))
    assert lab.anchors.tolist() == [0]
    assert lab.in_range[0].tolist() == [True] + [False] * 31
    assert lab.visible[0, :, 0].all() and not lab.visible[0, :, 1:].any()
    assert np.isnan(lab.tracks_px[0, :, 1:]).all()
    assert lab.flow_valid.tolist() == [False]
    assert lab.valid_3d[0, :, 0].mean() > 0.8  # the anchor frame itself still lifts


def test_all_black_frames(sim_episodes):
    ep = _sliced(sim_episodes[0], 9)
    ep = _with(ep, frames={"image": np.zeros_like(ep.frames["image"])})
    lab = EpisodeLabeler(LabelConfig())(ep)
    assert not lab.visible.any()  # nothing can be seen on black frames, not even the query
    assert not lab.flow_valid.any() and not lab.valid_3d.any()
    # Partly black: only the black steps lose their labels.
    ep2 = _sliced(sim_episodes[0], 9)
    fr = ep2.frames["image"].copy()
    fr[5:] = 0
    lab2 = EpisodeLabeler(LabelConfig())(_with(ep2, frames={"image": fr}))
    assert lab2.visible[0, :, 1:5].mean() > 0.8 and not lab2.visible[0, :, 5:].any()
    assert lab2.flow_valid.tolist() == [True, False, False]


def test_nan_and_negative_depth_are_masked(sim_episodes):
    ep = _sliced(sim_episodes[0], 9)
    d = ep.depth_m["image"].copy()
    d[:, :32, :] = np.nan  # top half unknown
    d[:, 32:, :16] = -1.0  # a negative stripe
    lab = EpisodeLabeler(LabelConfig())(_with(ep, depth_m={"image": d}))
    tr = lab.tracks_px
    with np.errstate(invalid="ignore"):
        top = tr[..., 1] < 31.0
        left = (tr[..., 1] > 33.0) & (tr[..., 0] < 15.0)
    assert not lab.valid_3d[top].any() and not lab.valid_3d[left].any()
    assert np.isnan(lab.points_cam_m[top]).all() and np.isnan(lab.depth_m[left]).all()
    ok = lab.valid_3d
    assert ok.sum() > 1000 and (lab.depth_m[ok] > 0).all()  # never a zero or negative depth


def test_no_depth_and_no_intrinsics(sim_episodes):
    ep = _with(_sliced(sim_episodes[0], 9), depth_m={}, intrinsics={})
    lab = EpisodeLabeler(LabelConfig(fov_deg=60.0))(ep)
    assert lab.depth_kind == "missing"
    assert lab.depth_m is None and lab.points_cam_m is None and lab.valid_3d is None
    assert lab.intrinsics_estimated
    np.testing.assert_allclose(lab.intrinsics, [32 / np.tan(np.deg2rad(30)), 32 / np.tan(np.deg2rad(30)), 32, 32], rtol=1e-5)
    assert np.isnan(lab.uvd()[..., 2]).all()  # the (u, v, depth) form says unknown, not zero
    assert lab.visible.any() and lab.flow_valid.any()  # 2D labels still made


def test_mismatched_depth_names_episode(sim_episodes):
    ep = _sliced(sim_episodes[0], 5)
    bad = _with(ep, depth_m={"image": np.ones((5, 32, 32), np.float32)})
    with pytest.raises(EpisodeError, match=r"metaworld_sim.*episode=\d+.*depth"):
        EpisodeLabeler(LabelConfig())(bad)
    with pytest.raises(EpisodeError, match="camera 'wrist' not in episode"):
        EpisodeLabeler(LabelConfig(camera="wrist"))(ep)


def test_label_config_round_trip_and_errors():
    c = LabelConfig(tracker="lk", tracker_params={"mode": "hybrid"}, horizon=16, latent_checkpoint="/x.safetensors")
    assert LabelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown label config"):
        LabelConfig.from_dict({"horizn": 3})
    with pytest.raises(ValueError, match="stride"):
        LabelConfig(stride=0)
    with pytest.raises(ValueError, match="unknown depth backend"):
        EpisodeLabeler(LabelConfig(depth="lidar"))


class _FakeLatent:
    """Stands in for labelers.latent.labeler.LatentActionLabeler's call signature
    (frames T H W 3, anchors N, gap=None: the trained gap) -> (tokens N L int16, valid N bool)."""

    trained_gap = 2

    def __call__(self, frames, anchors, gap=None):
        gap = self.trained_gap if gap is None else gap
        anchors = np.asarray(anchors)
        tokens = np.tile(np.arange(4, dtype=np.int16), (len(anchors), 1)) + anchors[:, None].astype(np.int16)
        return tokens, anchors + gap < frames.shape[0]


def test_latent_tokens_only_when_configured(sim_episodes):
    ep = _sliced(sim_episodes[0], 10)
    plain = EpisodeLabeler(LabelConfig())(ep)
    assert plain.latent_tokens is None and plain.latent_valid is None and "latent" not in plain.backends
    lab = EpisodeLabeler(LabelConfig(), latent=_FakeLatent())(ep)
    assert lab.latent_valid.tolist() == [True, True, False]  # anchors 0, 4, 8 with the trained gap 2 over 10 steps
    assert lab.latent_tokens[0].tolist() == [0, 1, 2, 3] and (lab.latent_tokens[2] == LATENT_PAD_TOKEN).all()
    assert lab.backends["latent"] == "lam"
    lab3 = EpisodeLabeler(LabelConfig(latent_gap=6), latent=_FakeLatent())(ep)
    assert lab3.latent_valid.tolist() == [True, False, False]


def test_depth_anything_in_the_labeler(sim_episodes, tmp_path):
    """The Depth Anything backend fitted to the episode's dataset depth: kind 'fitted' and
    3D labels produced (a random tiny model: only the plumbing is checked, not accuracy)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
                            out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        head_hidden_size=8))
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(30.0)
    model.save_pretrained(tmp_path)
    DPTImageProcessor().save_pretrained(tmp_path)
    cfg = LabelConfig(depth="depth-anything", depth_params={"model": str(tmp_path), "input_size": 28})
    lab = EpisodeLabeler(cfg)(_sliced(sim_episodes[0], 5))
    assert lab.depth_kind == "fitted" and lab.backends["depth"] == "depth-anything"
    assert lab.valid_3d is not None and lab.valid_3d[0, :, 0].any()


# ---------------------------------------------------------------- the bench commands


def test_bench_labels_on_the_simulated_dataset(sim_dataset_dir, tmp_path, capsys):
    import json

    from cli.main import main

    out = tmp_path / "labels.json"
    rc = main(["bench", "labels", "--source", str(sim_dataset_dir), "--stride", "12", "--horizon", "8",
               "--out-json", str(out), "--json"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out)["bench"] == "labels"
    assert res["tasks"] == ["pick-place-v3", "drawer-open-v3"] and res["episodes"] == 4
    rows = {(r["backend"], r["task"]): r for r in res["flow"]}
    assert rows[("dis (fine)", "all")]["epe_px"] < 1.0 and rows[("dis (medium)", "all")]["epe_px"] < 1.0
    # The motion-image round trip (of the default flow) costs almost nothing on top of the flow itself.
    assert rows[("dis (fine) via motion image", "all")]["epe_px"] < rows[("dis (fine)", "all")]["epe_px"] + 0.02
    tracks = {(r["backend"], r["task"]): r for r in res["tracks"]}
    assert tracks[("lk (default: refined)", "all")]["delta_avg"] >= 0.8
    # Moving points first: moving and all-points figures side by side, false motion, every gap.
    head = {(r["backend"], r["task"]): r for r in res["moving_points"]}
    default, plain = head[("lk (default: refined)", "all")], head[("lk (chain)", "all")]
    assert default["moving_delta_avg"] < default["all_delta_avg"]  # the hard part, not flattered by static pixels
    assert default["false_motion"] < plain["false_motion"] and default["n_static"] > 1000
    assert 0.0 <= default["false_motion_3d"] < plain["false_motion_3d"]
    assert ("lk (default: refined) [gap 4]", "all") in head and np.isfinite(head[("lk (default: refined) [gap 4]", "all")]["moving_delta_avg"])
    gaps = {r["backend"] for r in res["flow_moving_pixels"]}
    assert {"dis (fine) [moving]", "dis (fine) [gap 4] [moving]", "dis (fine) [gap 8] [moving]", "dis (medium) [gap 8] [moving]"} <= gaps
    assert res["choice_tasks"] == ["pick-place-v3", "drawer-open-v3"]  # no held-out task here: goals on all tasks
    assert all(np.isfinite(v["value"]) for v in res["moving_targets"].values()), res["moving_targets"]
    sf = {(r["backend"], r["task"]): r for r in res["sceneflow"]}
    assert sf[("true tracks + dataset depth", "all")]["median_epe3d_mm"] < 1.0
    depth = {r["backend"]: r for r in res["depth"] if r["task"] == "all"}
    assert depth["dataset (metric)"]["abs_rel"] == 0.0  # the dataset depth is the simulator's
    assert all(t["met"] for t in res["targets"].values()), res["targets"]


def test_bench_labels_only_flow(sim_dataset_dir, tmp_path):
    """--only flow scores the flow rows alone (held-out grouping, goals) and refuses --card-table."""
    import json

    from cli.main import main

    out = tmp_path / "flow.json"
    assert main(["bench", "labels", "--source", str(sim_dataset_dir), "--only", "flow", "--gap", "1", "4",
                 "--out-json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tracks"] == [] and res["sceneflow"] == [] and res["depth"] == [] and res["moving_points"] == []
    moving = {(r["backend"], r["task"]): r["epe_px"] for r in res["flow_moving_pixels"]}
    assert {("dis (fine) [moving]", "all"), ("dis (medium) [gap 4] [moving]", "all")} <= set(moving)
    assert all(np.isfinite(v) and v > 0 for v in moving.values())
    goal = next(v for k, v in res["moving_targets"].items() if k.startswith("flow EPE moving px"))
    assert goal["value"] == moving[("dis (fine) [moving]", "all")]
    assert res["labelled_with"]["flow"]["dis (fine)"]["flow"] == {"backend": "dis", "params": {"preset": "fine"}, "gap": 1}
    with pytest.raises(SystemExit, match="--card-table needs every kind of label"):
        main(["bench", "labels", "--source", str(sim_dataset_dir), "--only", "flow", "--card-table"])


def test_bench_labelers_speed_rows(sim_dataset_dir, tmp_path):
    import json

    from cli.main import main

    out = tmp_path / "labelers.json"
    assert main(["bench", "labelers", "--source", str(sim_dataset_dir), "--repeats", "1", "--out-json", str(out)]) == 0
    res = json.loads(out.read_text())
    labelers = {(r["labeler"], r["backend"]) for r in res["rows"]}
    assert ("episode", "EpisodeLabeler (default config)") in labelers and {("flow", "dis medium"), ("flow", "dis fine")} <= labelers
    assert all(r["per_s"] > 0 for r in res["rows"])
    assert res["episode"][0]["size_px"] == 64 and res["dis_ratio_ours_over_bare"]["64"] > 0


def test_real_bridge_episode_without_depth_or_intrinsics(bridge_dir):
    from curation.sources.rlds import read_episodes

    ep = next(iter(read_episodes(str(bridge_dir), stop=1)))
    lab = EpisodeLabeler(LabelConfig())(ep)
    T, H, W = ep.frames[ep.primary_camera].shape[:3]
    assert lab.depth_kind == "missing" and lab.points_cam_m is None and lab.valid_3d is None
    assert lab.backends == {"tracks": "lk", "flow": "dis"}  # no depth backend named for an episode without depth
    assert lab.intrinsics_estimated
    fy = (H / 2) / np.tan(np.deg2rad(55.0) / 2)
    np.testing.assert_allclose(lab.intrinsics, [fy, fy, W / 2, H / 2], rtol=1e-5)
    assert lab.tracks_px.shape == (len(anchor_steps(T, 4)), 400, 32, 2)
    assert lab.visible[:, :, 1:][lab.in_range[:, None, 1:].repeat(400, 1)].mean() > 0.8
    assert lab.flow_valid.all()
    # Bridge's image_3 is blank (all zeros): asking to label it is an error that says so.
    assert "image_3" in ep.blank_cameras
    with pytest.raises(EpisodeError, match=r"bridge_dataset.*episode=0.*'image_3' is blank"):
        EpisodeLabeler(LabelConfig(camera="image_3"))(ep)


def test_outlier_removal_masks_a_depth_spike(sim_episodes):
    ep = _sliced(sim_episodes[1], 5)
    d = ep.depth_m["image"].copy()
    d[0, 31:36, 31:36] *= 3.0  # a spike under query (33.6, 33.6) on the anchor frame
    ep = _with(ep, depth_m={"image": d})
    k = 10 * 20 + 10
    plain = EpisodeLabeler(LabelConfig())(ep)
    clean = EpisodeLabeler(LabelConfig(outlier_removal=True))(ep)
    assert plain.valid_3d[0, k, 0] and plain.depth_m[0, k, 0] > 2.0
    assert not clean.valid_3d[0, k].any() and np.isnan(clean.points_cam_m[0, k]).all()
    # Only a few other anchor points go with it.
    lost = plain.valid_3d[:, :, 0] & ~clean.valid_3d[:, :, 0]
    assert lost.sum() <= 0.05 * plain.valid_3d[:, :, 0].sum()
    assert not (clean.valid_3d & ~plain.valid_3d).any()


def test_latent_tokens_from_a_real_checkpoint(sim_episodes, tmp_path):
    """LabelConfig.latent_checkpoint loads H4's LatentActionLabeler through its checkpoint
    path (a small random model saved as safetensors) and fills the token fields."""
    import torch

    from labelers.latent.checkpoint import save_weights
    from labelers.latent.config import get_config
    from labelers.latent.model import LatentActionModel

    torch.manual_seed(0)
    cfg = get_config("small", image_size=32, patch_size=8, width=32, heads=2, enc_spatial_depth=1, dec_depth=1)
    path = save_weights(LatentActionModel(cfg), cfg, tmp_path / "lam.safetensors", extra={"gap": 3})
    ep = _sliced(sim_episodes[0], 10)
    lab = EpisodeLabeler(LabelConfig(latent_checkpoint=str(path)))(ep)
    assert lab.latent_tokens.shape == (3, cfg.num_tokens) and lab.latent_tokens.dtype == np.int16
    assert lab.latent_valid.tolist() == [True, True, False]  # anchors 0, 4, 8; trained gap 3; 10 steps
    assert ((lab.latent_tokens[:2] >= 0) & (lab.latent_tokens[:2] < cfg.codebook_size)).all()
    assert (lab.latent_tokens[2] == LATENT_PAD_TOKEN).all()
