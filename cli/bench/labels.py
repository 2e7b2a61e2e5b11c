"""`curate bench labels` (accuracy against simulator ground truth) and
`curate bench labelers` (speed per core).

    curate bench labels   [--source SIMULATED_DATASET] [--tasks ...] [--only flow] [--json]
    curate bench labelers [--source SIMULATED_DATASET] [--json]

Without --source both simulate a small Meta-World dataset into a temporary
directory first (scripted experts, 128 px) and read it back through the RLDS
reader, exactly as a curation job would.

Accuracy compares every available backend with the ground truth of
labelers/eval/ground_truth.py on the same query points (a grid on each anchor frame):
optical flow t -> t + gap (EPE and > 3 px share on non-occluded pixels; also
after the motion-image round trip), tracks (TAP-Vid delta_avg / OA / AJ over
in-range steps after the query frame), 3D scene flow with dataset depth (3D
EPE of displacements from the anchor, over point-steps valid in both), and
depth (AbsRel, delta < 1.25). Optional backends run when configured: Depth
Anything (--depth-model), CoTracker (--cotracker-repo/--cotracker-ckpt).

The result records what every row was labelled with (`labelled_with`: {label: {row: {kind:
{backend, params, gap | frame_step}}}}); the dataset card marks the rows of a dataset's own
backends and parameters by it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cli.output import add_report_args, emit, write_bench_json

from curation.formats import format_table, markdown_table
from schemas.triplet import DEFAULT_GRID, DEFAULT_HORIZON, DEFAULT_STRIDE

log = logging.getLogger(__name__)

# The three tasks the CPU defaults were chosen on (cli/bench/motion.CHOICE_TASKS) and five
# held out, with different motion: a hinged door, a pushed puck, a sliding window, a turned
# faucet, and the arm alone.
DEFAULT_TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3",
                 "door-open-v3", "push-v3", "window-close-v3", "faucet-open-v3", "reach-v3"]
# "Moving" pixels: most of a Meta-World frame is static, so the all-pixel numbers are dominated
# by easy zeros; this threshold selects what actually moves in the flow t -> t + gap (tracks and
# 3D points: labelers/eval/motion.py).
MOVING_FLOW_PX = 0.5
# What `--only` can restrict the accuracy bench to.
LABEL_KINDS = ("flow",)
TARGETS = {"flow_epe_px": 1.0, "tracks_delta_avg": 0.80, "median_epe3d_mm": 10.0, "labeling_s": 2.0, "dis_ratio": 0.9}
# Issue 13's goals on moving points (held-out tasks): tracks delta_avg and delta < 1 px, median
# 3D error, false motion on static points (2D), flow EPE on moving pixels at gap 1.
MOVING_TARGETS = {"delta_avg": 0.80, "delta_1": 0.5, "median_mm": 5.0, "false_motion": 0.01, "flow_epe_px": 0.4}
DEFAULT_TRACKER = "lk (default: refined)"
DEFAULT_FLOW = "dis (fine)"  # the row of labelers.flow.DISFlow's default preset (DEFAULT_DIS_PRESET)
GAP_TRACKERS = (DEFAULT_TRACKER, "lk (chain)")  # also scored on the episode re-timed to 1/gap
# Speed of tracking and lifting is timed at the default label config (schemas.triplet).
SPEED_GRID, SPEED_HORIZON, SPEED_STRIDE = DEFAULT_GRID, DEFAULT_HORIZON, DEFAULT_STRIDE
# The labeling_s target is for one 50-step episode at 128 px (the simulator's default bench episode).
TARGET_SIZE_PX, TARGET_STEPS = 128, 50
# Depth Anything is timed on the first frames only (one model batch of its default batch_size).
DEPTH_MODEL_CLIP = 8


def add_bench(bench_sub) -> None:
    p = bench_sub.add_parser("labels", help="label accuracy of every backend vs simulator ground truth")
    _common_args(p)
    p.add_argument("--horizon", type=int, default=32, help="track horizon T (default 32)")
    p.add_argument("--stride", type=int, default=8, help="anchor every N steps (default 8)")
    p.add_argument("--gap", type=int, nargs="+", default=[1, 4, 8],
                   help="optical-flow gaps; the default trackers are also scored at every gap > 1 on the episode re-timed to 1/gap (default 1 4 8)")
    p.add_argument("--grid", type=int, default=20, help="query grid (default 20 -> 400 points)")
    p.add_argument("--depth-model", default=None, help="Depth Anything model dir or id (optional)")
    p.add_argument("--sparse-share", type=float, default=0.01,
                   help="share of dataset-depth pixels given to Depth Anything as metric anchors (default 0.01)")
    p.add_argument("--cotracker-repo", default=os.environ.get("COTRACKER_REPO"), help="CoTracker clone (or $COTRACKER_REPO)")
    p.add_argument("--cotracker-ckpt", default=os.environ.get("COTRACKER_CKPT"), help="CoTracker checkpoint (or $COTRACKER_CKPT)")
    p.add_argument("--only", choices=LABEL_KINDS, default=None,
                   help="score only this kind of label (flow: the optical-flow rows, no trackers or depth)")
    p.add_argument("--trackers", nargs="+", default=None, choices=list(TRACKERS_SCORED), metavar="ROW",
                   help="score only these tracker rows, besides the default (default: all; choices: "
                        + "; ".join(TRACKERS_SCORED) + ")")
    p.add_argument("--card-table", action="store_true",
                   help="also write the result as the accuracy table the dataset card ships with "
                        "(curation/describe/label_accuracy.json; review and commit it like code)")
    add_report_args(p, bench="labels")
    p.set_defaults(func=run_labels)

    q = bench_sub.add_parser("labelers", help="labeler speed (frames/s per core) at 128 and 256 px")
    _common_args(q, default_episodes=1)
    q.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="image sizes to simulate (default 128 256)")
    q.add_argument("--repeats", type=int, default=3, help="timing repeats, the best is kept (default 3)")
    q.add_argument("--depth-model", default=None, help="Depth Anything model dir or id (optional)")
    add_report_args(q, bench="labelers")
    q.set_defaults(func=run_labelers)


def _common_args(p, default_episodes: int = 1) -> None:
    p.add_argument("--source", default=None, help="simulated dataset directory (metaworld_sim/<version>); default: simulate one")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, help=f"tasks to simulate (default {' '.join(DEFAULT_TASKS)})")
    p.add_argument("--episodes", type=int, default=default_episodes, help="episodes per task when simulating / max per task read")
    p.add_argument("--size", type=int, default=128, help="image size when simulating (default 128)")
    p.add_argument("--steps", type=int, default=50, help="steps per simulated episode (default 50)")
    p.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- episodes


def _load_episodes(args, size: int | None = None) -> list:
    """Episodes with ground truth: read --source, or simulate into a temp dir and read back."""
    from curation.sources.rlds import read_episodes
    from schemas.episode import EpisodeError

    source = args.source
    tmp = None
    if source is None:
        from curation.sources.metaworld.rollout import simulate_dataset

        tmp = tempfile.TemporaryDirectory(prefix="bench-labels-")
        size = size or args.size
        print(f"simulating {len(args.tasks)} task(s) x {args.episodes} episode(s), {size} px, {args.steps} steps ...", file=sys.stderr)
        source = simulate_dataset(Path(tmp.name), tasks=list(args.tasks), episodes_per_task=args.episodes, size=size,
                                  max_steps=args.steps, seed=args.seed, progress=True)
    try:
        episodes = list(read_episodes(str(source)))
    except EpisodeError as e:
        raise SystemExit(f"cannot read {source}: {e}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    if not episodes:
        raise SystemExit(f"no episodes in {source}")
    missing = [e.provenance.describe() for e in episodes if e.ground_truth is None]
    if missing:
        raise SystemExit(f"{source}: episodes without simulator ground truth (not a simulated dataset?): {missing[:3]}")
    return episodes


def _task_of(ep) -> str:
    """The Meta-World task of a simulated episode (from its instruction, which the simulator
    derives from the task name)."""
    sim = getattr(ep, "_sim", None)
    if sim:
        return sim["task"]
    from curation.sources.metaworld.rollout import available_tasks, instruction_for

    by_language = {instruction_for(t): t for t in available_tasks()}
    return by_language.get(ep.language, ep.language or ep.provenance.dataset)


def _write_card_table(result: dict) -> Path:
    """The bench result as the package's label-accuracy table (curation.describe.card)."""
    from curation.describe import card
    from curation.formats import to_json

    path = Path(card.__file__).with_name(card.LABEL_ACCURACY)
    path.write_text(to_json(result) + "\n")
    return path


