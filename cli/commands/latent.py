"""`curate latent train|label|eval` and `curate bench latent`: the LAPA-style latent action model.

    curate latent train --source DATASET_DIR --out RUN_DIR [--steps N] [--gap G] [--config small|paper]
    curate latent label --checkpoint RUN_DIR --source DATASET_DIR [--episodes A:B]
    curate latent eval  --checkpoint RUN_DIR --source DATASET_DIR [--episodes A:B]
    curate bench latent            # simulate, train, and score trained vs random tokens

Episodes are read with the project's RLDS reader (curation.sources.rlds), so any source it takes
(Open-X directories, our simulator's output) trains and labels the same way.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from cli.output import add_report_args, emit, write_bench_json

from curation.formats import format_table, markdown_table

log = logging.getLogger(__name__)

BENCH_TASK = "pick-place-v3"
DEFAULT_WORKDIR = ".cache/latent-bench"
BRIDGE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"


# ---------------------------------------------------------------------------- argument plumbing


def _episode_range(text: str | None) -> tuple[int | None, int | None]:
    """'A:B', 'A:', ':B' or None -> (start, stop)."""
    if not text:
        return None, None
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--episodes must look like A:B, A: or :B, got {text!r}")
    try:
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"--episodes must look like A:B with integers, got {text!r}") from None
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"--episodes {text!r} is empty")
    return start, stop


def _source_args(p, required: bool = True) -> None:
    p.add_argument("--source", required=required, help="RLDS dataset directory (Open-X or `curate simulate` output)")
    p.add_argument("--split", default="train", help="split to read (default train)")
    p.add_argument("--episodes", default=None, metavar="A:B", help="episode range of the split (default all)")
    p.add_argument("--camera", default=None, help="camera to use (default: the dataset's primary camera)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads spin and run slower)")


def add_commands(sub) -> None:
    p = sub.add_parser("latent", help="latent action tokens (LAPA-style VQ model): train, label, eval")
    lsub = p.add_subparsers(dest="latent_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    t = lsub.add_parser(
        "train", help="train the latent action model on a dataset (resumes from --out)",
        description="Train the LAPA-style latent action model on frame pairs (t, t+gap) of a dataset. "
        "Checkpoints (safetensors: model, optimiser, RNG states, step) go to OUT/checkpoints every "
        "--checkpoint-every steps and OUT/model.safetensors holds the latest weights; rerunning into the "
        "same OUT resumes from the newest checkpoint and gives the same weights as an uninterrupted run.",
    )
    _source_args(t)
    t.add_argument("--out", required=True, help="run directory for checkpoints")
    t.add_argument("--config", default="small", choices=["small", "paper"], help="model size (default small, 64 px)")
    t.add_argument("--steps", type=int, default=3000, help="total optimiser steps (default 3000)")
    t.add_argument("--batch", type=int, default=32, help="frame pairs per step (default 32)")
    t.add_argument("--gap", type=int, default=4, help="frames between t and t+gap (default 4)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 5e-4 small, 1e-4 paper)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (default 0)")
    t.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (default 250)")
    add_report_args(t)
    t.set_defaults(func=cmd_train)

    lab = lsub.add_parser(
        "label", help="print each episode's latent action tokens",
        description="Label every anchor step t of each episode with the L tokens of the motion t -> t+gap. "
        f"Steps with no frame t+gap print as '-' (token -1, mask False).",
    )
    lab.add_argument("--checkpoint", required=True, help="run directory or .safetensors file")
    _source_args(lab)
    lab.add_argument("--gap", type=int, default=None, help="gap (default: the one the model was trained with)")
    lab.add_argument("--stride", type=int, default=1, help="label every STRIDE-th step (default 1)")
    add_report_args(lab)
    lab.set_defaults(func=cmd_label)

    ev = lsub.add_parser(
        "eval", help="codebook usage, reconstruction PSNR and action probe of a model on a dataset",
    )
    ev.add_argument("--checkpoint", required=True, help="run directory or .safetensors file")
    _source_args(ev)
    ev.add_argument("--gap", type=int, default=None, help="gap (default: the one the model was trained with)")
    add_report_args(ev)
    ev.set_defaults(func=cmd_eval)


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


# ---------------------------------------------------------------------------- helpers


def _load_store(source: str, split: str, episodes: str | None, size: int, camera: str | None, what: str):
    """Read episodes through the project reader into a FrameStore; bad episodes are skipped
    with a warning naming them. Raises ValueError when nothing usable is left."""
    from schemas.progress import progress_bar

    from curation.sources.rlds import read_episodes
    from labelers.latent.data import store_from_episodes
    from schemas.episode import EpisodeError

    start, stop = _episode_range(episodes)
    good, bad = [], []
    for item in progress_bar(read_episodes(source, split, start, stop, on_error="yield"), desc=f"read {what}", unit="ep", leave=False):
        if isinstance(item, EpisodeError):
            bad.append(str(item))
            print(f"warning: skipping episode: {item}", file=sys.stderr)
        else:
            good.append(item)
    try:
        store = store_from_episodes(good, size, camera)
    except EpisodeError as e:
        raise ValueError(str(e)) from e
    if store.num_episodes == 0:
        raise ValueError(f"{source} split={split} episodes={episodes or 'all'}: no usable episodes ({len(bad)} bad)")
    return store, good, bad


def _load_model(checkpoint: str):
    from labelers.latent.checkpoint import load_weights
    from labelers.latent.model import LatentActionModel

    config, state, extra = load_weights(checkpoint)
    model = LatentActionModel(config)
    model.load_state_dict(state)
    return model.eval(), extra


def _set_threads(n: int) -> None:
    from labelers.threads import limit_threads

    limit_threads(n)


def _fail(cmd: str, e: Exception, code: int = 1) -> int:
    print(f"curate latent {cmd}: error: {e}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    _set_threads(args.threads)
    from labelers.latent.config import get_config
    from labelers.latent.train import TrainSettings, train_lam

    try:
        config = get_config(args.config)
        lr = args.lr if args.lr is not None else (5e-4 if args.config == "small" else 1e-4)
        settings = TrainSettings(steps=args.steps, batch=args.batch, gap=args.gap, seed=args.seed, lr=lr,
                                 checkpoint_every=args.checkpoint_every)
        store, _, bad = _load_store(args.source, args.split, args.episodes, config.image_size, args.camera, "train")
        summary = train_lam(store, args.out, config, settings, progress=True)
    except FileNotFoundError as e:
        return _fail("train", e, 2)
    except ValueError as e:  # bad arguments, bad data, or a checkpoint made with other settings
        return _fail("train", e, 2)
    except KeyboardInterrupt:
        print(f"curate latent train: interrupted; rerun with --out {args.out} to resume", file=sys.stderr)
        return 130
    summary.update({"source": args.source, "split": args.split, "episode_range": args.episodes,
                    "skipped_episodes": bad, "config": args.config})
    text = (
        f"trained {summary['steps_run']} steps (resumed from step {summary['resumed_from']}, now {summary['steps']}) "
        f"on {summary['pairs']} pairs of {summary['episodes']} episodes in {summary['seconds']:.1f} s "
        f"({summary['steps_per_s']:.2f} steps/s); final loss {summary['final_loss']}; "
        f"{len(summary['replacements'])} dead-code replacement rounds; weights: {Path(args.out) / 'model.safetensors'}"
    )
    emit(summary, args.json, text)
    return 0


def cmd_label(args) -> int:
    _set_threads(args.threads)
    import numpy as np

    from labelers.latent.labeler import LatentActionLabeler
    from labelers.latent.probe import codebook_stats
    from schemas.episode import EpisodeError
    from schemas.triplet import anchor_steps

    try:
        labeler = LatentActionLabeler.from_checkpoint(args.checkpoint)
        gap = args.gap or labeler.trained_gap
        if not gap:
            raise ValueError("the checkpoint does not record its gap; pass --gap")
        from curation.sources.rlds import read_episodes

        start, stop = _episode_range(args.episodes)
        rows, all_tokens = [], []
        for ep in read_episodes(args.source, args.split, start, stop, on_error="yield"):
            if isinstance(ep, EpisodeError):
                print(f"warning: skipping episode: {ep}", file=sys.stderr)
                continue
            cam = args.camera or ep.primary_camera
            if cam not in ep.frames:
                raise EpisodeError(ep.provenance.describe(), f"camera {cam!r} not in episode", stage="latent")
            anchors = anchor_steps(ep.num_steps, args.stride)
            tokens, valid = labeler(ep.frames[cam], anchors, gap)
            all_tokens.append(tokens[valid])
            rows.append({
                "episode_id": ep.episode_id, "episode": ep.provenance.describe(), "steps": ep.num_steps,
                "anchors": anchors.tolist(), "valid": valid.tolist(), "tokens": tokens.tolist(),
            })
    except (FileNotFoundError, ValueError) as e:
        return _fail("label", e, 2)
    if not rows:
        return _fail("label", ValueError(f"{args.source}: no episodes to label"), 2)
    stats = codebook_stats(np.concatenate(all_tokens).astype(np.int64), labeler.codebook_size)
    result = {"checkpoint": args.checkpoint, "gap": gap, "num_tokens": labeler.num_tokens,
              "codebook_size": labeler.codebook_size, "pad_token": -1, "summary": stats, "episodes": rows}
    lines = []
    for r in rows:
        sep = "" if labeler.codebook_size <= 10 else "."  # one digit per token while codes fit in one
        seq = " ".join(sep.join(str(v) for v in tok) if ok else "-" for tok, ok in zip(r["tokens"], r["valid"]))
        lines.append(f"{r['episode']}  ({r['steps']} steps, {sum(r['valid'])} labelled)\n  {seq}")
    lines.append(f"codes used {stats['codes_used']}/{labeler.codebook_size}, perplexity {stats['perplexity']:.2f}, "
                 f"{stats['distinct_sequences']} distinct token sequences; gap {gap}; '-' = no frame t+gap (token -1)")
    emit(result, args.json, "\n".join(lines))
    return 0


def cmd_eval(args) -> int:
    _set_threads(args.threads)
    from labelers.latent.probe import evaluate

    try:
        model, extra = _load_model(args.checkpoint)
        gap = args.gap or extra.get("gap")
        if not gap:
            raise ValueError("the checkpoint does not record its gap; pass --gap")
        store, _, _ = _load_store(args.source, args.split, args.episodes, model.config.image_size, args.camera, "eval")
        result = evaluate(model, store, gap, progress=True)
    except (FileNotFoundError, ValueError) as e:
        return _fail("eval", e, 2)
    result.update({"checkpoint": args.checkpoint, "gap": gap, "source": args.source})
    emit(result, args.json, format_table([_row("model", "checkpoint", result)]))
    return 0


# ---------------------------------------------------------------------------- bench


def _row(dataset: str, model: str, r: dict) -> dict:
    return {
        "data": dataset, "model": model, "pairs": r["pairs"],
        "usage": r["usage"], "perplexity": r["perplexity"],
        "psnr_recon": r["psnr_recon"], "psnr_copy": r["psnr_copy"],
        "psnr_moving_recon": r["psnr_recon_moving"], "psnr_moving_copy": r["psnr_copy_moving"],
        "probe_r2_linear": r["probe_linear"]["r2"], "probe_r2_mlp": r["probe_mlp"]["r2"],
    }


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
    _set_threads(args.threads)
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
            model, extra = _load_model(args.checkpoint)
            gap = extra.get("gap") or args.gap
            config = model.config
            train_info = {"checkpoint": args.checkpoint}
        else:
            train_dir = _simulated(workdir, "sim-train", args.task, args.train_episodes, args.max_steps, args.seed, args.workers)
            timings["simulate_s"] = time.perf_counter() - t
            store, _, _ = _load_store(str(train_dir), "train", None, config.image_size, None, "sim train")
            t = time.perf_counter()
            gap = args.gap
            settings = TrainSettings(steps=args.steps, gap=gap, seed=args.seed, checkpoint_every=250)
            run = _run_dir(workdir, "sim", config, settings)
            train_info = train_lam(store, run, config, settings)
            timings["train_sim_s"] = time.perf_counter() - t
            model, _ = _load_model(str(run))
        held_store, _, _ = _load_store(str(held), "train", None, config.image_size, None, "sim held-out")
        torch.manual_seed(args.seed + 12345)
        random_model = LatentActionModel(config).eval()
        for name, m in (("trained", model), ("random", random_model)):
            r = evaluate(m, held_store, gap, seed=args.seed, progress=True)
            rows.append(_row(f"sim {args.task} held-out (gap {gap})", name, r))
            details[f"sim/{name}"] = r
        details["sim/train"] = train_info

        # -- Bridge: train on episodes 0:13 of the shared fixture, score on 13:25
        if args.bridge:
            bstore_train, _, _ = _load_store(args.bridge, "train", "0:13", config.image_size, None, "bridge train")
            bstore_held, _, _ = _load_store(args.bridge, "train", "13:", config.image_size, None, "bridge held-out")
            t = time.perf_counter()
            bsettings = TrainSettings(steps=args.bridge_steps, gap=args.bridge_gap, seed=args.seed, checkpoint_every=250)
            brun = _run_dir(workdir, "bridge", config, bsettings)
            details["bridge/train"] = train_lam(bstore_train, brun, config, bsettings)
            timings["train_bridge_s"] = time.perf_counter() - t
            bmodel, _ = _load_model(str(brun))
            for name, m in (("trained", bmodel), ("random", random_model)):
                r = evaluate(m, bstore_held, args.bridge_gap, seed=args.seed, progress=True)
                rows.append(_row(f"bridge held-out eps 13-24 (gap {args.bridge_gap})", name, r))
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
