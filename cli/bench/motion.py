"""The moving-point side of `curate bench labels`: false motion, tracks at lower frame
rates, and the headline table (moving and all points side by side for every backend).

Called from cli/bench/labels.py, which owns the sample pool: these functions
add samples to it under their own keys and read back what the bench pooled.
The classification and the false-motion counts are labelers/eval/motion.py.
"""

from __future__ import annotations

import numpy as np

from labelers.eval import motion as motion_eval

TAPVID_SIZE = 256.0  # tracks are pooled at the TAP-Vid 256 px scale, as the bench's other track rows
# Tasks the CPU default tracker was chosen on (`curate bench labels`, 2 episodes each); every
# other task is held out, and the headline reports the held-out tasks pooled on their own.
CHOICE_TASKS = ("pick-place-v3", "drawer-open-v3", "button-press-topdown-v3")
HELD_OUT = "held-out"


def add_false_motion(pool, name: str, task: str, tracks, vis, classes: dict, eval_mask, sf=None) -> None:
    """False-motion flags of one episode's tracks (and of their 3D lift `sf`, when given)."""
    pool.add(("falsemotion", name, task), flags=motion_eval.false_motion_2d(tracks, vis, classes["static_2d"], eval_mask))
    if sf is not None and "static_3d" in classes:
        pool.add(("falsemotion3d", name, task), flags=motion_eval.false_motion_3d(sf.points_cam_m, sf.valid_3d, classes["static_3d"]))


def add_gap_tracks(pool, ep, tracker, name: str, task: str, gaps, stride: int, horizon: int, queries, spec=None) -> None:
    """Tracks on the episode re-timed to 1/gap of its rate (every gap-th frame), scored on the
    truth at those frames: rows "<name> [gap g]" and "<name> [gap g] [moving]" (tracks) and
    false-motion flags under the same names. `spec(g)`: what the rows were labelled with."""
    from labelers.eval import ground_truth as gt
    from labelers.tracking.common import track_anchors

    frames = ep.frames[ep.primary_camera]
    n, H, W = frames.shape[:3]
    to256 = np.array([TAPVID_SIZE / W, TAPVID_SIZE / H], np.float32)
    for g in gaps:
        idx, anchors, sub_h = motion_eval.subsample_clip(n, g, stride, horizon)
        if anchors.size == 0:
            continue
        full_h = (sub_h - 1) * g + 1
        truth = [gt.true_motion(ep, int(idx[a]), queries, full_h) for a in anchors]
        gt_tracks = motion_eval.subsample_truth(np.stack([t["tracks_px"] for t in truth]), g)  # N K sub_h 2
        gt_vis = motion_eval.subsample_truth(np.stack([t["visible"] for t in truth]), g)  # N K sub_h
        in_range = np.stack([t["in_range"] for t in truth])[:, ::g]  # N sub_h
        mask = np.broadcast_to(in_range[:, None, :], gt_vis.shape).copy()
        mask &= np.isfinite(gt_tracks[:, :, :1, 0])
        mask[..., 0] = False
        classes = motion_eval.motion_classes(gt_tracks, in_range)
        tracks, vis = track_anchors(tracker, frames[idx], anchors, queries, sub_h)
        label = f"{name} [gap {g}]"
        row_spec = spec(g) if spec else None
        pool.add(("tracks", label, task), row_spec, pred=tracks * to256, pvis=vis, gt=gt_tracks * to256, gvis=gt_vis, mask=mask)
        pool.add(("tracks", f"{label} [moving]", task), row_spec, pred=tracks * to256, pvis=vis, gt=gt_tracks * to256, gvis=gt_vis,
                 mask=mask & classes["moving_2d"][..., None])
        add_false_motion(pool, label, task, tracks, vis, classes, mask)


def task_groups(tasks: list[str]) -> dict[str, list[str]]:
    """Each task alone, the held-out tasks pooled (when there are any), and all tasks."""
    groups = {t: [t] for t in tasks}
    held = [t for t in tasks if t not in CHOICE_TASKS]
    if held and len(held) < len(tasks):
        groups[HELD_OUT] = held
    groups["all"] = list(tasks)
    return groups


def _cat(pool, label, name, tasks, field):
    keys = [(label, name, t) for t in tasks if (label, name, t) in pool.data]
    return np.concatenate([pool.get(k, field) for k in keys], axis=0) if keys else None


def _track_figures(pool, name, tasks, metrics) -> dict:
    out = {}
    for suffix, tag in ((" [moving]", "moving"), ("", "all")):
        pred = _cat(pool, "tracks", name + suffix, tasks, "pred")
        if pred is None:
            continue
        m = metrics.tapvid_metrics(pred, _cat(pool, "tracks", name + suffix, tasks, "pvis"), _cat(pool, "tracks", name + suffix, tasks, "gt"),
                                   _cat(pool, "tracks", name + suffix, tasks, "gvis"), (256, 256),
                                   eval_mask=_cat(pool, "tracks", name + suffix, tasks, "mask"))
        out.update({f"{tag}_delta_avg": m["delta_avg"], f"{tag}_delta_1": m["delta_1"], f"{tag}_aj": m["aj"], f"{tag}_oa": m["oa"]})
    flags = _cat(pool, "falsemotion", name, tasks, "flags")
    out["false_motion"] = motion_eval.share(flags) if flags is not None else float("nan")
    out["n_static"] = int(flags.size) if flags is not None else 0
    return out


def _scene_flow_figures(pool, name, tasks) -> dict:
    out = {}
    for suffix, tag in ((" [moving]", "moving"), ("", "all")):
        err = _cat(pool, "sceneflow", f"{name} + dataset depth{suffix}", tasks, "err")
        if err is None:
            continue
        out[f"{tag}_median_mm"] = float(np.median(err) * 1000) if err.size else float("nan")
        out[f"{tag}_under_1cm"] = float((err < 0.01).mean()) if err.size else float("nan")
    flags = _cat(pool, "falsemotion3d", name, tasks, "flags")
    out["false_motion_3d"] = motion_eval.share(flags) if flags is not None else float("nan")
    return out


def headline_rows(pool, tasks: list[str]) -> list[dict]:
    """One row per (track backend, task group): moving-point figures first, then all points,
    false motion in 2D and 3D. Gap rows ("[gap g]") come out as their own backends."""
    from labelers.eval import metrics

    names = []
    for (label, name, _t) in pool.data:
        if label == "falsemotion" and name not in names:
            names.append(name)
    rows = []
    for name in names:
        for group, members in task_groups(tasks).items():
            row = {"backend": name, "task": group}
            row.update(_track_figures(pool, name, members, metrics))
            row.update(_scene_flow_figures(pool, name, members))
            rows.append(row)
    return rows


def flow_moving_rows(pool, tasks: list[str]) -> list[dict]:
    """Optical flow on the moving pixels, per flow backend and gap, for the held-out tasks and
    all tasks pooled (the bench's flow table has each task and all tasks)."""
    names = []
    for (label, name, _t) in pool.data:
        if label == "flow" and name.endswith("[moving]") and name not in names:
            names.append(name)
    groups = {k: v for k, v in task_groups(tasks).items() if k in (HELD_OUT, "all")}
    rows = []
    for name in names:
        for group, members in groups.items():
            err = _cat(pool, "flow", name, members, "err")
            if err is None:
                continue
            rows.append({"backend": name, "task": group, "epe_px": float(err.mean()) if err.size else float("nan"),
                         "median_epe_px": float(np.median(err)) if err.size else float("nan"),
                         "outlier_3px": float((err > 3).mean()) if err.size else float("nan"), "n_pixels": int(err.size)})
    return rows
