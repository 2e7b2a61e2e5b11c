"""Where the default tracker's false motion comes from, and two static tests that were measured
against it (README, labels section, "False motion: where it comes from").

    python dev/false_motion_sources.py SIMULATED_DATASET [--out-json F]

On every episode (the bench's protocol: anchors every 8 steps, 20 x 20 grid, horizon 32) the
default `lk` tracker is run and, for each truly static (anchor, query) whose track claims more
than 1 px at a step it calls visible, the first offending step is examined against the
simulator's segmentation. Then the same scores with
  - "surface": the static test also pins a query whose own pixel is unchanged from the anchor and
    every changed pixel of whose 3 x 3 window is another surface (differs from the pixel's colour
    by more than CONTRAST levels in either frame): a body moving beside the point;
  - "colour C": a tracked point is called visible only where its colour is within C levels of
    its colour at the query in the anchor frame (positions unchanged).
"""
import argparse
import json
import time

import numpy as np

from cli.bench.labels import _motion_truth
from curation.sources.rlds import read_episodes
from labelers.eval import metrics
from labelers.eval import motion as motion_eval
from labelers.tracking import lk_refined
from labelers.tracking.common import track_anchors
from labelers.tracking.registry import get_tracker
from schemas.triplet import anchor_steps

CONTRAST = 20


