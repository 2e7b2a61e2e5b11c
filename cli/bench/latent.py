"""`curate bench latent`: simulate Meta-World episodes of several tasks, train one small latent
action model on all their training episodes (or take --checkpoint), and score trained vs random
tokens on held-out episodes of each task (one row per task) and on the shared Bridge episodes
(codebook usage, PSNR, action probe with its R^2 per action dimension).

    curate bench latent [--tasks T ...] [--checkpoint RUN_DIR] [--steps N] [--features F] [--set KEY=VALUE ...] [--json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cli.latent_io import load_model, load_store, score_row, set_threads
from cli.output import add_report_args, emit, write_bench_json
from curation.formats import format_table, markdown_table

# Three tasks with different motion: carry and place, push along the table, pull a handle.
BENCH_TASKS = ("pick-place-v3", "push-v3", "drawer-open-v3")
DEFAULT_WORKDIR = ".cache/latent-bench"
BRIDGE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"
SIM_DIMS = ("x", "y", "z", "grip")  # Meta-World actions: end-effector delta x y z, gripper


def add_bench(sub) -> None:
    from labelers.latent.config import PROBE_FEATURES

    p = sub.add_parser(
        "latent", help="latent action tokens: codebook usage, PSNR, action probe vs a random model",
        description="Simulate Meta-World episodes of several tasks (training seeds and held-out seeds), train one "
        "small latent action model on all training episodes (or take --checkpoint), and score it per task on the "
        "held-out episodes and on the shared Bridge episodes against an untrained model of the same architecture.",
    )
    p.add_argument("--checkpoint", default=None, help="score this model on the simulated data instead of training one")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="simulated data and runs (reused when present)")
    p.add_argument("--tasks", nargs="+", default=list(BENCH_TASKS), help=f"Meta-World tasks (default {' '.join(BENCH_TASKS)})")
    p.add_argument("--train-episodes", type=int, default=24, help="simulated training episodes per task (default 24)")
    p.add_argument("--heldout-episodes", type=int, default=12, help="simulated held-out episodes per task, other seeds (default 12)")
    p.add_argument("--max-steps", type=int, default=120, help="steps per simulated episode (default 120)")
    p.add_argument("--steps", type=int, default=1500, help="training steps of the simulated model (default 1500)")
    p.add_argument("--bridge-steps", type=int, default=400, help="training steps of the Bridge model (default 400)")
    p.add_argument("--gap", type=int, default=8, help="gap on simulated data, 80 Hz (default 8)")
    p.add_argument("--bridge-gap", type=int, default=1, help="gap on Bridge, 5 Hz (default 1)")
    p.add_argument("--bridge", default=str(BRIDGE_DIR), help="Bridge dataset directory ('' to skip)")
    p.add_argument("--features", default="codes", choices=PROBE_FEATURES,
                   help="what the probes read (default codes: the best mean of both probes' cv_r2 on the fitting halves)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the `small` preset (labelers/latent/config.py LAMConfig), e.g. "
                   "moving_weight=5; repeatable; the run directory is named by the resulting config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="simulation subprocesses (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    add_report_args(p, bench="latent")
    p.set_defaults(func=cmd_bench_latent)


def _simulated(workdir: Path, name: str, task: str, episodes: int, max_steps: int, seed: int, workers: int) -> Path:
    """Simulate once into workdir/name (reused when the same arguments made it before)."""
    import json

    from curation.sources.metaworld.rollout import simulate_dataset

    root = workdir / f"{name}-{task}"
    marker = root / "bench-args.json"
    want = {"task": task, "episodes": episodes, "max_steps": max_steps, "seed": seed, "size": 64}
    dataset = root / "metaworld_sim" / "1.0.0"
    if marker.exists() and json.loads(marker.read_text()) == want and dataset.is_dir():
        return dataset
    path = simulate_dataset(root, [task], episodes, size=64, max_steps=max_steps, seed=seed, progress=True, workers=workers)
    marker.write_text(json.dumps(want))
    return Path(path)


def _run_dir(workdir: Path, what: str, config, settings, data: dict | None = None) -> Path:
    """Bench run directory, named by the model config, the settings a resume must match and
    the training data (`data`: tasks, episodes), so a changed preset, learning rate or task
    list never resumes an old run (raising --steps does)."""
    import hashlib
    import json
    from dataclasses import asdict

    from labelers.latent.train import _MUST_MATCH

    key = json.dumps({"model": json.loads(config.to_json()),
                      "train": {k: v for k, v in asdict(settings).items() if k in _MUST_MATCH},
                      **({"data": data} if data else {})}, sort_keys=True)
    return workdir / f"run-{what}-gap{settings.gap}-seed{settings.seed}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _train_sim(args, workdir: Path, config, timings: dict):
    """One model on the training episodes of every task -> (model, gap, train info)."""
    from labelers.latent.data import concat_stores
    from labelers.latent.train import TrainSettings, train_lam

    if args.checkpoint:
        model, extra = load_model(args.checkpoint)
        return model, extra.get("gap") or args.gap, {"checkpoint": args.checkpoint}
    t = time.perf_counter()
    stores = []
    for task in args.tasks:
        path = _simulated(workdir, "sim-train", task, args.train_episodes, args.max_steps, args.seed, args.workers)
        stores.append(load_store(str(path), "train", None, config.image_size, None, f"sim train {task}")[0])
    timings["simulate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    settings = TrainSettings(steps=args.steps, gap=args.gap, seed=args.seed, checkpoint_every=250)
    data = {"tasks": list(args.tasks), "episodes": args.train_episodes, "max_steps": args.max_steps}
    run = _run_dir(workdir, "sim", config, settings, data)
    info = train_lam(concat_stores(stores), run, config, settings)
    timings["train_sim_s"] = time.perf_counter() - t
    return load_model(str(run))[0], args.gap, info


def _score(rows: list, details: dict, key: str, label: str, models: dict, store, gap: int, args) -> None:
    from labelers.latent.probe import evaluate

    for name, m in models.items():
        r = evaluate(m, store, gap, seed=args.seed, progress=True, features=args.features)
        rows.append(score_row(label, name, r))
        details[f"{key}/{name}"] = r


def _mean_row(rows: list, model: str, n_tasks: int) -> dict:
    """Mean of the per-task rows of `model` (the figure the goals are stated for, per task)."""
    import numpy as np

    mine = [r for r in rows if r["model"] == model and r["data"].startswith("sim ")]
    out = {"data": f"sim mean over {n_tasks} tasks", "model": model, "pairs": sum(r["pairs"] for r in mine)}
    for k in ("usage", "perplexity", "psnr_recon", "psnr_copy", "psnr_moving_recon", "psnr_moving_copy",
              "probe_r2_linear", "probe_r2_mlp"):
        out[k] = float(np.mean([r[k] for r in mine]))
    for k in ("r2_linear_per_dim", "r2_mlp_per_dim"):
        per = np.array([[np.nan if v == "-" else float(v) for v in r[k].split()] for r in mine])  # tasks dims
        count = np.isfinite(per).sum(0)  # dims
        mean = np.where(count > 0, np.where(np.isfinite(per), per, 0.0).sum(0) / np.maximum(count, 1), np.nan)
        out[k] = " ".join(f"{v:.2f}" if np.isfinite(v) else "-" for v in mean)
    return out


def cmd_bench_latent(args) -> int:
    set_threads(args.threads)
    import torch

    from labelers.latent.config import get_config, parse_overrides
    from labelers.latent.model import LatentActionModel

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    rows, details = [], {}
    try:
        config = get_config("small", **parse_overrides(args.overrides))
        if args.checkpoint and args.overrides:
            raise ValueError("--set changes the model trained here; it does not apply to --checkpoint")
        model, gap, details["sim/train"] = _train_sim(args, workdir, config, timings)
        config = model.config
        torch.manual_seed(args.seed + 12345)
        models = {"trained": model, "random": LatentActionModel(config).eval()}
        for task in args.tasks:  # held out: seeds of `seed + 1000`, never trained on
            held = _simulated(workdir, "sim-heldout", task, args.heldout_episodes, args.max_steps, args.seed + 1000, args.workers)
            store = load_store(str(held), "train", None, config.image_size, None, f"sim held-out {task}")[0]
            _score(rows, details, f"sim/{task}", f"sim {task} held-out (gap {gap})", models, store, gap, args)
        rows += [_mean_row(rows, name, len(args.tasks)) for name in models]
        if args.bridge:  # train on episodes 0:13 of the shared fixture, score on 13:25
            _bridge(args, workdir, config, models["random"], rows, details, timings)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"curate bench latent: error: {e}", file=sys.stderr)
        return 1
    timings["total_s"] = time.perf_counter() - t0
    result = {"rows": rows, "details": details, "timings": timings,
              "settings": {k: v for k, v in vars(args).items() if k != "func"},
              "model_config": __import__("json").loads(config.to_json()),
              "targets": {"probe_r2_mlp": 0.75, "probe_r2_linear": 0.6, "codebook_usage": 0.75}}
    path = write_bench_json("latent", result, args.out_json)
    columns = ["data", "model", "pairs", "usage", "perplexity", "psnr_moving_recon", "psnr_moving_copy",
               "probe_r2_linear", "probe_r2_mlp", "r2_linear_per_dim", "r2_mlp_per_dim"]
    text = (format_table(rows, columns) + "\n\n" + markdown_table(rows, columns, floatfmt=".2f")
            + f"\n\nper-dimension R^2: sim {' '.join(SIM_DIMS)}; probes read {args.features}\n\nwrote {path}")
    emit(result, args.json, text)
    return 0


def _bridge(args, workdir: Path, config, random_model, rows: list, details: dict, timings: dict) -> None:
    from labelers.latent.train import TrainSettings, train_lam

    bstore_train, _, _ = load_store(args.bridge, "train", "0:13", config.image_size, None, "bridge train")
    bstore_held, _, _ = load_store(args.bridge, "train", "13:", config.image_size, None, "bridge held-out")
    t = time.perf_counter()
    bsettings = TrainSettings(steps=args.bridge_steps, gap=args.bridge_gap, seed=args.seed, checkpoint_every=250)
    brun = _run_dir(workdir, "bridge", config, bsettings)
    details["bridge/train"] = train_lam(bstore_train, brun, config, bsettings)
    timings["train_bridge_s"] = time.perf_counter() - t
    models = {"trained": load_model(str(brun))[0], "random": random_model}
    _score(rows, details, "bridge", f"bridge held-out eps 13-24 (gap {args.bridge_gap})", models, bstore_held, args.bridge_gap, args)