def _pin_one_core() -> str:
    """Pin this process to one core and single-threaded kernels (for 'per core' numbers)."""
    from labelers.threads import limit_threads

    limit_threads(1)
    try:
        core = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {core})
        return f"core {core}"
    except (AttributeError, OSError):
        return "unpinned"


# ---------------------------------------------------------------- accuracy


# The flow backends and trackers scored, by row name: (registry name, parameters as a LabelConfig
# gives them). The result records them per row ("labelled_with"), so that the dataset card can mark
# exactly the rows of the backends and parameters a dataset was labelled with.
FLOW_SCORED = {
    "dis (fine)": ("dis", {"preset": "fine"}),
    "dis (medium)": ("dis", {"preset": "medium"}),
    "dis (fast)": ("dis", {"preset": "fast"}),
    "dis (ultrafast)": ("dis", {"preset": "ultrafast"}),
    "farneback": ("farneback", {}),
}
TRACKERS_SCORED = {
    DEFAULT_TRACKER: ("lk", {}),
    "lk (chain)": ("lk", {"static_anchor": False, "static_step": False, "ref_gap": 0}),
    "lk (static window 3 x 3 at every size)": ("lk", {"static_scale": False}),
    "lk (hybrid)": ("lk", {"mode": "hybrid"}),
    "lk (anchor)": ("lk", {"mode": "anchor"}),
    "lk (chain, grey, 15 px, 3 levels)": ("lk", {"mode": "chain", "color": False, "win_size": 15, "max_level": 3, "fb_threshold_px": 1.0}),
    "flow (dis)": ("flow", {}),
    # the default LK, then the learned refiner (labelers/tracking/learned.py, shipped weights)
    "learned (lk + refiner)": ("learned", {}),
}


