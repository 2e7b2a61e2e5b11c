"""`curate latent train|label|eval`: the LAPA-style latent action model (`curate bench latent`: cli/bench/latent.py).

    curate latent train --source DATASET_DIR --out RUN_DIR [--steps N] [--gap G] [--config small|paper]
    curate latent label --checkpoint RUN_DIR --source DATASET_DIR [--episodes A:B]
    curate latent eval  --checkpoint RUN_DIR --source DATASET_DIR [--episodes A:B]

Episodes are read with the project's RLDS reader (curation.sources.rlds), so any source it takes
(Open-X directories, our simulator's output) trains and labels the same way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cli.latent_io import episode_range, load_model, load_store, score_row, set_threads
from cli.output import add_report_args, emit

from curation.formats import format_table

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- argument plumbing


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
        "Steps with no frame t+gap print as '-' (token -1, mask False).",
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


# ---------------------------------------------------------------------------- helpers


def _fail(cmd: str, e: Exception, code: int = 1) -> int:
    print(f"curate latent {cmd}: error: {e}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    set_threads(args.threads)
    from labelers.latent.config import get_config
    from labelers.latent.train import TrainSettings, train_lam

    try:
        config = get_config(args.config)
        lr = args.lr if args.lr is not None else (5e-4 if args.config == "small" else 1e-4)
        settings = TrainSettings(steps=args.steps, batch=args.batch, gap=args.gap, seed=args.seed, lr=lr,
                                 checkpoint_every=args.checkpoint_every)
        store, _, bad = load_store(args.source, args.split, args.episodes, config.image_size, args.camera, "train")
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
    set_threads(args.threads)
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

        start, stop = episode_range(args.episodes)
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
    set_threads(args.threads)
    from labelers.latent.probe import evaluate

    try:
        model, extra = load_model(args.checkpoint)
        gap = args.gap or extra.get("gap")
        if not gap:
            raise ValueError("the checkpoint does not record its gap; pass --gap")
        store, _, _ = load_store(args.source, args.split, args.episodes, model.config.image_size, args.camera, "eval")
        result = evaluate(model, store, gap, progress=True)
    except (FileNotFoundError, ValueError) as e:
        return _fail("eval", e, 2)
    result.update({"checkpoint": args.checkpoint, "gap": gap, "source": args.source})
    emit(result, args.json, format_table([score_row("model", "checkpoint", result)]))
    return 0
