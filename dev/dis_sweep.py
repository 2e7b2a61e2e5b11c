"""Sweep OpenCV DIS parameters against simulator ground truth: EPE on moving pixels (true flow
>= 0.5 px, non-occluded) at several gaps, and CPU ms per frame pair on one core.

    taskset -c 0 python dev/dis_sweep.py SIMULATED_DATASET --out sweep.json \
        [--tasks pick-place-v3 ...] [--grid single|combined|finalists|256] [--config NAME:key=value,...]

By default it scores the choice tasks only (cli/bench/motion.CHOICE_TASKS), on the anchors of
`curate bench labels` (every --stride steps, a + gap inside the episode), so that a configuration
is chosen without the held-out tasks. Without --config it runs a built-in grid (GRIDS).
Each configuration is a labelers.flow.DISFlow (preset + setter overrides, optional `upscale`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

# The configurations swept, on top of OpenCV's medium preset (name -> DISFlow arguments).
FINE = {"preset": "medium", "finest_scale": 0}
GRID = {
    "medium": {"preset": "medium"},
    "fast": {"preset": "fast"},
    "medium, finest 0": FINE,
    **{f"finest 0, patch {p} stride {s}": {**FINE, "patch_size": p, "patch_stride": s}
       for p, s in ((6, 2), (8, 2), (8, 4), (10, 3), (12, 4), (12, 3), (16, 4))},
    **{f"finest 0, gd {g}": {**FINE, "gradient_descent_iterations": g} for g in (12, 50, 100)},
    **{f"finest 0, vr iters {v}": {**FINE, "variational_refinement_iterations": v} for v in (0, 10, 20)},
    **{f"finest 0, vr alpha {a}": {**FINE, "variational_refinement_alpha": a} for a in (5.0, 10.0, 40.0)},
    **{f"finest 0, vr delta {d}": {**FINE, "variational_refinement_delta": d} for d in (1.0, 2.0, 10.0)},
    **{f"finest 0, vr gamma {g}": {**FINE, "variational_refinement_gamma": g} for g in (1.0, 5.0, 20.0)},
    "finest 0, no mean normalisation": {**FINE, "use_mean_normalization": False},
    "finest 0, no spatial propagation": {**FINE, "use_spatial_propagation": False},
    "medium, 2x upscaled": {"preset": "medium", "upscale": 2},
    "medium, finest 0, 2x upscaled": {**FINE, "upscale": 2},
}
# The second round: the best single changes combined.
VR20 = {**FINE, "variational_refinement_iterations": 20}
COMBINED = {
    "f0 vr20": VR20,
    **{f"f0 p{p}s{s} vr{v}": {**FINE, "patch_size": p, "patch_stride": s, "variational_refinement_iterations": v}
       for p, s, v in ((12, 4, 10), (12, 4, 20), (12, 3, 10), (12, 3, 20), (10, 3, 20), (8, 2, 20))},
    "f0 vr20 gamma1": {**VR20, "variational_refinement_gamma": 1.0},
    "f0 vr20 alpha40": {**VR20, "variational_refinement_alpha": 40.0},
    "f0 vr20 gd12": {**VR20, "gradient_descent_iterations": 12},
    "f0 vr40": {**FINE, "variational_refinement_iterations": 40},
    "f0 p12s3 vr20 nosp": {**FINE, "patch_size": 12, "patch_stride": 3, "variational_refinement_iterations": 20,
                           "use_spatial_propagation": False},
    "med up2 vr20": {"preset": "medium", "upscale": 2, "variational_refinement_iterations": 20},
    "med up2 p12s4": {"preset": "medium", "upscale": 2, "patch_size": 12, "patch_stride": 4},
}
# The finalists, rerun with anchors every 2 steps (--stride 2) to see that the ranking holds.
FINALISTS = {
    "medium": {"preset": "medium"}, "f0": FINE, "f0 vr20": VR20, "f0 vr20 gd12": COMBINED["f0 vr20 gd12"],
    "f0 p8s2 vr20": COMBINED["f0 p8s2 vr20"], "f0 p12s4 vr10": COMBINED["f0 p12s4 vr10"],
    "f0 p12s3 vr10": COMBINED["f0 p12s3 vr10"],
    "f0 p10s3 vr10": {**FINE, "patch_size": 10, "patch_stride": 3, "variational_refinement_iterations": 10},
}
# At 256 px (choice tasks simulated at 256 px): the chosen preset and its neighbours.
AT_256 = {
    "medium": {"preset": "medium"}, "fine": {"preset": "fine"},
    "medium vr20 (finest 1)": {"preset": "medium", "variational_refinement_iterations": 20}, "f0": FINE,
    "fine p12s4": {"preset": "fine", "patch_size": 12, "patch_stride": 4},
    "fine p16s6": {"preset": "fine", "patch_size": 16, "patch_stride": 6},
    "fine vr10": {"preset": "fine", "variational_refinement_iterations": 10},
    "fine gd50": {"preset": "fine", "gradient_descent_iterations": 50},
}
GRIDS = {"single": GRID, "combined": COMBINED, "finalists": FINALISTS, "256": AT_256}


def parse_config(text: str) -> tuple[str, dict]:
    """'NAME:key=value,key=value' -> (NAME, DISFlow kwargs); values parsed as JSON where they
    can be (numbers, true/false), else kept as strings."""
    name, _, body = text.partition(":")
    params = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value.strip()
    return name, params


def truth_cases(episodes, gaps, stride) -> list[dict]:
    """Per (episode, anchor, gap): grey frames, the true flow and the moving / valid masks."""
    from labelers.eval import ground_truth as gt
    from labelers.flow import to_gray
    from schemas.triplet import anchor_steps

    cases = []
    for ep in episodes:
        frames = ep.frames[ep.primary_camera]
        n = frames.shape[0]
        grays = [to_gray(f) for f in frames]
        anchors = anchor_steps(n, stride)
        for gap in gaps:
            for a in (int(a) for a in anchors if a + gap < n and a + 1 < n):
                flow, valid = gt.true_optical_flow(ep, a, gap)  # H W 2, H W
                with np.errstate(invalid="ignore"):
                    moving = valid & (np.linalg.norm(flow, axis=-1) >= 0.5)
                cases.append({"gap": gap, "g0": grays[a], "g1": grays[a + gap], "flow": flow, "valid": valid, "moving": moving})
    return cases


def score(be, cases, gaps) -> dict:
    """Mean EPE on moving pixels per gap (pooled over pixels) and on all valid pixels at gap 1."""
    errs = {g: [] for g in gaps}
    all_px = []
    for c in cases:
        err = np.linalg.norm(be.flow_gray(c["g0"], c["g1"]) - c["flow"], axis=-1)
        errs[c["gap"]].append(err[c["moving"]])
        if c["gap"] == gaps[0]:
            all_px.append(err[c["valid"]])
    out = {f"moving_epe_gap{g}": float(np.concatenate(errs[g]).mean()) for g in gaps}
    out[f"all_epe_gap{gaps[0]}"] = float(np.concatenate(all_px).mean())
    out["moving_pixels_gap1"] = int(sum(e.size for e in errs[gaps[0]]))
    return out


def ms_per_pair(be, grays, repeats: int) -> float:
    """Best-of-`repeats` CPU ms per consecutive frame pair of one episode."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for t in range(len(grays) - 1):
            be.flow_gray(grays[t], grays[t + 1])
        best = min(best, time.process_time() - t0)
    return 1000.0 * best / (len(grays) - 1)


