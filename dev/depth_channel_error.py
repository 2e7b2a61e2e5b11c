"""How wrong is the depth channel of our uvd motion labels, and what would a tighter depth-jump
mask buy? Compares a dataset curated with our labels against the same episodes curated with the
simulator's motion (`--set labels.motion_source=ground_truth`), anchor by anchor:

    python dev/depth_channel_error.py OURS_DIR TRUTH_DIR [--episodes 20] [--thresholds 0.2 0.05 0.02] [--json]

For each relative depth-jump threshold (labelers/sceneflow.depth_jump_mask, applied on top of what
the curation already masked), the error of d - d(anchor) against the truth on every kept
point-step and on moving ones (true 2D motion >= 1 px within the horizon), the share of large
errors (> 5 cm) and the share of point-steps the mask costs. Read only; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import open_dataset  # noqa: E402
from labelers.sceneflow import depth_jump_mask  # noqa: E402


def relative_depth(motion: dict) -> tuple[np.ndarray, np.ndarray]:
    """(d - d at the anchor step, K T; valid K T: visible, in range and lifted here and at the anchor)."""
    d = motion["depth_track_m"].astype(np.float64)
    ok = motion["visible"] & motion["in_range"] & motion["valid_3d"]
    return d - d[:, :1], ok


def measure(ours_dir: str, truth_dir: str, episodes: int, thresholds: list[float]) -> dict:
    ours, truth = open_dataset(ours_dir), open_dataset(truth_dir)
    ids = ours.manifest.column("episode_id").to_pylist()
    picked = ids[:: max(1, len(ids) // episodes)][:episodes]
    mine = {(t.episode_id, t.anchor): t.motion for t in ours.iter_triplets(episodes=picked)}
    acc = {thr: {"err": [], "true": [], "moving": [], "base": 0} for thr in thresholds}
    for t in truth.iter_triplets(episodes=picked):
        m = mine.get((t.episode_id, t.anchor))
        if m is None:
            continue
        d, base = relative_depth(m)
        gd, gok = relative_depth(t.motion)
        g2d = t.motion["tracks_px"]
        moving = np.linalg.norm(g2d - g2d[:, :1], axis=-1).max(1, keepdims=True) >= 1.0
        moving = np.broadcast_to(moving, base.shape)
        for thr, a in acc.items():
            ok = depth_jump_mask(m["depth_track_m"], base, thr) & base[:, :1] & gok & gok[:, :1]
            a["err"].append((d - gd)[ok])
            a["true"].append(gd[ok])
            a["moving"].append(moving[ok])
            a["base"] += int((base & base[:, :1] & gok & gok[:, :1]).sum())
    rows = []
    for thr, a in acc.items():
        err, true, mov = (np.concatenate(a[k]) for k in ("err", "true", "moving"))
        rows.append({"max_depth_jump_rel": thr, "point_steps": int(err.size), "moving_point_steps": int(mov.sum()),
                     "masked_share": 1.0 - err.size / max(a["base"], 1),
                     "rms_mm_all": 1000 * float(np.sqrt(np.mean(err ** 2))), "truth_std_mm_all": 1000 * float(true.std()),
                     "rms_mm_moving": 1000 * float(np.sqrt(np.mean(err[mov] ** 2))),
                     "truth_std_mm_moving": 1000 * float(true[mov].std()),
                     "median_mm_moving": 1000 * float(np.median(np.abs(err[mov]))),
                     "share_over_5cm": float(np.mean(np.abs(err) > 0.05))})
    return {"ours": ours_dir, "truth": truth_dir, "episodes": len(picked), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours")
    ap.add_argument("truth")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.2, 0.05, 0.02])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = measure(args.ours, args.truth, args.episodes, args.thresholds)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['episodes']} episodes")
    for r in result["rows"]:
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
