"""`curate simulate`: write a Meta-World dataset with ground truth (`curate bench simulate`: cli/bench/simulate.py)."""

from __future__ import annotations

import logging
import sys
import time

from cli.output import add_report_args, emit, format_table

log = logging.getLogger(__name__)

def add_commands(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="run Meta-World scripted experts and write an RLDS dataset with ground truth",
        description="Roll out Meta-World's scripted expert policies from a fixed third-person camera and "
        "write an Open-X-format RLDS dataset (<out>/metaworld_sim/1.0.0) with RGB, language, actions, "
        "proprio, success, and ground truth (depth, segmentation, body poses, camera).",
    )
    p.add_argument("--task", action="append", required=True, metavar="TASK",
                   help="Meta-World v3 task, e.g. pick-place-v3 (repeat for several); 'all' for every task")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    p.add_argument("--size", type=int, default=128, help="image height and width in pixels (default 128)")
    p.add_argument("--max-steps", type=int, default=50, help="steps per episode (default 50, at 80 Hz)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each episode's seed derives from it")
    p.add_argument("--camera", default=None, help="fixed camera (default third_person)")
    p.add_argument("--workers", type=int, default=1, help="rollout subprocesses (default 1)")
    p.add_argument("--episodes-per-shard", type=int, default=None, help="episodes per tfrecord file (default all in one)")
    p.add_argument("--out", required=True, help="output root directory")
    add_report_args(p)
    p.set_defaults(func=cmd_simulate)


def _resolve_tasks(tasks: list[str]) -> list[str]:
    from curation.sources.metaworld.rollout import available_tasks

    out: list[str] = []
    for t in tasks:
        out.extend(available_tasks() if t == "all" else [t])
    return list(dict.fromkeys(out))


def cmd_simulate(args) -> int:
    from curation.sources.metaworld.rollout import DEFAULT_CAMERA, METAWORLD_CONTROL_HZ, simulate_dataset

    try:
        tasks = _resolve_tasks(args.task)
        summary: list[dict] = []
        timings: dict = {}
        t0 = time.perf_counter()
        path = simulate_dataset(
            args.out, tasks, args.episodes, size=args.size, max_steps=args.max_steps, seed=args.seed,
            camera=args.camera or DEFAULT_CAMERA, progress=True, episodes_per_shard=args.episodes_per_shard,
            summary=summary, workers=args.workers, timings=timings,
        )
        wall_s = time.perf_counter() - t0
    except ValueError as e:  # bad arguments (unknown task, sizes) or an episode that cannot be encoded
        print(f"curate simulate: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a worker failed: the message names the task and seed
        print(f"curate simulate: error: {e}", file=sys.stderr)
        return 1
    per_task = []
    for task in tasks:
        eps = [s for s in summary if s["task"] == task]
        per_task.append({
            "task": task,
            "episodes": len(eps),
            "steps": sum(s["steps"] for s in eps),
            "success_rate": (sum(s["success"] for s in eps) / len(eps)) if eps else float("nan"),
        })
    result = {
        "path": str(path),
        "episodes": len(summary),
        "steps": sum(s["steps"] for s in summary),
        "success_rate": (sum(s["success"] for s in summary) / len(summary)) if summary else float("nan"),
        "size_px": args.size,
        "max_steps": args.max_steps,
        "control_hz": METAWORLD_CONTROL_HZ,
        "seed": args.seed,
        "camera": args.camera or DEFAULT_CAMERA,
        "wall_s": wall_s,
        "per_task": per_task,
        "episodes_detail": summary,
    }
    text = "\n".join([
        format_table(per_task, ["task", "episodes", "steps", "success_rate"], floatfmt=".2f"),
        "",
        f"{result['episodes']} episodes, {result['steps']} steps, success {result['success_rate']:.2f}, "
        f"{wall_s:.1f} s -> {path}",
    ] + ([f"note: the scripted experts usually need 40-150 steps; --max-steps {args.max_steps} ends most "
          "episodes before success (raise it for successful demonstrations)"] if args.max_steps < 100 else []))
    emit(result, args.json, text)
    return 0