def surface_static(img0: np.ndarray, img1: np.ndarray, tol: int, contrast: int) -> np.ndarray:
    """H W bool: the pixel changed by <= tol levels and every changed pixel of its 3 x 3 window
    differs from the pixel's colour by > contrast levels in img0 or img1 (H W or H W C uint8)."""
    a, b = img0.astype(np.int16), img1.astype(np.int16)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    changed = np.abs(a - b).max(-1) > tol
    ok = ~changed
    H, W = changed.shape
    pa, pb = (np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge") for x in (a, b))
    pc = np.pad(changed, 1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                win = np.s_[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
                other = (np.abs(pa[win] - a).max(-1) > contrast) | (np.abs(pb[win] - b).max(-1) > contrast)
                ok &= ~(pc[win] & ~other)
    return ok


class SurfaceLKTracker(lk_refined.RefinedLKTracker):
    """The default tracker with the "surface" static test added to its anchor test."""

    def _static(self, pyr, act_anchors, f, qm, p0):
        at_query, still = super()._static(pyr, act_anchors, f, qm, p0)
        for i, a in enumerate(act_anchors):
            m = surface_static(np.asarray(pyr[a]), np.asarray(pyr[f + 1]), self.static_tol, CONTRAST)
            at_query[i] |= lk_refined.sample_nearest(m, qm)
        return at_query, still


def colour_visible(frames: np.ndarray, anchors: np.ndarray, q: np.ndarray, tracks: np.ndarray, c: float) -> np.ndarray:
    """N K T bool: the colour at each tracked position (nearest pixel) is within c levels of the
    query's colour in its anchor frame."""
    T, H, W = frames.shape[:3]
    qr, qc = (np.clip(q[:, 1].astype(int), 0, H - 1), np.clip(q[:, 0].astype(int), 0, W - 1))
    ok = np.zeros(tracks.shape[:3], bool)
    for i, a in enumerate(anchors):
        ref = frames[a, qr, qc].astype(int)  # K 3
        steps = np.arange(min(tracks.shape[2], T - a))
        p = np.nan_to_num(tracks[i, :, steps])  # S K 2
        r, c_ = np.clip(p[..., 1].astype(int), 0, H - 1), np.clip(p[..., 0].astype(int), 0, W - 1)
        cur = frames[a + steps[:, None], r, c_].astype(int)  # S K 3
        ok[i, :, steps] = np.abs(cur - ref[None]).max(-1) <= c
    return ok


def first_offences(ep, truth: dict, tracks: np.ndarray, vis: np.ndarray) -> dict:
    """At the first step a false-motion track claims > 1 px: did a body other than the query's
    enter the 3 x 3 window (segmentation), is the point still visible, and how far is the nearest
    pixel whose body changed."""
    seg = np.asarray(ep.ground_truth.segmentation)
    d = np.linalg.norm(tracks - tracks[..., :1, :], axis=-1)
    claims = (d > 1) & vis & truth["eval_mask"]
    out = {"false": 0, "other_body_in_window": 0, "visible_in_truth": 0, "distance_px": []}
    for ai, k in zip(*np.nonzero(truth["classes"]["static_2d"] & claims.any(-1))):
        a = int(truth["anchors"][ai])
        j = int(np.flatnonzero(claims[ai, k])[0])
        x, y = truth["queries"][k]
        c, r = int(x), int(y)
        win = np.s_[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
        out["false"] += 1
        out["other_body_in_window"] += int((seg[a][win] != seg[a + j][win]).any())
        out["visible_in_truth"] += int(truth["vis"][ai, k, j])
        yy, xx = np.nonzero(seg[a] != seg[a + j])
        out["distance_px"].append(float(np.hypot(xx + 0.5 - x, yy + 0.5 - y).min()) if yy.size else float("inf"))
    return out


def score(truth: dict, tracks: np.ndarray, vis: np.ndarray, HW) -> dict:
    moving = truth["eval_mask"] & truth["classes"]["moving_2d"][..., None]
    r = metrics.tapvid_metrics(tracks, vis, truth["tracks"], truth["vis"], HW, moving)
    fm = motion_eval.false_motion_2d(tracks, vis, truth["classes"]["static_2d"], truth["eval_mask"])
    return {"false": int(fm.sum()), "static": int(fm.size), "delta_sum": r["delta_avg"] * r["n_visible"],
            "n_visible": r["n_visible"], "oa_sum": r["oa"] * r["n_points"], "n_points": r["n_points"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source")
    ap.add_argument("--colour", type=float, nargs="*", default=[20.0, 40.0])
    ap.add_argument("--out-json")
    args = ap.parse_args()
    trackers = {"lk (default)": get_tracker("lk"), "surface": SurfaceLKTracker()}
    totals, offences, cpu = {}, [], {}
    for ep in read_episodes(args.source):
        frames = ep.frames[ep.primary_camera]
        anchors = anchor_steps(frames.shape[0], 8)
        anchors = anchors[anchors + 1 < frames.shape[0]]
        truth = _motion_truth(ep, anchors, 20, 32)
        for name, tr in trackers.items():
            t0 = time.process_time()
            tracks, vis = track_anchors(tr, frames, anchors, truth["queries"], 32)
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - t0
            rows = {name: vis}
            if name == "lk (default)":
                offences.append(first_offences(ep, truth, tracks, vis))
                rows.update({f"colour {c:g}": vis & colour_visible(frames, anchors, truth["queries"], tracks, c)
                             for c in args.colour})
            for row, v in rows.items():
                s = score(truth, tracks, v, frames.shape[1:3])
                totals[row] = {k: totals.get(row, {}).get(k, 0) + s[k] for k in s}
    table = {row: {"false_motion": t["false"] / t["static"], "moving_delta_avg": t["delta_sum"] / t["n_visible"],
                   "moving_oa": t["oa_sum"] / t["n_points"], "tracking_cpu_s": cpu.get(row)} for row, t in totals.items()}
    n = sum(o["false"] for o in offences)
    dist = np.concatenate([o["distance_px"] for o in offences])
    sources = {"false_points": n, "other_body_in_window": sum(o["other_body_in_window"] for o in offences) / n,
               "visible_in_truth": sum(o["visible_in_truth"] for o in offences) / n,
               "distance_px_quartiles": np.percentile(dist, [25, 50, 75]).round(2).tolist()}
    for row, t in table.items():
        print(f"{row:14s} false motion {t['false_motion']:.4f}  moving delta_avg {t['moving_delta_avg']:.4f}  "
              f"moving OA {t['moving_oa']:.3f}" + (f"  tracking CPU {t['tracking_cpu_s']:.1f} s" if t["tracking_cpu_s"] else ""))
    print(json.dumps(sources))
    if args.out_json:
        json.dump({"source": args.source, "rows": table, "sources": sources}, open(args.out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