def _spec(backend: str, params: dict, **extra) -> dict:
    """One labeler of a scored row: {"backend", "params", ...}; flow rows add "gap", tracker rows
    "frame_step" (1: the episode at its own rate; g: re-timed to every g-th frame)."""
    return {"backend": backend, "params": dict(params), **extra}


def _flow_backends(args) -> dict:
    from labelers.flow import get_flow_backend

    return {name: get_flow_backend(backend, **params) for name, (backend, params) in FLOW_SCORED.items()}


def _trackers(args) -> dict:
    from labelers.tracking.registry import get_tracker

    rows = [n for n in TRACKERS_SCORED if args.trackers is None or n == DEFAULT_TRACKER or n in args.trackers]
    out = {}
    for name in rows:
        backend, params = TRACKERS_SCORED[name]
        out[name] = get_tracker(backend, **params)
    if args.cotracker_repo and args.cotracker_ckpt:
        out["cotracker"] = get_tracker("cotracker", **_cotracker_params(args))
    return out


def _cotracker_params(args) -> dict:
    return {"repo": args.cotracker_repo, "checkpoint": args.cotracker_ckpt}


def _tracker_spec(name: str, args, frame_step: int = 1) -> dict:
    backend, params = ("cotracker", _cotracker_params(args)) if name == "cotracker" else TRACKERS_SCORED[name]
    return _spec(backend, params, frame_step=frame_step)


class _Pool:
    """Accumulates raw per-sample arrays per (label, backend, task) so that metrics pool samples
    (pixels, point-steps), not per-episode averages; `specs` holds what each (label, backend) row
    was labelled with ({LabelConfig kind: _spec}, None for rows of no labeler)."""

    def __init__(self):
        self.data: dict = {}
        self.specs: dict = {}

    def add(self, key, spec: dict | None = None, **arrays):
        self.specs.setdefault(key[:2], spec)
        slot = self.data.setdefault(key, {})
        for k, v in arrays.items():
            slot.setdefault(k, []).append(v)

    def get(self, key, name):
        return np.concatenate(self.data[key][name], axis=0)

    def labelled_with(self) -> dict:
        """{label: {row backend: spec}} of every row pooled from a labeler."""
        out: dict = {}
        for (label, name), spec in self.specs.items():
            if spec is not None:
                out.setdefault(label, {})[name] = spec
        return out


def run_labels(args) -> int:
    from schemas.episode import EpisodeError
    from schemas.progress import progress_bar

    if (args.only or args.trackers) and args.card_table:
        raise SystemExit("bench labels: --card-table needs every kind of label and tracker; drop --only / --trackers")
    episodes = _load_episodes(args)
    backends = _accuracy_backends(args)
    pool = _Pool()
    tasks: list[str] = []
    skipped: list[str] = []
    rng = np.random.default_rng(args.seed)
    t_start = time.time()
    for ep in progress_bar(episodes, desc="bench labels", unit="episode", file=sys.stderr):
        try:
            task = _task_of(ep)
            if task not in tasks:
                tasks.append(task)
            _score_episode(pool, ep, task, backends, args, rng)
        except EpisodeError as e:  # one bad episode is reported, not fatal
            log.warning("bench labels: skipped %s", e)
            skipped.append(str(e))

    if len(skipped) == len(episodes):
        raise SystemExit(f"bench labels: every episode failed; first: {skipped[0]}")
    result = _summarise_labels(pool, tasks, args, len(episodes) - len(skipped), time.time() - t_start)
    result["skipped"] = skipped
    path = write_bench_json("labels", result, args.out_json)
    table = _write_card_table(result) if args.card_table else None
    emit(result, args.json, _labels_text(result) + f"\n\nwrote {path}" + (f" and {table}" if table else ""))
    return 0


def _accuracy_backends(args) -> dict:
    """{"flow": {row name: backend}, "tracks": {...}, "depth": {...}}: every backend scored."""
    from labelers.depth import DatasetDepth, get_depth_backend

    if args.only == "flow":
        return {"flow": _flow_backends(args)}
    depth_backends = {"dataset": DatasetDepth()}
    if args.depth_model:
        depth_backends["depth-anything"] = get_depth_backend("depth-anything", model=args.depth_model)
    return {"flow": _flow_backends(args), "tracks": _trackers(args), "depth": depth_backends}


def _score_episode(pool: _Pool, ep, task: str, backends: dict, args, rng) -> None:
    """Every backend on one episode, its per-sample errors added to `pool`."""
    from labelers.flow import to_gray
    from labelers.sceneflow import intrinsics_or_estimate
    from schemas.triplet import anchor_steps

    cam = ep.primary_camera
    frames = ep.frames[cam]
    n, H, W = frames.shape[:3]
    intr = intrinsics_or_estimate(ep.intrinsics.get(cam), H, W)
    anchors = anchor_steps(n, args.stride)
    anchors = anchors[anchors + 1 < n]  # every evaluated anchor has a next step
    grays = [to_gray(f) for f in frames]
    _score_flow(pool, ep, task, backends["flow"], grays, anchors, args.gap)
    if args.only == "flow":
        return
    truth = _motion_truth(ep, anchors, args.grid, args.horizon)
    for name, tr in backends["tracks"].items():
        _score_tracker(pool, ep, task, name, tr, truth, intr, args)
    depth = ep.depth_m.get(cam)
    if depth is not None:
        _score_true_tracks_lifted(pool, task, truth, depth, intr)
        _score_depth(pool, task, backends["depth"], frames, depth, args.sparse_share, rng, args.depth_model)


