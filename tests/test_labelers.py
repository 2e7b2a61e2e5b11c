"""Unit tests of the labelers on inputs with known answers (no simulator):
metrics on hand-made cases, the motion-image encoding, depth scale-and-shift,
Depth Anything through the real loading path, the CoTracker adapter, sub-pixel
depth sampling, LK on a known sub-pixel translation, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from labelers.eval import metrics
from labelers.depth import (
    DatasetDepth,
    disparity_to_depth,
    fit_scale_shift_disparity,
    get_depth_backend,
    resize_shape_short_side,
)
from labelers.flow import (
    decode_motion_image,
    encode_motion_image,
    flow_to_color,
    get_flow_backend,
    motion_image_error_bound,
)
from labelers.sceneflow import estimate_intrinsics, lift_tracks, sample_depth, statistical_inliers
from labelers.tracking.common import check_frames, grid_queries
from labelers.tracking.lk import LKTracker
from labelers.tracking.registry import get_tracker
from schemas.episode import CameraIntrinsics

# ---------------------------------------------------------------- synthetic scenes


def textured_image(size: int = 192, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def translated_clip(shifts_xy, crop: int = 64, seed: int = 0) -> np.ndarray:
    """Frames of a textured plane translated by exact sub-pixel shifts: content at
    (x, y) in frame 0 is at (x + dx_t, y + dy_t) in frame t."""
    import cv2

    base = textured_image(crop * 3, seed)
    out = []
    for dx, dy in shifts_xy:
        M = np.float32([[1, 0, dx], [0, 1, dy]])
        warped = cv2.warpAffine(base, M, (base.shape[1], base.shape[0]), flags=cv2.INTER_CUBIC)
        out.append(warped[crop : 2 * crop, crop : 2 * crop])
    return np.stack(out)


# ---------------------------------------------------------------- metrics


def test_tapvid_metrics_hand_made():
    # 2 points x 3 steps in a 256 px image (no rescale). Point 0 visible throughout,
    # predicted off by 0, 3 and 20 px; point 1 occluded at step 2, predicted visible there.
    gt = np.zeros((2, 3, 2))
    pred = gt.copy()
    pred[0, 1, 0] = 3.0
    pred[0, 2, 0] = 20.0
    gt_vis = np.array([[True, True, True], [True, True, False]])
    pred_vis = np.array([[True, True, True], [True, True, True]])
    m = metrics.tapvid_metrics(pred, pred_vis, gt, gt_vis, (256, 256))
    # Visible gt points: 5. Within 1 and 2 px: 4 (all but the 3 px and 20 px ones -> 3 of 5? no:
    # distances 0, 3, 20, 0, 0 -> within 1: 3, within 2: 3, within 4: 4, within 8: 4, within 16: 4.
    assert m["delta_1"] == pytest.approx(3 / 5)
    assert m["delta_4"] == pytest.approx(4 / 5)
    assert m["delta_avg"] == pytest.approx((3 + 3 + 4 + 4 + 4) / 25)
    assert m["oa"] == pytest.approx(5 / 6)
    # Jaccard at 1 px: TP 3, FP = occluded-predicted-visible (1) + visible-but-far (2) = 3, gt positives 5.
    assert m["jaccard_1"] == pytest.approx(3 / (5 + 3))
    assert m["jaccard_16"] == pytest.approx(4 / (5 + 2))


def test_tapvid_scales_to_256():
    # In a 128 px image a 0.6 px error is 1.2 px at 256: outside the 1 px threshold, inside 2 px.
    gt = np.zeros((1, 1, 2))
    pred = gt + np.array([0.6, 0.0])
    m = metrics.tapvid_metrics(pred, np.ones((1, 1), bool), gt, np.ones((1, 1), bool), (128, 128))
    assert m["delta_1"] == 0.0 and m["delta_2"] == 1.0


def test_tapvid_eval_mask_and_nan_prediction():
    gt = np.zeros((1, 2, 2))
    pred = np.full((1, 2, 2), np.nan)
    vis = np.ones((1, 2), bool)
    m = metrics.tapvid_metrics(pred, vis, gt, vis, (256, 256), eval_mask=np.array([[False, True]]))
    assert m["delta_avg"] == 0.0 and m["n_points"] == 1  # NaN is never "within"
    empty = metrics.tapvid_metrics(gt, vis, gt, vis, (256, 256), eval_mask=np.zeros((1, 2), bool))
    assert np.isnan(empty["delta_avg"])  # nothing evaluated never looks perfect


def test_flow_epe_and_outliers():
    gt = np.zeros((2, 2, 2))
    pred = np.zeros((2, 2, 2))
    pred[0, 0] = (3.0, 4.0)  # EPE 5
    pred[1, 1] = (100.0, 0.0)  # masked out below
    valid = np.array([[True, True], [True, False]])
    m = metrics.flow_epe(pred, gt, valid)
    assert m["epe_px"] == pytest.approx(5 / 3)
    assert m["outlier_3px"] == pytest.approx(1 / 3)
    assert m["n_pixels"] == 3


def test_scene_flow_and_depth_metrics():
    gt = np.zeros((2, 3, 3))
    gt[:, :, 2] = 1.0
    gt[0, 1, 0] = 0.05  # moves 5 cm at step 1
    pred = gt.copy()
    pred[0, 1, 0] = 0.055  # 5 mm off
    pred[1] += np.array([0.0, 0.0, 0.2])  # a constant depth offset: displacements still exact
    pred[1, 2, 1] = 0.02  # 20 mm off
    valid = np.ones((2, 3), bool)
    valid[0, 2] = False
    m = metrics.scene_flow_metrics(pred, gt, valid)
    errs = np.sort(metrics.scene_flow_errors_m(pred, gt, valid))
    np.testing.assert_allclose(errs, [0.0, 0.005, 0.02], atol=1e-12)
    assert m["under_1cm"] == pytest.approx(2 / 3)
    assert m["median_epe3d_mm"] == pytest.approx(5.0)
    d = metrics.depth_metrics(np.array([1.0, 2.0, 3.0, np.nan]), np.array([1.0, 1.0, 3.0, 2.0]))
    assert d["abs_rel"] == pytest.approx((0 + 1 + 0) / 3)
    assert d["delta_1.25"] == pytest.approx(2 / 3)
    assert d["coverage"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------- motion images


def test_motion_image_round_trip_within_bound():
    rng = np.random.default_rng(0)
    flow = rng.uniform(-64, 64, (32, 32, 2)).astype(np.float32)
    flow[0, :4] = [[0, 0], [0.3, -0.2], [-1.0, 2.0], [64, -64]]
    img = encode_motion_image(flow)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    back = decode_motion_image(img)
    err = np.abs(back - flow)
    assert np.all(err <= motion_image_error_bound(flow) + 1e-5)
    assert err[0, 0].max() == 0.0  # zero flow is exact
    assert err[0, 1].max() < 0.06  # sub-pixel flow keeps sub-pixel precision
    assert np.abs(back).max() <= 64.0
    # Channel 3 is the mean of the other two.
    c = (img[..., :2].astype(float) - 128) / 127
    assert np.abs((img[..., 2].astype(float) - 128) / 127 - c.mean(-1)).max() <= 0.5 / 127 + 1e-9


def test_motion_image_clips_large_flow_and_nan():
    flow = np.array([[[200.0, -1000.0], [np.nan, 1.0]]], np.float32)
    back = decode_motion_image(encode_motion_image(flow))
    np.testing.assert_allclose(back[0, 0], [64.0, -64.0])
    assert back[0, 1, 0] == 0.0


def test_flow_to_color_fixed_radius():
    flow = np.zeros((1, 4, 2), np.float32)
    flow[0, 1] = (4.0, 0.0)
    flow[0, 2] = (8.0, 0.0)
    flow[0, 3] = (np.nan, 0.0)
    col = flow_to_color(flow, max_radius=8.0)
    assert tuple(col[0, 0]) == (255, 255, 255)  # no motion: white
    # Same direction, larger magnitude: more saturated (lower minimum channel).
    assert col[0, 2].min() < col[0, 1].min()
    assert tuple(col[0, 3]) == (0, 0, 0)  # unknown: black
    # A fixed radius: the colour of a vector does not depend on the rest of the image.
    alone = flow_to_color(flow[:, 1:2], max_radius=8.0)
    assert tuple(alone[0, 0]) == tuple(col[0, 1])


# ---------------------------------------------------------------- optical flow backends


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_flow_backends_recover_translation(backend):
    clip = translated_clip([(0, 0), (1.5, -0.75)])
    flow = get_flow_backend(backend)(clip[0], clip[1])
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
    inner = flow[12:-12, 12:-12]
    np.testing.assert_allclose(np.median(inner.reshape(-1, 2), 0), [1.5, -0.75], atol=0.15)


# The cv2 DIS getters, read straight from the object (not through our parameter table).
DIS_GETTERS = ("getFinestScale", "getPatchSize", "getPatchStride", "getGradientDescentIterations",
               "getVariationalRefinementIterations", "getVariationalRefinementAlpha", "getVariationalRefinementDelta",
               "getVariationalRefinementGamma", "getUseMeanNormalization", "getUseSpatialPropagation")


def _cv2_settings(dis) -> dict:
    return {g: getattr(dis, g)() for g in DIS_GETTERS}


def test_dis_presets_are_the_settings_of_the_cv2_object():
    """The default "fine" preset is OpenCV's medium preset run down to full resolution (finest scale
    0) with 20 variational-refinement iterations; OpenCV's own presets are unchanged; explicit
    arguments override the preset on the cv2 object, also after pickling and a frame-size rebuild."""
    import pickle

    import cv2

    from labelers.flow import DEFAULT_DIS_PRESET, DISFlow

    bare_medium = _cv2_settings(cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM))
    fine = DISFlow()
    assert DEFAULT_DIS_PRESET == fine.preset == "fine"
    assert _cv2_settings(fine._dis) == {**bare_medium, "getFinestScale": 0, "getVariationalRefinementIterations": 20}
    assert bare_medium["getFinestScale"] == 1 and bare_medium["getVariationalRefinementIterations"] == 5
    for name, code in (("medium", cv2.DISOPTICAL_FLOW_PRESET_MEDIUM), ("fast", cv2.DISOPTICAL_FLOW_PRESET_FAST),
                       ("ultrafast", cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)):
        assert _cv2_settings(DISFlow(name)._dis) == _cv2_settings(cv2.DISOpticalFlow_create(code)), name
    custom = DISFlow("fine", patch_size=12, patch_stride=4, variational_refinement_alpha=10.0,
                     variational_refinement_gamma=5.0, use_spatial_propagation=False)
    want = {**bare_medium, "getFinestScale": 0, "getVariationalRefinementIterations": 20, "getPatchSize": 12,
            "getPatchStride": 4, "getVariationalRefinementAlpha": 10.0, "getVariationalRefinementGamma": 5.0,
            "getUseSpatialPropagation": False}
    assert _cv2_settings(custom._dis) == want
    clone = pickle.loads(pickle.dumps(custom))
    clip = translated_clip([(0, 0), (1.0, 0.5)])
    clone(clip[0], clip[1])  # first frame size: the cv2 object is rebuilt
    assert _cv2_settings(clone._dis) == want
    assert list(custom.settings().values()) == list(want.values())  # settings() reads the same getters


def test_dis_rejects_unknown_presets_and_scales():
    from labelers.flow import DISFlow

    with pytest.raises(ValueError, match="unknown DIS preset 'turbo'"):
        DISFlow("turbo")
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="upscale must be an integer >= 1"):
            DISFlow(upscale=bad)


def test_dis_on_upscaled_frames_returns_flow_on_the_input_grid():
    """upscale=2: DIS on 2x frames, flow averaged back to the input pixels and halved."""
    from labelers.flow import DISFlow

    clip = translated_clip([(0, 0), (1.5, -0.75)])
    flow = DISFlow("medium", upscale=2)(clip[0], clip[1])
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(np.median(flow[12:-12, 12:-12].reshape(-1, 2), 0), [1.5, -0.75], atol=0.15)


def test_dis_flow_does_not_depend_on_earlier_frame_sizes():
    """OpenCV's DIS keeps settings from earlier, smaller images; a labeler reused across
    episodes (one per worker) must still give every episode the same flow."""
    import cv2

    clip = translated_clip([(0, 0), (1.5, -0.75)])
    fresh = get_flow_backend("dis")(clip[0], clip[1])
    reused = get_flow_backend("dis")
    small = np.ascontiguousarray(clip[:, ::2, ::2])  # 32 px
    reused(small[0], small[1])
    np.testing.assert_array_equal(reused(clip[0], clip[1]), fresh)
    # the quirk being guarded against is real: a bare DIS instance does change
    bare = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip[:2]]
    bare.calc(cv2.cvtColor(small[0], cv2.COLOR_RGB2GRAY), cv2.cvtColor(small[1], cv2.COLOR_RGB2GRAY), None)
    assert not np.array_equal(bare.calc(g[0], g[1], None), fresh)


def test_flow_bad_input():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="one size"):
        get_flow_backend("dis")(a, np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown flow backend"):
        get_flow_backend("raft")


# ---------------------------------------------------------------- depth


def test_scale_shift_fit_recovers_known_values():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0.1, 5.0, (4, 16, 16))  # relative disparity
    a, b = 0.37, 0.12
    depth = 1.0 / (a * pred + b)
    sparse = np.full_like(depth, np.nan)
    idx = rng.random(depth.shape) < 0.05  # 5% of pixels carry metric depth
    sparse[idx] = depth[idx]
    fit = fit_scale_shift_disparity(pred, sparse)
    assert fit is not None
    np.testing.assert_allclose(fit, (a, b), rtol=1e-9)
    np.testing.assert_allclose(disparity_to_depth(pred, *fit), depth, rtol=1e-5)
    # 10% gross outliers (flying pixels) in the anchors: the robust refit still recovers (a, b).
    noisy = depth.copy()
    bad = rng.random(depth.shape) < 0.1
    noisy[bad] = rng.uniform(0.05, 20.0, bad.sum())
    np.testing.assert_allclose(fit_scale_shift_disparity(pred, noisy), (a, b), rtol=1e-6)
    plain = fit_scale_shift_disparity(pred, noisy, robust_iters=0)
    assert abs(plain[0] - a) > 1e-3  # without the refit the outliers pull the fit away
    assert fit_scale_shift_disparity(np.ones((8, 8)), np.ones((8, 8))) is None  # degenerate
    assert fit_scale_shift_disparity(pred, np.full_like(pred, np.nan)) is None  # no anchors


def test_dataset_depth_masks_bad_values():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    d = np.full((2, 4, 4), 1.5, np.float32)
    d[0, 0, 0] = np.nan
    d[0, 0, 1] = -2.0
    d[1, 3, 3] = np.inf
    d[1, 2, 2] = 0.0
    res = DatasetDepth()(frames, d)
    assert res.kind == "metric" and res.info["masked_invalid"] == 3
    assert np.isnan(res.depth_m[0, 0, :2]).all() and np.isnan(res.depth_m[1, 3, 3]) and np.isnan(res.depth_m[1, 2, 2])
    assert (res.depth_m[res.valid] == 1.5).all() and res.valid.sum() == 32 - 4
    missing = DatasetDepth()(frames, None)
    assert missing.kind == "missing" and missing.depth_m is None
    all_bad = DatasetDepth()(frames, np.full((2, 4, 4), -1.0, np.float32))
    assert all_bad.kind == "missing" and all_bad.depth_m is None


def test_resize_short_side_multiple_of_14():
    assert resize_shape_short_side(64, 80, 518) == (518, 658)
    h, w = resize_shape_short_side(480, 640, 518)
    assert h == 518 and w % 14 == 0 and w >= 518 * 640 / 480


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory):
    """A random-initialised Depth Anything of the real architecture, saved like a hub checkpoint."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=14,
        out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False,
    )
    cfg = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8,
    )
    model = DepthAnythingForDepthEstimation(cfg)
    with torch.no_grad():  # widen the random head's output range so the fit is well conditioned
        for p in model.head.parameters():
            p.mul_(30.0)
    path = tmp_path_factory.mktemp("tiny-depth-anything")
    model.save_pretrained(path)
    DPTImageProcessor().save_pretrained(path)
    return path