def main() -> None:
    from cli.bench.labels import _task_of
    from cli.bench.motion import CHOICE_TASKS
    from curation.sources.rlds import read_episodes
    from labelers.flow import DISFlow, to_gray
    from labelers.threads import limit_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--tasks", nargs="+", default=list(CHOICE_TASKS))
    ap.add_argument("--gaps", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--stride", type=int, default=8, help="anchor every N steps (curate bench labels: 8)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="single", help="built-in configurations (default single)")
    ap.add_argument("--config", action="append", default=[], help="NAME:key=value,... (repeat); replaces --grid")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    limit_threads(1)
    episodes = [ep for ep in read_episodes(args.source) if _task_of(ep) in args.tasks]
    if not episodes:
        raise SystemExit(f"no episodes of {args.tasks} in {args.source}")
    cases = truth_cases(episodes, args.gaps, args.stride)
    timing_grays = [to_gray(f) for f in episodes[0].frames[episodes[0].primary_camera]]
    configs = dict(parse_config(c) for c in args.config) if args.config else GRIDS[args.grid]
    rows = []
    for name, params in configs.items():
        be = DISFlow(**params)
        row = {"config": name, "params": params, **score(be, cases, args.gaps), "ms_per_pair": ms_per_pair(be, timing_grays, args.repeats)}
        rows.append(row)
        print(f"{name:45s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    result = {"grid": None if args.config else args.grid, "source": args.source, "tasks": args.tasks, "episodes": len(episodes), "gaps": args.gaps, "stride": args.stride,
              "size_px": int(timing_grays[0].shape[0]), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