def _score_flow(pool: _Pool, ep, task: str, flows: dict, grays: list, anchors: np.ndarray, gaps: list[int]) -> None:
    """Optical flow anchor -> anchor + gap of every backend at every gap, on non-occluded pixels
    (all, and moving), and for the default DIS also after the motion-image round trip."""
    from labelers.eval import ground_truth as gt
    from labelers.flow import decode_motion_image, encode_motion_image

    n = len(grays)
    for gap, a in ((g, a) for g in gaps for a in anchors if a + g < n):
        true_flow, valid = gt.true_optical_flow(ep, int(a), gap)
        with np.errstate(invalid="ignore"):
            moving = np.linalg.norm(true_flow, axis=-1) >= MOVING_FLOW_PX
        for backend, be in flows.items():
            name = backend if gap == 1 else f"{backend} [gap {gap}]"
            spec = {"flow": _spec(*FLOW_SCORED[backend], gap=gap)}
            pred = be.flow_gray(grays[a], grays[a + gap])
            err_map = np.linalg.norm(pred - true_flow, axis=-1)
            pool.add(("flow", name, task), spec, err=err_map[valid])
            pool.add(("flow", name + " [moving]", task), spec, err=err_map[valid & moving])
            if name == DEFAULT_FLOW:
                dec = decode_motion_image(encode_motion_image(pred))
                pool.add(("flow", name + " via motion image", task), spec, err=np.linalg.norm(dec - true_flow, axis=-1)[valid])


def _motion_truth(ep, anchors: np.ndarray, grid: int, horizon: int) -> dict:
    """The simulator's tracks and 3D points of the grid queries from every anchor, the evaluation
    mask and the moving / static classes of the queries."""
    from labelers.eval import ground_truth as gt
    from labelers.eval import motion as motion_eval
    from labelers.tracking.common import grid_queries

    frames = ep.frames[ep.primary_camera]
    n, H, W = frames.shape[:3]
    queries = grid_queries(H, W, grid)
    truth = [gt.true_tracks(ep, int(a), queries, horizon) for a in anchors]
    tracks = np.stack([t[0] for t in truth])  # N K T 2
    vis = np.stack([t[1] for t in truth])  # N K T
    in_range = np.stack([t[2] for t in truth])  # N T
    sf_truth = [gt.true_scene_flow(ep, int(a), queries, horizon) for a in anchors]
    pts = np.stack([s[0] for s in sf_truth])  # N K T 3
    pts_valid = np.stack([s[1] for s in sf_truth])  # N K T
    # Evaluated: in-range steps after the query frame, of queries whose true motion is known
    # (a query on the background has no body to follow, like an unannotated TAP-Vid point).
    eval_mask = np.broadcast_to(in_range[:, None, :], vis.shape).copy()
    eval_mask &= np.isfinite(tracks[:, :, :1, 0])
    eval_mask[..., 0] = False
    steps = anchors[:, None] + np.arange(horizon)[None, :]
    return {"anchors": anchors, "queries": queries, "tracks": tracks, "vis": vis, "pts": pts, "pts_valid": pts_valid,
            "eval_mask": eval_mask, "classes": motion_eval.motion_classes(tracks, in_range, pts, pts_valid),  # N K each
            "frame_index": np.where(steps < n, steps, -1)[:, None, :]}


def _score_tracker(pool: _Pool, ep, task: str, name: str, tracker, truth: dict, intr, args) -> None:
    """One tracker on one episode: TAP-Vid inputs (all and moving queries), its 3D lift with
    dataset depth, false motion, and the re-timed episode for GAP_TRACKERS."""
    from cli.bench import motion as bench_motion
    from labelers.eval import metrics
    from labelers.episode_labeler import LabelConfig
    from labelers.sceneflow import lift_tracks
    from labelers.tracking.common import track_anchors

    frames = ep.frames[ep.primary_camera]
    H, W = frames.shape[1:3]
    eval_mask, gt_pts, gt_pts_valid = truth["eval_mask"], truth["pts"], truth["pts_valid"]
    moving_2d, moving_3d = truth["classes"]["moving_2d"], truth["classes"]["moving_3d"]
    tracks, vis = track_anchors(tracker, frames, truth["anchors"], truth["queries"], args.horizon)
    to256 = np.array([256.0 / W, 256.0 / H], np.float32)  # TAP-Vid scale, so that sizes can be pooled
    pred, gt_tracks = tracks * to256, truth["tracks"] * to256
    spec = {"tracker": _tracker_spec(name, args)}
    pool.add(("tracks", name, task), spec, pred=pred, pvis=vis, gt=gt_tracks, gvis=truth["vis"], mask=eval_mask)
    pool.add(("tracks", name + " [moving]", task), spec, pred=pred, pvis=vis, gt=gt_tracks, gvis=truth["vis"],
             mask=eval_mask & moving_2d[..., None])
    sf = None
    depth = ep.depth_m.get(ep.primary_camera)
    if depth is not None:
        sf = lift_tracks(tracks, vis, depth, intr, frame_index=truth["frame_index"],
                         max_depth_jump_rel=LabelConfig().depth_jump_rel(ep.control_hz))
        both = sf.valid_3d & gt_pts_valid
        err = metrics.scene_flow_errors_m(sf.points_cam_m, gt_pts, both)
        spec = {**spec, "depth": _spec("dataset", {})}
        pool.add(("sceneflow", f"{name} + dataset depth", task), spec, err=err,
                 covered=np.array([both[..., 1:].sum()]), total=np.array([gt_pts_valid[..., 1:].sum()]))
        both_m = both & moving_3d[..., None]
        pool.add(("sceneflow", f"{name} + dataset depth [moving]", task), spec,
                 err=metrics.scene_flow_errors_m(sf.points_cam_m, gt_pts, both_m),
                 covered=np.array([both_m[..., 1:].sum()]), total=np.array([(gt_pts_valid & moving_3d[..., None])[..., 1:].sum()]))
    bench_motion.add_false_motion(pool, name, task, tracks, vis, truth["classes"], eval_mask, sf)
    if name in GAP_TRACKERS:
        bench_motion.add_gap_tracks(pool, ep, tracker, name, task, [g for g in args.gap if g > 1], args.stride, args.horizon,
                                    truth["queries"], spec=lambda g: {"tracker": _tracker_spec(name, args, frame_step=g)})