def test_depth_anything_loads_and_fits_to_anchors(tiny_depth_anything):
    backend = get_depth_backend("depth-anything", model=str(tiny_depth_anything), input_size=56, batch_size=2)
    assert backend.metric is False
    frames = (np.random.default_rng(0).random((3, 40, 48, 3)) * 255).astype(np.uint8)
    pred = backend.predict(frames)
    assert pred.shape == (3, 40, 48) and np.isfinite(pred).all() and np.ptp(pred) > 0
    # Metric anchors made from the model's own output with a known scale and shift: the fit must
    # recover them and the fitted depth must match the anchors wherever they are.
    a, b = 0.8, 0.25
    truth = 1.0 / (a * pred.astype(np.float64) + b)
    sparse = np.full(truth.shape, np.nan, np.float32)
    sparse[:, ::5, ::5] = truth[:, ::5, ::5]
    res = backend(frames, sparse)
    assert res.kind == "fitted" and res.backend == "depth-anything"
    np.testing.assert_allclose(res.info["scale_shift"][0], (a, b), rtol=1e-3)
    np.testing.assert_allclose(res.depth_m, truth, rtol=1e-3)
    # Relative model and no anchors: no depth, said so.
    none = backend(frames, None)
    assert none.kind == "missing" and none.depth_m is None and "anchors" in none.info["reason"]


