"""Accuracy metrics of motion labels against ground truth.

- Point tracks: the TAP-Vid metrics (Doersch et al. 2022). Positions are
  scaled to a 256 x 256 frame, thresholds 1, 2, 4, 8, 16 px there:
  `delta_avg` = share of ground-truth-visible points within the threshold,
  averaged over thresholds; occlusion accuracy `oa` = share of evaluated
  points whose predicted visibility matches the truth; Average Jaccard `aj` =
  mean over thresholds of TP / (TP + FP + FN), a TP being a point visible in
  both and within the threshold. Evaluated points: `eval_mask` (by default
  every point; callers pass in-range steps except the query frame).
- Optical flow: end-point error (px) and the share of pixels off by more than
  3 px, over the valid (non-occluded) pixels.
- 3D scene flow: end-point error of 3D displacements (reported in mm), and
  the share under 1 cm.
- Depth: AbsRel = mean |d - d*| / d*, and delta < 1.25 = share with
  max(d / d*, d* / d) < 1.25.

All functions take arrays and return plain floats (NaN when nothing was
evaluated, so an empty comparison can never look like a perfect one).
"""

from __future__ import annotations

import numpy as np

TAPVID_THRESHOLDS_PX = (1.0, 2.0, 4.0, 8.0, 16.0)
TAPVID_SIZE = 256


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b > 0 else float("nan")


def tapvid_metrics(
    pred_xy: np.ndarray,
    pred_visible: np.ndarray,
    gt_xy: np.ndarray,
    gt_visible: np.ndarray,
    image_size_hw: tuple[int, int],
    eval_mask: np.ndarray | None = None,
    thresholds_px: tuple[float, ...] = TAPVID_THRESHOLDS_PX,
) -> dict:
    """TAP-Vid metrics for tracks of any leading shape (... x 2 positions, ... masks).

    pred_xy, gt_xy: (..., 2) pixels in an image of `image_size_hw`;
    pred_visible, gt_visible, eval_mask: (...) bool.
    Returns delta_avg, oa, aj, and per-threshold `delta_<t>` / `jaccard_<t>`.
    """
    pred_xy = np.asarray(pred_xy, np.float64)
    gt_xy = np.asarray(gt_xy, np.float64)
    pv = np.asarray(pred_visible, bool)
    gv = np.asarray(gt_visible, bool)
    if pred_xy.shape != gt_xy.shape or pv.shape != gv.shape or pv.shape != pred_xy.shape[:-1]:
        raise ValueError(f"shape mismatch: pred {pred_xy.shape}/{pv.shape}, gt {gt_xy.shape}/{gv.shape}")
    mask = np.ones_like(gv) if eval_mask is None else np.asarray(eval_mask, bool)
    h, w = image_size_hw
    scale = np.array([TAPVID_SIZE / w, TAPVID_SIZE / h])
    diff = (pred_xy - gt_xy) * scale
    dist = np.sqrt((diff**2).sum(-1))
    dist = np.where(np.isfinite(dist), dist, np.inf)  # a NaN prediction is never within a threshold
    out: dict = {}
    deltas, jaccards = [], []
    n_vis = int((gv & mask).sum())
    for t in thresholds_px:
        within = dist < t
        acc = _safe_div((within & gv & mask).sum(), n_vis)
        tp = (within & gv & pv & mask).sum()
        fp = ((pv & ~gv) | (pv & gv & ~within)) & mask
        jac = _safe_div(tp, n_vis + fp.sum())
        out[f"delta_{t:g}"] = acc
        out[f"jaccard_{t:g}"] = jac
        deltas.append(acc)
        jaccards.append(jac)
    out["delta_avg"] = float(np.mean(deltas)) if n_vis else float("nan")
    out["aj"] = float(np.mean(jaccards)) if n_vis else float("nan")
    out["oa"] = _safe_div(((pv == gv) & mask).sum(), mask.sum())
    out["n_points"] = int(mask.sum())
    out["n_visible"] = n_vis
    return out