def _score_true_tracks_lifted(pool: _Pool, task: str, truth: dict, depth: np.ndarray, intr) -> None:
    """Depth sampling alone: the true tracks lifted with dataset depth."""
    from labelers.eval import metrics
    from labelers.sceneflow import lift_tracks

    sf = lift_tracks(truth["tracks"], truth["vis"], depth, intr, frame_index=truth["frame_index"])
    both = sf.valid_3d & truth["pts_valid"]
    pool.add(("sceneflow", "true tracks + dataset depth", task), err=metrics.scene_flow_errors_m(sf.points_cam_m, truth["pts"], both),
             covered=np.array([both[..., 1:].sum()]), total=np.array([truth["pts_valid"][..., 1:].sum()]))


def _score_depth(pool: _Pool, task: str, depth_backends: dict, frames: np.ndarray, depth: np.ndarray,
                 sparse_share: float, rng, model: str | None) -> None:
    """Every depth backend against the simulator's depth (the dataset backend must reproduce it;
    Depth Anything gets `sparse_share` of its pixels as metric anchors)."""
    from labelers.eval import metrics

    for name, be in depth_backends.items():
        anchors_depth = depth
        if name == "depth-anything":
            anchors_depth = np.where(rng.random(depth.shape) < sparse_share, depth, np.nan).astype(np.float32)
        res = be(frames, anchors_depth)
        m = metrics.depth_metrics(res.depth_m, depth) if res.depth_m is not None else {"abs_rel": float("nan"), "delta_1.25": float("nan"), "coverage": 0.0}
        spec = {"depth": _spec(name, {"model": model} if name == "depth-anything" else {})}
        pool.add(("depth", f"{name} ({res.kind})", task), spec, abs_rel=np.array([m["abs_rel"]]), d125=np.array([m["delta_1.25"]]),
                 coverage=np.array([m["coverage"]]))


def _summarise_labels(pool: _Pool, tasks: list[str], args, n_episodes: int, seconds: float) -> dict:
    from cli.bench import motion as bench_motion
    from labelers.eval import metrics

    rows = {"flow": [], "tracks": [], "sceneflow": [], "depth": []}
    names: dict = {}
    for (label, name, task) in pool.data:
        names.setdefault(label, [])
        if name not in names[label]:
            names[label].append(name)
    for label in rows:
        for name in names.get(label, []):
            for task in [*tasks, "all"]:
                keys = [(label, name, t) for t in (tasks if task == "all" else [task]) if (label, name, t) in pool.data]
                if not keys:
                    continue

                def cat(field):
                    return np.concatenate([pool.get(k, field) for k in keys], axis=0)

                row = {"backend": name, "task": task}
                if label == "flow":
                    err = cat("err")
                    if err.size:
                        row.update(epe_px=float(err.mean()), median_epe_px=float(np.median(err)),
                                   outlier_3px=float((err > 3).mean()), n_pixels=int(err.size))
                    else:
                        row.update(epe_px=float("nan"), median_epe_px=float("nan"), outlier_3px=float("nan"), n_pixels=0)
                elif label == "tracks":
                    m = metrics.tapvid_metrics(cat("pred"), cat("pvis"), cat("gt"), cat("gvis"), (256, 256), eval_mask=cat("mask"))
                    row.update(delta_avg=m["delta_avg"], oa=m["oa"], aj=m["aj"], delta_1=m["delta_1"], delta_4=m["delta_4"],
                               n_visible=m["n_visible"])
                elif label == "sceneflow":
                    err = cat("err")
                    row.update(median_epe3d_mm=float(np.median(err) * 1000) if err.size else float("nan"),
                               mean_epe3d_mm=float(err.mean() * 1000) if err.size else float("nan"),
                               under_1cm=float((err < 0.01).mean()) if err.size else float("nan"),
                               coverage=float(cat("covered").sum() / max(cat("total").sum(), 1)), n_points=int(err.size))
                else:
                    row.update(abs_rel=float(np.nanmean(cat("abs_rel"))), delta_125=float(np.nanmean(cat("d125"))),
                               coverage=float(np.mean(cat("coverage"))))
                rows[label].append(row)
    overall = {r["backend"]: r for label in rows for r in rows[label] if r["task"] == "all"}
    headline = bench_motion.headline_rows(pool, tasks)
    flow_moving = bench_motion.flow_moving_rows(pool, tasks)
    targets = {
        "flow_epe_px (dis, < 1.0)": _target(overall.get(DEFAULT_FLOW, {}).get("epe_px"), TARGETS["flow_epe_px"], below=True),
        "tracks_delta_avg (lk, >= 0.80)": _target(overall.get(DEFAULT_TRACKER, {}).get("delta_avg"), TARGETS["tracks_delta_avg"], below=False),
        "median_epe3d_mm (lk + dataset depth, < 10)": _target(
            overall.get(f"{DEFAULT_TRACKER} + dataset depth", {}).get("median_epe3d_mm"), TARGETS["median_epe3d_mm"], below=True),
    }
    return {
        "bench": "labels",
        "episodes": n_episodes,
        "tasks": tasks,
        "image_size": args.size,
        "config": {"horizon": args.horizon, "stride": args.stride, "gap": args.gap, "grid": args.grid, "only": args.only},
        "choice_tasks": [t for t in tasks if t in bench_motion.CHOICE_TASKS],
        "seconds": seconds,
        "moving_points": headline,
        "flow_moving_pixels": flow_moving,
        "flow": rows["flow"],
        "tracks": rows["tracks"],
        "sceneflow": rows["sceneflow"],
        "depth": rows["depth"],
        "targets": targets,
        "moving_targets": _moving_targets(headline, flow_moving),
        "labelled_with": pool.labelled_with(),
    }