def test_depth_anything_metric_model(tiny_depth_anything, tmp_path):
    from transformers import AutoModelForDepthEstimation, DPTImageProcessor

    model = AutoModelForDepthEstimation.from_pretrained(tiny_depth_anything)
    model.config.depth_estimation_type = "metric"
    model.config.max_depth = 20
    model.save_pretrained(tmp_path)
    DPTImageProcessor().save_pretrained(tmp_path)
    backend = get_depth_backend("depth-anything", model=str(tmp_path), input_size=28)
    frames = (np.random.default_rng(1).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    res = backend(frames, None)
    assert backend.metric and res.kind == "metric-model"
    assert res.depth_m.shape == (2, 32, 32)
    assert np.nanmax(res.depth_m) <= 20.0


def test_depth_anything_bad_model_path(tmp_path):
    with pytest.raises(ValueError, match="cannot load Depth Anything"):
        get_depth_backend("depth-anything", model=str(tmp_path / "nothing-here"))


# ---------------------------------------------------------------- scene flow


def test_sample_depth_subpixel_nan_aware_and_edges():
    d = np.array([[1, 2, 3], [4, np.nan, 6], [7, 8, 9]], np.float32)
    # Pixel centres at +0.5: (0.5, 0.5) is exactly pixel (0, 0).
    vals, ok = sample_depth(d, np.array([[0.5, 0.5], [1.0, 1.0], [1.25, 0.75], [-1, 0], [np.nan, 1]]), edge_rel=10)
    np.testing.assert_allclose(vals[:3], [1.0, 7 / 3, (0.1875 * 1 + 0.5625 * 2 + 0.0625 * 4) / 0.8125], rtol=1e-6)
    assert ok.tolist() == [True, True, True, False, False] and np.isnan(vals[3:]).all()
    # At a depth edge (neighbours 1 and 2 differ by 100%) the nearest valid neighbour is used.
    vals, _ = sample_depth(d, np.array([[1.25, 0.75]]), edge_rel=0.05)
    assert vals[0] == 2.0
    # Bilinear on a smooth plane is exact.
    plane = (1.0 + 0.01 * np.arange(16)[None, :] + 0.02 * np.arange(16)[:, None]).astype(np.float32)
    v, _ = sample_depth(plane, np.array([[5.3, 7.9]]))
    assert v[0] == pytest.approx(1.0 + 0.01 * 4.8 + 0.02 * 7.4, rel=1e-6)


def test_lift_tracks_unprojects_and_masks():
    K = CameraIntrinsics(100.0, 100.0, 32.0, 24.0, 64, 48)
    depth = np.full((2, 48, 64), 2.0, np.float32)
    depth[1, :, 40:] = np.nan  # no depth on the right half of frame 1
    tracks = np.array([[[32.0, 24.0], [42.0, 14.0]], [[10.0, 10.0], [20.0, 30.0]], [[5.0, 5.0], [70.0, 5.0]]], np.float32)
    vis = np.array([[True, True], [True, False], [True, True]])
    sf = lift_tracks(tracks, vis, depth, K)
    np.testing.assert_allclose(sf.points_cam_m[0, 0], [0.0, 0.0, 2.0])
    assert not sf.valid_3d[0, 1] and np.isnan(sf.points_cam_m[0, 1]).all()  # x = 42 has no depth in frame 1
    assert not sf.valid_3d[1, 1] and np.isnan(sf.depth_m[1, 1])  # not visible
    assert not sf.valid_3d[2, 1]  # outside the image
    np.testing.assert_allclose(sf.points_cam_m[1, 0], [(10 - 32) / 100 * 2, (10 - 24) / 100 * 2, 2.0], rtol=1e-6)
    uvd = sf.uvd(tracks)
    assert uvd.shape == (3, 2, 3) and uvd[0, 0, 2] == 2.0
    # Round trip with the projection.
    from labelers.sceneflow import project

    np.testing.assert_allclose(project(sf.points_cam_m[0, :1], K), tracks[0, :1], atol=1e-4)


def test_estimated_intrinsics_and_outliers():
    K = estimate_intrinsics(128, 160)
    assert K.estimated and K.cx == 80 and K.cy == 64
    assert K.fy == pytest.approx(64 / np.tan(np.deg2rad(27.5)))
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 0.01, (200, 3)) + [0, 0, 1.0]
    pts[7] = [0.5, 0.5, 3.0]  # a depth spike
    pts[9] = np.nan
    keep = statistical_inliers(pts)
    assert not keep[7] and not keep[9] and keep.sum() >= 180