def flow_epe(pred_flow: np.ndarray, gt_flow: np.ndarray, valid: np.ndarray | None = None, outlier_px: float = 3.0) -> dict:
    """Flow end-point error over valid pixels: epe (mean, px), median, share > outlier_px."""
    pred = np.asarray(pred_flow, np.float64)
    gt = np.asarray(gt_flow, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"flow shapes differ: {pred.shape} vs {gt.shape}")
    m = np.isfinite(gt).all(-1)
    if valid is not None:
        m &= np.asarray(valid, bool)
    err = np.sqrt(((pred - gt) ** 2).sum(-1))[m]
    err = np.where(np.isfinite(err), err, np.inf)  # a NaN prediction at a valid pixel counts as an outlier
    if err.size == 0:
        return {"epe_px": float("nan"), "median_epe_px": float("nan"), f"outlier_{outlier_px:g}px": float("nan"), "n_pixels": 0}
    finite = err[np.isfinite(err)]
    return {
        "epe_px": float(finite.mean()) if finite.size == err.size else float("inf"),
        "median_epe_px": float(np.median(err)),
        f"outlier_{outlier_px:g}px": float((err > outlier_px).mean()),
        "n_pixels": int(err.size),
    }


def scene_flow_errors_m(pred_points_m: np.ndarray, gt_points_m: np.ndarray, valid: np.ndarray, ref_index: int = 0) -> np.ndarray:
    """3D end-point errors (metres) of displacements from horizon step `ref_index`.

    pred_points_m, gt_points_m: (..., T, 3); valid: (..., T) bool, where both
    the step and the reference step must be valid. Returns a flat array of
    errors over valid (point, step) pairs with step != ref_index.
    """
    p = np.asarray(pred_points_m, np.float64)
    g = np.asarray(gt_points_m, np.float64)
    v = np.asarray(valid, bool)
    dp = p - p[..., ref_index : ref_index + 1, :]
    dg = g - g[..., ref_index : ref_index + 1, :]
    m = v & v[..., ref_index : ref_index + 1]
    m[..., ref_index] = False
    m &= np.isfinite(dp).all(-1) & np.isfinite(dg).all(-1)
    return np.sqrt(((dp - dg) ** 2).sum(-1))[m]


def scene_flow_metrics(pred_points_m: np.ndarray, gt_points_m: np.ndarray, valid: np.ndarray, ref_index: int = 0) -> dict:
    """3D EPE of displacements: mean and median in mm, share under 1 cm."""
    err = scene_flow_errors_m(pred_points_m, gt_points_m, valid, ref_index)
    if err.size == 0:
        return {"epe3d_mm": float("nan"), "median_epe3d_mm": float("nan"), "under_1cm": float("nan"), "n_points": 0}
    return {
        "epe3d_mm": float(err.mean() * 1000.0),
        "median_epe3d_mm": float(np.median(err) * 1000.0),
        "under_1cm": float((err < 0.01).mean()),
        "n_points": int(err.size),
    }


def depth_metrics(pred_depth_m: np.ndarray, gt_depth_m: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """AbsRel and delta < 1.25 over pixels with finite positive depth in both
    (and `valid`); `coverage` = share of the ground truth's valid pixels that
    the prediction covers."""
    p = np.asarray(pred_depth_m, np.float64)
    g = np.asarray(gt_depth_m, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"depth shapes differ: {p.shape} vs {g.shape}")
    gt_ok = np.isfinite(g) & (g > 0)
    if valid is not None:
        gt_ok &= np.asarray(valid, bool)
    m = gt_ok & np.isfinite(p) & (p > 0)
    if not m.any():
        return {"abs_rel": float("nan"), "delta_1.25": float("nan"), "coverage": 0.0 if gt_ok.any() else float("nan"), "n_pixels": 0}
    pm, gm = p[m], g[m]
    ratio = np.maximum(pm / gm, gm / pm)
    return {
        "abs_rel": float(np.mean(np.abs(pm - gm) / gm)),
        "delta_1.25": float(np.mean(ratio < 1.25)),
        "coverage": float(m.sum() / gt_ok.sum()),
        "n_pixels": int(m.sum()),
    }