def _moving_targets(headline: list[dict], flow_rows: list[dict]) -> dict:
    """Issue 13's moving-point goals for the default tracker and DIS, on the held-out tasks
    (all tasks when every task was a choice task)."""
    from cli.bench.motion import HELD_OUT

    group = HELD_OUT if any(r["task"] == HELD_OUT for r in [*headline, *flow_rows]) else "all"
    row = next((r for r in headline if r["backend"] == DEFAULT_TRACKER and r["task"] == group), {})
    flow = next((r for r in flow_rows if r["backend"] == f"{DEFAULT_FLOW} [moving]" and r["task"] == group), {})
    t = MOVING_TARGETS
    return {
        f"moving delta_avg ({group}, >= {t['delta_avg']})": _target(row.get("moving_delta_avg"), t["delta_avg"], below=False),
        f"moving delta < 1 px ({group}, >= {t['delta_1']})": _target(row.get("moving_delta_1"), t["delta_1"], below=False),
        f"moving median 3D mm ({group}, < {t['median_mm']})": _target(row.get("moving_median_mm"), t["median_mm"], below=True),
        f"false motion ({group}, < {t['false_motion']})": _target(row.get("false_motion"), t["false_motion"], below=True),
        f"flow EPE moving px, gap 1 ({group}, < {t['flow_epe_px']})": _target(flow.get("epe_px"), t["flow_epe_px"], below=True),
    }


def _target(value, bound, below: bool) -> dict:
    if value is None or not np.isfinite(value):
        return {"value": None, "target": bound, "met": False}
    return {"value": float(value), "target": bound, "met": bool(value < bound if below else value >= bound)}


def _labels_text(result: dict) -> str:
    parts = [f"label accuracy vs simulator ground truth: {result['episodes']} episode(s), tasks {', '.join(result['tasks'])}, "
             f"{result['image_size']} px, {result['config']}; defaults chosen on {', '.join(result['choice_tasks']) or 'none of these'}"]
    if result["moving_points"]:
        parts += ["", "moving points first: tracks (TAP-Vid, 256 px scale), 3D (dataset depth), false motion on static points",
                  format_table(result["moving_points"])]
    if result["flow_moving_pixels"]:
        parts += ["", "optical flow on moving pixels, every gap", format_table(result["flow_moving_pixels"])]
    for label, title in (("flow", "optical flow (non-occluded pixels)"), ("tracks", "point tracks (TAP-Vid, 256 px scale)"),
                         ("sceneflow", "3D scene flow (displacement from anchor)"), ("depth", "depth")):
        if result[label]:
            parts += ["", title, format_table(result[label])]
    parts += ["", "targets (CPU defaults)", *_target_lines(result["targets"])]
    parts += ["", f"moving-point goals (issue 13; default tracker and {DEFAULT_FLOW})", *_target_lines(result["moving_targets"])]
    parts += ["", "markdown:"]
    if result["moving_points"]:
        parts += ["", markdown_table([r for r in result["moving_points"] if r["task"] in ("all", "held-out")])]
    if result["flow_moving_pixels"]:
        parts += ["", markdown_table(result["flow_moving_pixels"])]
    for label in ("flow", "tracks", "sceneflow", "depth"):
        if result[label]:
            parts += ["", markdown_table([r for r in result[label] if r["task"] == "all"] or result[label])]
    return "\n".join(parts)


def _target_lines(targets: dict) -> list[str]:
    """One line per target: its value and whether it is met ("not measured" without a value)."""
    return [f"  {k}: not measured" if v["value"] is None else f"  {k}: {round(v['value'], 3)} -> {'met' if v['met'] else 'NOT met'}"
            for k, v in targets.items()]