# ---------------------------------------------------------------- tracking


def test_lk_tracks_known_subpixel_translation():
    shifts = [(0.37 * t, -0.23 * t) for t in range(12)]
    clip = translated_clip(shifts)
    q = grid_queries(64, 64, 6)
    for mode in ("chain", "anchor"):
        tracks, vis = LKTracker(mode=mode)(clip, q)
        assert tracks.shape == (36, 12, 2) and vis.shape == (36, 12)
        truth = q[:, None, :] + np.asarray(shifts, np.float32)[None]
        inner = (q[:, 0] > 12) & (q[:, 0] < 52) & (q[:, 1] > 12) & (q[:, 1] < 52)
        err = np.linalg.norm(tracks[inner] - truth[inner], axis=-1)
        assert vis[inner].all(), mode
        assert np.median(err) < 0.05 and err.max() < 0.3, (mode, np.median(err), err.max())


def test_lk_marks_vanishing_points_not_visible():
    # The right half of the image turns black at frame 3: points there cannot be followed.
    clip = translated_clip([(0.0, 0.0)] * 6)
    clip[3:, :, 32:] = 0
    q = np.array([[16.0, 32.0], [48.0, 32.0]], np.float32)
    tracks, vis = LKTracker(mode="anchor", max_level=1)(clip, q)  # small pyramid: the window stays local
    assert vis[0].all()
    assert vis[1, :3].all() and not vis[1, 3:].any()


