"""`curate tracker train`: the learned track refiner (labelers/tracking/refiner.py), trained on
simulator ground truth; scored held out by `curate bench labels` (row "learned").

    curate tracker train --out WEIGHTS.safetensors [--source SIM_DIR ...] [--tasks ...]
                         [--cameras ...] [--episodes N] [--steps N] [--seed S]

Without --source it simulates `--episodes` episodes of each task from each camera (seed
`--seed` + 100, away from the bench's layouts); with --source it reads simulated datasets
(`curate simulate` output, which carries the ground truth). The bench's held-out tasks must
not be trained on, nor tasks with their objects (DEFAULT_TRAIN_TASKS).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from cli.output import add_report_args, emit

log = logging.getLogger(__name__)

# The bench's three choice tasks (cli.bench.motion.CHOICE_TASKS) and twelve more that share no
# object with its held-out tasks (door-open, push, window-close, faucet-open, reach): training on
# the three alone lifted held-out moving delta_avg 0.586 -> 0.598, on these fifteen to 0.616.
DEFAULT_TRAIN_TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "basketball-v3", "bin-picking-v3",
                       "box-close-v3", "coffee-push-v3", "dial-turn-v3", "hammer-v3", "handle-press-v3", "lever-pull-v3",
                       "plate-slide-v3", "shelf-place-v3", "sweep-v3", "drawer-close-v3"]
DEFAULT_TRAIN_CAMERAS = ["third_person", "third_person_left", "front"]
SIM_SEED_OFFSET = 100  # simulated training layouts start here, clear of the bench's seeds


def add_commands(sub) -> None:
    p = sub.add_parser("tracker", help="the learned track refiner: train on simulator ground truth")
    tsub = p.add_subparsers(dest="tracker_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    t = tsub.add_parser("train", help="train the track refiner; writes one safetensors file")
    t.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    t.add_argument("--source", nargs="+", default=None, help="simulated dataset directories (default: simulate)")
    t.add_argument("--tasks", nargs="+", default=DEFAULT_TRAIN_TASKS, help="tasks to simulate (default: the bench's choice tasks and 12 more, none of the held-out ones)")
    t.add_argument("--cameras", nargs="+", default=DEFAULT_TRAIN_CAMERAS, help="cameras to simulate from")
    t.add_argument("--episodes", type=int, default=1, help="episodes per task and camera when simulating (default 1)")
    t.add_argument("--size", type=int, default=128, help="image size when simulating (default 128)")
    t.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    t.add_argument("--soft-argmax", action=argparse.BooleanOptionalAction, default=True,
                   help="the head corrects the soft-argmax of the fine cost volume (RefinerConfig.soft_argmax; default on)")
    add_report_args(t)
    t.set_defaults(func=cmd_train)


def _episodes(args) -> tuple[list, list[str]]:
    """Episodes with ground truth, and where they came from."""
    from curation.sources.metaworld.rollout import simulate_dataset
    from curation.sources.rlds import read_episodes

    if args.source:
        eps = [ep for src in args.source for ep in read_episodes(src)]
        return eps, list(args.source)
    eps, where = [], []
    with tempfile.TemporaryDirectory(prefix="tracker-train-") as tmp:
        for cam in args.cameras:
            print(f"simulating {len(args.tasks)} task(s) x {args.episodes} episode(s) from {cam} ...", file=sys.stderr)
            src = simulate_dataset(Path(tmp) / cam, tasks=list(args.tasks), episodes_per_task=args.episodes,
                                   size=args.size, seed=args.seed + SIM_SEED_OFFSET, camera=cam, progress=True)
            eps += list(read_episodes(str(src)))
            where.append(f"simulated {cam}: {', '.join(args.tasks)} x {args.episodes}, seed {args.seed + SIM_SEED_OFFSET}")
    return eps, where


def cmd_train(args) -> int:
    from labelers.tracking.refiner import RefinerConfig, save_refiner
    from labelers.training.track_refiner import TrainSettings, build_samples, train_refiner

    settings = TrainSettings(steps=args.steps, seed=args.seed, threads=args.threads)
    episodes, where = _episodes(args)
    missing = [ep.provenance.describe() for ep in episodes if ep.ground_truth is None]
    if missing:
        raise SystemExit(f"episodes without simulator ground truth cannot train the refiner: {missing[:3]}")
    samples = build_samples(episodes, settings)
    log.info("track refiner: %d samples from %d episodes", len(samples), len(episodes))
    model, record = train_refiner(samples, settings, config=RefinerConfig(soft_argmax=args.soft_argmax))
    record.update({"data": where, "episodes": len(episodes),
                   "command": "curate " + " ".join(sys.argv[1:])})
    out = save_refiner(model, args.out, extra=record)
    result = {"weights": str(out), **record}
    emit(result, args.json, f"wrote {out}: {record['samples']} samples, {record['settings']['steps']} steps, "
                            f"final loss {record['final_loss']:.3f} ({record['train_s']:.0f} s)")
    return 0