# ---------------------------------------------------------------- speed


class _Clock:
    """Best-of-N timings of the pinned process: CPU seconds (process_time) and wall seconds.

    Per-core speed is reported from CPU seconds: on a shared machine the wall
    clock also counts the time other processes held our core; both are kept."""

    def __init__(self):
        self.wall: dict = {}

    def best(self, fn, repeats: int) -> float:
        best_cpu, best_wall = float("inf"), float("inf")
        for _ in range(max(repeats, 1)):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            best_cpu = min(best_cpu, time.process_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - w0)
        self.last_wall = best_wall
        return best_cpu


_clock = _Clock()


def _best_time(fn, repeats: int) -> float:
    return _clock.best(fn, repeats)


def run_labelers(args) -> int:
    from schemas.progress import progress_bar

    from labelers.depth import get_depth_backend

    pinned = _pin_one_core()
    rows, whole = [], []
    ratio = None
    by_size = _speed_episodes(args)
    depth_model = get_depth_backend("depth-anything", model=args.depth_model) if args.depth_model else None
    for size in progress_bar(list(by_size), desc="bench labelers", file=sys.stderr):
        timings = _SpeedRows(rows, size)
        ep = by_size[size]
        _time_depth(timings, ep, depth_model, args.repeats)
        medium = _time_flow(timings, ep, args.repeats)
        ratio = ratio or {}
        ratio[size] = medium
        _time_tracking(timings, ep, args.repeats)
        whole.append(_time_whole_episode(timings, ep, args.repeats))
    result = {
        "bench": "labelers",
        "pinned": pinned,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "episode": whole,
        "dis_ratio_ours_over_bare": ratio,
        "targets": {"labeling_s_128px_50steps": TARGETS["labeling_s"], "dis_ratio": TARGETS["dis_ratio"]},
    }
    path = write_bench_json("labelers", result, args.out_json)
    emit(result, args.json, _labelers_text(result, args.repeats) + f"\n\nwrote {path}")
    return 0


def _speed_episodes(args) -> dict:
    """{image size: one episode}: from --source (its sizes), else one simulated per --sizes."""
    from schemas.progress import progress_bar

    if args.source:
        episodes = _load_episodes(args)
        sizes = sorted({e.frames[e.primary_camera].shape[1] for e in episodes})
        return {s: next(e for e in episodes if e.frames[e.primary_camera].shape[1] == s) for s in sizes}
    from curation.sources.metaworld.rollout import rollout_episode

    return {s: rollout_episode(args.tasks[0], seed=args.seed, size=s, max_steps=args.steps)
            for s in progress_bar(list(args.sizes), desc="simulate", file=sys.stderr)}


class _SpeedRows:
    """Appends the timing rows of one image size to `rows`."""

    def __init__(self, rows: list, size: int):
        self.rows, self.size = rows, size

    def add(self, labeler: str, backend: str, seconds: float, units: int, unit_name: str, wall: float | None = None) -> None:
        wall = _clock.last_wall if wall is None else wall
        self.rows.append({"size_px": self.size, "labeler": labeler, "backend": backend, "cpu_s": seconds, "wall_s": wall,
                          "per_s": units / seconds if seconds > 0 else float("nan"),
                          "per_s_wall": units / wall if wall > 0 else float("nan"), "unit": unit_name})


def _time_depth(timings: _SpeedRows, ep, depth_model, repeats: int) -> None:
    from labelers.depth import DatasetDepth

    cam = ep.primary_camera
    frames = ep.frames[cam]
    n = frames.shape[0]
    dd = DatasetDepth()
    timings.add("depth", "dataset", _best_time(lambda: dd(frames, ep.depth_m.get(cam)), repeats), n, "frames")
    if depth_model is not None:
        clip = frames[: min(n, DEPTH_MODEL_CLIP)]
        timings.add("depth", "depth-anything", _best_time(lambda: depth_model(clip, ep.depth_m.get(cam)[: len(clip)]), 1),
                    len(clip), "frames")


def _time_flow(timings: _SpeedRows, ep, repeats: int) -> float:
    """Optical flow: bare cv2 DIS vs our backend on the same RGB frames (colour conversion included
    in both) for every named DIS preset, Farneback, the motion-image encoding. Returns bare / ours
    for the default preset."""
    import cv2

    from labelers.flow import DEFAULT_DIS_PRESET, DIS_PRESETS, DISFlow, encode_motion_image, get_flow_backend, to_gray

    frames = ep.frames[ep.primary_camera]
    pairs = frames.shape[0] - 1
    grays = [to_gray(f) for f in frames]
    default_ratio = float("nan")
    for preset in DIS_PRESETS:
        ours = DISFlow(preset=preset)
        bare = _bare_dis(ours)

        def run_bare():
            for t in range(pairs):
                bare.calc(cv2.cvtColor(frames[t], cv2.COLOR_RGB2GRAY), cv2.cvtColor(frames[t + 1], cv2.COLOR_RGB2GRAY), None)

        def run_ours():
            for t in range(pairs):
                ours(frames[t], frames[t + 1])

        tb = _best_time(run_bare, repeats)
        tb_wall = _clock.last_wall
        to = _best_time(run_ours, repeats)
        timings.add("flow", f"cv2 DIS {preset} (bare)", tb, pairs, "frame pairs", wall=tb_wall)
        timings.add("flow", f"dis {preset}", to, pairs, "frame pairs")
        if preset == DEFAULT_DIS_PRESET:
            default_ratio = tb / to
    fb = get_flow_backend("farneback")
    timings.add("flow", "farneback", _best_time(lambda: [fb.flow_gray(grays[t], grays[t + 1]) for t in range(pairs)], 1),
                pairs, "frame pairs")
    flow0 = DISFlow().flow_gray(grays[0], grays[1])
    timings.add("motion image", "encode", _best_time(lambda: [encode_motion_image(flow0) for _ in range(pairs)], repeats),
                pairs, "images")
    return default_ratio