def test_lk_queries_outside_image_are_masked():
    clip = translated_clip([(0.0, 0.0)] * 3)
    q = np.array([[10.0, 10.0], [-3.0, 10.0], [10.0, 64.0], [np.nan, 5.0]], np.float32)
    tracks, vis = get_tracker("lk")(clip, q)
    assert vis[0].all()
    assert not vis[1:].any() and np.isnan(tracks[1:]).all()


def test_tracker_bad_input():
    a = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="different sizes"):
        check_frames([a, np.zeros((32, 40, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        check_frames(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="unknown tracker"):
        get_tracker("sift")
    # A single frame: the query frame only.
    clip = translated_clip([(0.0, 0.0)])
    tracks, vis = get_tracker("lk")(clip, grid_queries(64, 64, 4))
    assert tracks.shape == (16, 1, 2) and vis.all()


# ---------------------------------------------------------------- CoTracker adapter


class FakeCoTracker:
    """Stands in for CoTrackerPredictor with its documented signature: video B T 3 H W float
    0..255, queries B N 3 float (t, x, y) in integer-centred pixels; returns tracks
    B T N 2 and visibility B T N bool. It moves every point by (+1, +0.5) px per frame."""

    def __init__(self):
        self.calls = []

    def __call__(self, video, queries=None, backward_tracking=False, **kwargs):
        import torch

        self.calls.append({"video": video, "queries": queries.clone(), "backward_tracking": backward_tracking})
        assert video.ndim == 5 and video.shape[2] == 3 and video.dtype == torch.float32
        assert queries.dtype == torch.float32 and queries.shape[-1] == 3
        B, T = video.shape[:2]
        t = torch.arange(T, dtype=torch.float32)[None, :, None]
        dt = t - queries[:, None, :, 0]
        x = queries[:, None, :, 1] + dt
        y = queries[:, None, :, 2] + 0.5 * dt
        vis = torch.ones(B, T, queries.shape[1], dtype=torch.bool)
        return torch.stack([x, y], -1), vis


def test_cotracker_adapter_with_injected_predictor():
    from labelers.tracking.cotracker import CoTrackerTracker

    fake = FakeCoTracker()
    tracker = CoTrackerTracker(predictor=fake)
    frames = np.zeros((5, 48, 64, 3), np.uint8)
    frames[..., 0] = 200
    q = np.array([[10.5, 20.5], [30.0, 5.0], [100.0, 5.0]], np.float32)  # the last is outside
    tracks, vis = tracker(frames, q)
    call = fake.calls[-1]
    assert tuple(call["video"].shape) == (1, 5, 3, 48, 64) and float(call["video"].max()) == 200.0
    # Float (t, x, y) queries, shifted to CoTracker's integer-centred pixels; outside query not sent.
    np.testing.assert_allclose(call["queries"][0].numpy(), [[0, 10.0, 20.0], [0, 29.5, 4.5]])
    assert call["backward_tracking"] is False
    assert tracks.shape == (3, 5, 2) and vis.shape == (3, 5)
    np.testing.assert_allclose(tracks[0, 4], [14.5, 22.5])
    assert vis[:2].all() and not vis[2].any() and np.isnan(tracks[2]).all()
    # Queries on a later frame switch on backward tracking.
    tr, _ = tracker.track(frames, np.array([[2.0, 10.5, 20.5]], np.float32))
    assert fake.calls[-1]["backward_tracking"] is True
    np.testing.assert_allclose(tr[0, 0], [8.5, 19.5])


class FakeOnlineCoTracker:
    """The documented online protocol: a first call with is_first_step=True and the queries,
    then windows video[:, i : i + 2 * step]; each call returns the tracks of every frame
    seen so far (B T' N 2). Points move by (+1, 0) px per frame."""

    step = 4

    def __init__(self):
        self.windows = []

    def __call__(self, video_chunk, is_first_step=False, queries=None, **kwargs):
        import torch

        if is_first_step:
            self.queries = queries.clone()
            self.seen = 0
            return None, None
        self.windows.append(tuple(video_chunk.shape))
        self.seen = video_chunk.shape[1] if len(self.windows) == 1 else self.seen + self.step
        seen = self.seen  # may run past the clip's end, like the real model; the adapter crops
        t = torch.arange(seen, dtype=torch.float32)[None, :, None]
        x = self.queries[:, None, :, 1] + t
        y = self.queries[:, None, :, 2].expand(-1, seen, -1)
        return torch.stack([x, y], -1), torch.ones(1, seen, self.queries.shape[1], dtype=torch.bool)


def test_cotracker_online_protocol():
    from labelers.tracking.cotracker import CoTrackerTracker

    fake = FakeOnlineCoTracker()
    tracker = CoTrackerTracker(predictor=fake, variant="online")
    frames = np.full((14, 32, 32, 3), 100, np.uint8)
    tracks, vis = tracker(frames, np.array([[5.5, 6.5]], np.float32))
    # windows of 2 * step frames every step frames: starts 0, 4, 8 (the last one shorter)
    assert [w[1] for w in fake.windows] == [8, 8, 6]
    assert tracks.shape == (1, 14, 2) and vis[0].all()
    np.testing.assert_allclose(tracks[0, :, 0], 5.5 + np.arange(14))


def test_cotracker_needs_repo_and_checkpoint():
    from labelers.tracking.cotracker import CoTrackerTracker

    with pytest.raises(ValueError, match="checkpoint"):
        get_tracker("cotracker", repo="/nowhere")
    with pytest.raises(ValueError, match="variant"):
        CoTrackerTracker(predictor=FakeCoTracker(), variant="fast")
    with pytest.raises(ValueError, match="online_checkpoint"):
        CoTrackerTracker(repo="/nowhere", checkpoint="/x.pth", online_above_frames=100)


@pytest.mark.cotracker
@pytest.mark.skipif(
    not (__import__("os").environ.get("COTRACKER_REPO") and __import__("os").environ.get("COTRACKER_CKPT")),
    reason="real CoTracker run needs COTRACKER_REPO (local clone) and COTRACKER_CKPT (checkpoint file)",
)
def test_real_cotracker_tracks_translation():
    import os

    tracker = get_tracker("cotracker", repo=os.environ["COTRACKER_REPO"], checkpoint=os.environ["COTRACKER_CKPT"])
    shifts = [(0.5 * t, 0.25 * t) for t in range(8)]
    clip = translated_clip(shifts)
    q = grid_queries(64, 64, 4)
    tracks, vis = tracker(clip, q)
    truth = q[:, None, :] + np.asarray(shifts, np.float32)[None]
    inner = (q[:, 0] > 10) & (q[:, 0] < 54) & (q[:, 1] > 10) & (q[:, 1] < 54)
    assert np.median(np.linalg.norm(tracks[inner] - truth[inner], axis=-1)) < 1.0
    assert vis[inner].mean() > 0.9


def test_depth_jump_masks_the_rest_of_a_slipped_track():
    from labelers.sceneflow import depth_jump_mask

    d = np.array([[1.0, 1.01, 1.02, 1.6, 1.61, 1.62],  # slips onto the background at step 3
                  [1.0, np.nan, 1.05, 1.1, 1.15, 1.2]])  # smooth, with a gap
    v = np.isfinite(d)
    out = depth_jump_mask(d, v, 0.2)
    assert out[0].tolist() == [True, True, True, False, False, False]
    assert out[1].tolist() == v[1].tolist()


def test_open3d_visualisation_helpers():
    from labelers.sceneflow import depth_to_point_cloud, trajectories_line_set

    pts = np.zeros((2, 4, 3))
    pts[:, :, 2] = 1.0
    pts[0, :, 0] = [0.0, 0.1, 0.2, 0.3]
    valid = np.array([[True, True, False, True], [True, True, True, True]])
    ls = trajectories_line_set(pts, valid)
    assert len(ls.lines) == 1 + 3  # point 0: one segment (steps 0-1); point 1: three
    np.testing.assert_allclose(np.asarray(ls.points)[np.asarray(ls.lines)[0]], pts[0, :2])
    K = CameraIntrinsics(50.0, 50.0, 16.0, 16.0, 32, 32)
    d = np.full((32, 32), 2.0, np.float32)
    d[0, 0] = np.nan
    pcd = depth_to_point_cloud(d, K, rgb=np.zeros((32, 32, 3), np.uint8))
    assert len(pcd.points) == 32 * 32 - 1 and np.allclose(np.asarray(pcd.points)[:, 2], 2.0)


def test_labeler_pickles_for_runners():
    """Beam and Ray ship the label stage between processes: it must pickle (OpenCV's DIS object
    does not, the backend rebuilds it) and label identically afterwards."""
    import pickle

    from labelers.episode_labeler import EpisodeLabeler, LabelConfig

    labeler = EpisodeLabeler(LabelConfig(flow_params={"preset": "fast", "patch_size": 6}))
    clone = pickle.loads(pickle.dumps(labeler))
    assert clone.flow.preset == "fast" and clone.flow._dis.getPatchSize() == 6
    clip = translated_clip([(0.0, 0.0), (1.0, 0.5)])
    np.testing.assert_array_equal(clone.flow(clip[0], clip[1]), labeler.flow(clip[0], clip[1]))
