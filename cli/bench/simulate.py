"""`curate bench simulate`: episodes per minute of the Meta-World simulator (scripted experts,
50-step episodes at 128 px by default), per core and wall, with the render share."""

from __future__ import annotations

import os
import sys
import time

from cli.output import add_report_args, emit, format_table, write_bench_json

BENCH_TASKS = ("pick-place-v3", "drawer-open-v3", "button-press-v3", "reach-v3", "door-open-v3")


def add_bench(sub) -> None:
    p = sub.add_parser("simulate", help="episodes per minute of simulate (50-step episodes at 128 px)")
    p.add_argument("--episodes", type=int, default=10, help="episodes to time (default 10, spread over tasks)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    p.add_argument("--max-steps", type=int, default=50, help="steps per episode (default 50)")
    p.add_argument("--workers", type=int, default=1, help="rollout subprocesses (default 1)")
    p.add_argument("--task", action="append", default=None, metavar="TASK", help=f"tasks (default {', '.join(BENCH_TASKS)})")
    add_report_args(p, bench="simulate")
    p.set_defaults(func=cmd_bench_simulate)


def cmd_bench_simulate(args) -> int:
    from curation.sources.metaworld.rollout import RolloutWorkers, iter_episodes

    tasks = list(args.task or BENCH_TASKS)
    n = max(1, args.episodes)
    # Episodes spread round-robin over the tasks (n may not divide evenly): run per task.
    per_task_n = {t: n // len(tasks) + (1 if i < n % len(tasks) else 0) for i, t in enumerate(tasks)}
    per_task_n = {t: k for t, k in per_task_n.items() if k > 0}
    try:
        # Each worker renders on one thread pinned to one CPU: the figure is per core.
        with RolloutWorkers(max(1, args.workers), one_core=True) as pool:
            # Warm the workers (interpreter start, imports) outside the timed region.
            pool.num_bodies(list(per_task_n))
            cpu_before = pool.worker_cpu_s()
            timings: dict = {}
            successes = []
            t0 = time.perf_counter()
            render_s = sim_s = 0.0
            for k, (task, count) in enumerate(per_task_n.items()):
                timings = {}
                for ep in iter_episodes([task], count, args.size, args.max_steps, seed=k, progress=True,
                                        timings=timings, pool=pool):
                    successes.append(bool(ep.success))
            wall_s = time.perf_counter() - t0
            render_s, sim_s = pool.render_s, pool.sim_s
            render_cpu_s, sim_cpu_s = pool.render_cpu_s, pool.sim_cpu_s
            worker_cpu_s = pool.worker_cpu_s() - cpu_before
    except (ValueError, RuntimeError) as e:
        print(f"curate bench simulate: error: {e}", file=sys.stderr)
        return 2
    episodes = len(successes)
    cpu_s = render_cpu_s + sim_cpu_s
    frames = episodes * args.max_steps
    # per core: all CPU the workers spent on these episodes (render, physics, policy, assembling
    # and pickling episodes), measured by the OS
    per_min_cpu = episodes / worker_cpu_s * 60.0 if worker_cpu_s > 0 else float("nan")
    result = {
        "episodes": episodes,
        "steps_per_episode": args.max_steps,
        "size_px": args.size,
        "workers": args.workers,
        "tasks": list(per_task_n),
        "wall_s": wall_s,
        "episodes_per_min": episodes / wall_s * 60.0,
        "episodes_per_min_per_core_cpu": per_min_cpu,
        "steps_per_s": frames / wall_s,
        "render_s": render_s,
        "sim_and_policy_s": sim_s,
        "worker_cpu_s": worker_cpu_s,
        "render_cpu_s": render_cpu_s,
        "sim_and_policy_cpu_s": sim_cpu_s,
        "render_share": render_cpu_s / cpu_s if cpu_s > 0 else float("nan"),
        "render_ms_per_frame": 1000.0 * render_s / frames,
        "render_cpu_ms_per_frame": 1000.0 * render_cpu_s / frames,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "success_rate": sum(successes) / episodes,
        "target_episodes_per_min": 20.0,
        "meets_target_wall": episodes / wall_s * 60.0 >= 20.0,
        "meets_target_cpu": per_min_cpu >= 20.0,
        "note": "each worker renders single-threaded, pinned to one CPU. episodes_per_min = episodes / parent "
                "wall time (includes pickling episodes back; inflated by other load on the machine); "
                "episodes_per_min_per_core_cpu = episodes / total worker CPU seconds (render, physics, policy, "
                "assembling and pickling episodes; from the OS), the figure for one uncontended core; "
                "render_share = render CPU / (render + physics + policy) CPU. render = 2 passes a frame (RGB; segmentation + depth "
                "together), shadows/reflections/multisampling off. Scripted experts need 40-150 steps, "
                "so success within 50 steps is low.",
    }
    out = write_bench_json("simulate", result, args.out_json)
    rows = [{k: result[k] for k in ("episodes", "size_px", "workers", "episodes_per_min",
                                     "episodes_per_min_per_core_cpu", "render_share", "render_cpu_ms_per_frame",
                                     "success_rate")}]
    emit(result, args.json, format_table(rows, floatfmt=".2f") + f"\nwrote {out}")
    return 0
