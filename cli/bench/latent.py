"""`curate bench latent`: simulate Meta-World pick-place episodes, train a small latent action model
(or take --checkpoint), and score trained vs random tokens on held-out simulated episodes and on the
shared Bridge episodes (codebook usage, PSNR, action probe).

    curate bench latent [--checkpoint RUN_DIR] [--steps N] [--json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cli.latent_io import load_model, load_store, score_row, set_threads
from cli.output import add_report_args, emit, write_bench_json
from curation.formats import format_table, markdown_table

BENCH_TASK = "pick-place-v3"
DEFAULT_WORKDIR = ".cache/latent-bench"
BRIDGE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"


def add_bench(sub) -> None:
    p = sub.add_parser(
        "latent", help="latent action tokens: codebook usage, PSNR, action probe vs a random model",
        description="Simulate Meta-World pick-place episodes (training seeds and held-out seeds), train a small "
        "latent action model (or take --checkpoint), and score it on the held-out episodes and on the shared "
        "Bridge episodes against an untrained model of the same architecture.",
    )
    p.add_argument("--checkpoint", default=None, help="score this model on the simulated data instead of training one")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="simulated data and runs (reused when present)")
    p.add_argument("--task", default=BENCH_TASK, help=f"Meta-World task (default {BENCH_TASK})")
    p.add_argument("--train-episodes", type=int, default=30, help="simulated training episodes (default 30)")
    p.add_argument("--heldout-episodes", type=int, default=16, help="simulated held-out episodes, other seeds (default 16)")
    p.add_argument("--max-steps", type=int, default=120, help="steps per simulated episode (default 120)")
    p.add_argument("--steps", type=int, default=1500, help="training steps of the simulated model (default 1500)")
    p.add_argument("--bridge-steps", type=int, default=400, help="training steps of the Bridge model (default 400)")
    p.add_argument("--gap", type=int, default=8, help="gap on simulated data, 80 Hz (default 8)")
    p.add_argument("--bridge-gap", type=int, default=1, help="gap on Bridge, 5 Hz (default 1)")
    p.add_argument("--bridge", default=str(BRIDGE_DIR), help="Bridge dataset directory ('' to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="simulation subprocesses (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    add_report_args(p, bench="latent")
    p.set_defaults(func=cmd_bench_latent)


def _simulated(workdir: Path, name: str, task: str, episodes: int, max_steps: int, seed: int, workers: int) -> Path:
    """Simulate once into workdir/name (reused when the same arguments made it before)."""
    import json

    from curation.sources.metaworld.rollout import simulate_dataset

    root = workdir / name
    marker = root / "bench-args.json"
    want = {"task": task, "episodes": episodes, "max_steps": max_steps, "seed": seed, "size": 64}
    dataset = root / "metaworld_sim" / "1.0.0"
    if marker.exists() and json.loads(marker.read_text()) == want and dataset.is_dir():
        return dataset
    path = simulate_dataset(root, [task], episodes, size=64, max_steps=max_steps, seed=seed, progress=True, workers=workers)
    marker.write_text(json.dumps(want))
    return Path(path)


def _run_dir(workdir: Path, what: str, config, settings) -> Path:
    """Bench run directory, named by the model config and the settings a resume must match,
    so a changed preset or learning rate never resumes an old run (raising --steps does)."""
    import hashlib
    import json
    from dataclasses import asdict

    from labelers.latent.train import _MUST_MATCH

    key = json.dumps({"model": json.loads(config.to_json()),
                      "train": {k: v for k, v in asdict(settings).items() if k in _MUST_MATCH}}, sort_keys=True)
    return workdir / f"run-{what}-gap{settings.gap}-seed{settings.seed}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def cmd_bench_latent(args) -> int:
    set_threads(args.threads)
    import torch

    from labelers.latent.config import get_config
    from labelers.latent.probe import evaluate
    from labelers.latent.model import LatentActionModel
    from labelers.latent.train import TrainSettings, train_lam

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    rows, details = [], {}
    try:
        config = get_config("small")
        # -- simulated pick-place: train on seeds of `seed`, score on seeds of `seed + 1000`
        t = time.perf_counter()
        held = _simulated(workdir, "sim-heldout", args.task, args.heldout_episodes, args.max_steps, args.seed + 1000, args.workers)
        if args.checkpoint:
            model, extra = load_model(args.checkpoint)
            gap = extra.get("gap") or args.gap
            config = model.config
            train_info = {"checkpoint": args.checkpoint}
        else:
            train_dir = _simulated(workdir, "sim-train", args.task, args.train_episodes, args.max_steps, args.seed, args.workers)
            timings["simulate_s"] = time.perf_counter() - t
            store, _, _ = load_store(str(train_dir), "train", None, config.image_size, None, "sim train")
            t = time.perf_counter()
            gap = args.gap
            settings = TrainSettings(steps=args.steps, gap=gap, seed=args.seed, checkpoint_every=250)
            run = _run_dir(workdir, "sim", config, settings)
            train_info = train_lam(store, run, config, settings)
            timings["train_sim_s"] = time.perf_counter() - t
            model, _ = load_model(str(run))
        held_store, _, _ = load_store(str(held), "train", None, config.image_size, None, "sim held-out")
        torch.manual_seed(args.seed + 12345)
        random_model = LatentActionModel(config).eval()
        for name, m in (("trained", model), ("random", random_model)):
            r = evaluate(m, held_store, gap, seed=args.seed, progress=True)
            rows.append(score_row(f"sim {args.task} held-out (gap {gap})", name, r))
            details[f"sim/{name}"] = r
        details["sim/train"] = train_info

        # -- Bridge: train on episodes 0:13 of the shared fixture, score on 13:25
        if args.bridge:
            bstore_train, _, _ = load_store(args.bridge, "train", "0:13", config.image_size, None, "bridge train")
            bstore_held, _, _ = load_store(args.bridge, "train", "13:", config.image_size, None, "bridge held-out")
            t = time.perf_counter()
            bsettings = TrainSettings(steps=args.bridge_steps, gap=args.bridge_gap, seed=args.seed, checkpoint_every=250)
            brun = _run_dir(workdir, "bridge", config, bsettings)
            details["bridge/train"] = train_lam(bstore_train, brun, config, bsettings)
            timings["train_bridge_s"] = time.perf_counter() - t
            bmodel, _ = load_model(str(brun))
            for name, m in (("trained", bmodel), ("random", random_model)):
                r = evaluate(m, bstore_held, args.bridge_gap, seed=args.seed, progress=True)
                rows.append(score_row(f"bridge held-out eps 13-24 (gap {args.bridge_gap})", name, r))
                details[f"bridge/{name}"] = r
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"curate bench latent: error: {e}", file=sys.stderr)
        return 1
    timings["total_s"] = time.perf_counter() - t0
    result = {"rows": rows, "details": details, "timings": timings,
              "settings": {k: v for k, v in vars(args).items() if k != "func"},
              "targets": {"probe_r2_sim_pick_place": 0.5, "codebook_usage": 0.75}}
    path = write_bench_json("latent", result, args.out_json)
    columns = ["data", "model", "pairs", "usage", "perplexity", "psnr_recon", "psnr_copy",
               "psnr_moving_recon", "psnr_moving_copy", "probe_r2_linear", "probe_r2_mlp"]
    per_dim = []
    for key, r in details.items():
        if key.endswith("/train"):
            continue
        dims = " ".join("-" if v is None else f"{v:.2f}" for v in r["probe_linear"]["r2_per_dim"])
        mlp = " ".join("-" if v is None else f"{v:.2f}" for v in r["probe_mlp"]["r2_per_dim"])
        per_dim.append(f"  {key:<14} linear [{dims}]  mlp [{mlp}]")
    text = (format_table(rows, columns) + "\n\n" + markdown_table(rows, columns, floatfmt=".2f")
            + "\n\nprobe R^2 per action dimension (sim: x y z gripper):\n" + "\n".join(per_dim) + f"\n\nwrote {path}")
    emit(result, args.json, text)
    return 0