def _bare_dis(ours):
    """A cv2 DIS object with the settings of our backend `ours`, built from cv2 alone (its preset
    and setters), for the overhead comparison."""
    import cv2

    from labelers.flow import DIS_PRESETS

    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    bare = cv2.DISOpticalFlow_create(presets[DIS_PRESETS[ours.preset][0]])
    for key, value in ours.settings().items():
        getattr(bare, "set" + "".join(w.capitalize() for w in key.split("_")))(value)
    return bare


def _time_tracking(timings: _SpeedRows, ep, repeats: int) -> None:
    """Tracking at the default label config (SPEED_GRID^2 points, SPEED_HORIZON steps, anchors every
    SPEED_STRIDE): frames of the episode per second; then lifting the default tracks to 3D."""
    from labelers.sceneflow import intrinsics_or_estimate, lift_tracks
    from labelers.tracking.common import grid_queries
    from labelers.tracking.registry import get_tracker
    from schemas.triplet import anchor_steps

    cam = ep.primary_camera
    frames = ep.frames[cam]
    n, H, W = frames.shape[:3]
    anchors = anchor_steps(n, SPEED_STRIDE)
    q = grid_queries(H, W, SPEED_GRID)
    plain = get_tracker("lk", static_anchor=False, static_step=False, ref_gap=0)
    for label, tr in ((DEFAULT_TRACKER, get_tracker("lk")), ("lk (chain)", plain), ("lk (hybrid)", get_tracker("lk", mode="hybrid")),
                      ("flow (dis)", get_tracker("flow")), ("learned (lk + refiner)", get_tracker("learned", threads=1))):
        timings.add("tracks", f"{label}, {SPEED_GRID ** 2} pts x {SPEED_HORIZON}, stride {SPEED_STRIDE}",
                    _best_time(lambda: tr.track_anchors(frames, anchors, q, SPEED_HORIZON), 1), n, "frames")
    tracks, vis = get_tracker("lk").track_anchors(frames, anchors, q, SPEED_HORIZON)
    steps = anchors[:, None] + np.arange(SPEED_HORIZON)[None]
    fi = np.where(steps < n, steps, -1)[:, None, :]
    intr = intrinsics_or_estimate(ep.intrinsics.get(cam), H, W)
    depth = ep.depth_m.get(cam)
    timings.add("scene flow", "lift (bilinear depth)", _best_time(lambda: lift_tracks(tracks, vis, depth, intr, frame_index=fi), repeats),
                n, "frames")


def _time_whole_episode(timings: _SpeedRows, ep, repeats: int) -> dict:
    """The whole label stage at the default config, after one warm-up call."""
    from labelers.episode_labeler import EpisodeLabeler, LabelConfig

    n = ep.frames[ep.primary_camera].shape[0]
    labeler = EpisodeLabeler(LabelConfig())
    labeler(ep)  # warm-up
    t_whole = _best_time(lambda: labeler(ep), repeats)
    timings.add("episode", "EpisodeLabeler (default config)", t_whole, n, "frames")
    on_target = timings.size == TARGET_SIZE_PX and n == TARGET_STEPS
    return {"size_px": timings.size, "steps": n, "cpu_s": t_whole, "wall_s": _clock.last_wall, "frames_per_s": n / t_whole,
            "target_s": TARGETS["labeling_s"] if on_target else None,
            "met_cpu": bool(t_whole < TARGETS["labeling_s"]) if on_target else None}


def _labelers_text(result: dict, repeats: int) -> str:
    rows, whole, ratio = result["rows"], result["episode"], result["dis_ratio_ours_over_bare"]
    return "\n".join([
        f"labeler speed, one core ({result['pinned']}); per_s from CPU seconds of the process (best of {repeats}), wall also shown",
        format_table(rows, ["size_px", "labeler", "backend", "per_s", "unit", "cpu_s", "wall_s", "per_s_wall"], floatfmt=".3f"),
        "",
        f"whole labeling of one episode (dataset depth, LK {SPEED_GRID ** 2} pts x {SPEED_HORIZON} every {SPEED_STRIDE} steps, "
        "DIS flow, lifting)",
        format_table(whole),
        "",
        f"DIS (default preset) inside our backend / bare cv2 DIS (speed ratio, target >= {TARGETS['dis_ratio']}): "
        + ", ".join(f"{s} px {r:.3f}" for s, r in (ratio or {}).items()),
        "",
        "markdown:",
        markdown_table(rows, ["size_px", "labeler", "backend", "per_s", "unit", "cpu_s", "wall_s"]),
        "",
        markdown_table(whole),
    ])
