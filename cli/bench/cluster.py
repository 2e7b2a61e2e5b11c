"""`curate bench cluster [--json]`: the curation job on a real multi-node Ray cluster.

Starts a head and two worker nodes on this machine (pipelines.testing.cluster: separate
`ray start` processes, one CPU each, loopback only), runs `curate run --runner ray
--address HOST:PORT` against it as a separate driver process, once undisturbed
and once with one worker node SIGKILLed (its raylet) while it is running a unit,
and compares both results with a local run: same manifest rows, checksums and
array contents, every episode written once. The labeler runs as an actor pool
placed by a stand-in GPU resource that only worker node_a has.

`run_cluster_job` is also what tests/test_cluster.py runs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from cli.output import add_report_args, emit, format_table, write_bench_json

log = logging.getLogger(__name__)

# Labels small enough that a job over the 25 Bridge episodes takes seconds, big enough
# that a unit of 3 episodes is still running when the poller (every POLL_S) sees it.
FAST_LABELS = ["labels.grid=10", "labels.horizon=8", "labels.stride=2"]
VICTIM = "node_b"
POLL_S = 0.05


def curate_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("curate")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]


def run_args(source, out, shard_episodes: int, extra_sets=()) -> list[str]:
    args = [str(source), "--out", str(out), "--shard-episodes", str(shard_episodes), "--json", "--no-progress"]
    for s in list(FAST_LABELS) + list(extra_sets):
        args += ["--set", s]
    return args


def _parse_summary(stdout: str) -> dict:
    start = stdout.find("\n{") + 1 if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])


def run_local(source, out, shard_episodes: int = 3, timeout_s: float = 600, extra_sets=()) -> dict:
    """The reference: `curate run --runner local` in a subprocess."""
    t0 = time.perf_counter()
    res = subprocess.run(curate_cmd() + ["run", "--runner", "local"] + run_args(source, out, shard_episodes, extra_sets),
                         capture_output=True, text=True, timeout=timeout_s)
    if res.returncode != 0:
        raise RuntimeError(f"local run failed ({res.returncode}): {res.stderr[-3000:]}")
    s = _parse_summary(res.stdout)
    s["driver_wall_s"] = time.perf_counter() - t0
    return s


def _busy_workers(cluster, name: str) -> set[int]:
    """Worker processes of node `name` executing a task right now (Ray sets a busy
    worker's process title to ray::<function>, an idle one's to ray::IDLE)."""
    busy = set()
    for p in cluster._node_processes(name):
        try:
            if any("ray::_attempt" in part for part in p.cmdline()):
                busy.add(p.pid)
        except Exception:  # noqa: BLE001 - process vanished
            continue
    return busy


def _unit_running_on(cluster, name: str, out: Path) -> Optional[int]:
    """The shard group of a unit that node `name` is processing right now, if any:
    a unit attempt marker (written by the worker at the start of the unit, named with
    its pid) whose worker is one of the node's busy workers and whose shard is not
    committed yet. Fingerprint-pass tasks leave no marker, so they never match."""
    from pipelines import attempts
    from pipelines.stages import ATTEMPTS_DIR
    from curation.store.writer import committed_groups

    busy = _busy_workers(cluster, name)
    started = [a.key for a in attempts.read(Path(out) / ATTEMPTS_DIR) if a.pid in busy]  # a worker runs units one by one
    if not started:
        return None
    done = committed_groups(Path(out))
    pending = sorted(g for g in started if g not in done)
    return pending[0] if pending else None


def run_cluster_job(cluster, source, out, shard_episodes: int = 3, kill: Optional[str] = None,
                    label_resource: Optional[str] = None, timeout_s: float = 900, extra_sets=()) -> dict:
    """`curate run --runner ray --address` against `cluster` in a driver subprocess.

    kill: crash this node (every process of it frozen, then SIGKILLed) the moment it
    is seen running a unit whose shard is not committed (so there is work to lose).
    label_resource: run the
    labeler as one actor needing this custom resource (a stand-in GPU)."""
    sets = ["engine.max_retries=5", *extra_sets]
    if label_resource:
        sets += ["engine.label_actors=1", f"engine.label_resources={{{label_resource}: 1}}"]
    cmd = curate_cmd() + ["run", "--runner", "ray", "--address", cluster.address] + run_args(
        source, out, shard_episodes, sets)
    env = cluster.driver_env()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outputs: dict = {}
    reader = threading.Thread(target=lambda: outputs.update(zip(("out", "err"), proc.communicate())), daemon=True)
    reader.start()
    killed: dict = {}
    try:
        while proc.poll() is None and kill and not killed:
            if time.perf_counter() - t0 > timeout_s:
                break
            group = _unit_running_on(cluster, kill, Path(out))
            if group is not None:
                from curation.store.writer import committed_groups

                killed = {"node": kill, "raylet_pid": cluster.kill_node(kill), "unit_group": group,
                          "committed_before": len(committed_groups(Path(out))),
                          "at_s": round(time.perf_counter() - t0, 2)}
                break
            time.sleep(POLL_S)
        reader.join(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        if reader.is_alive():
            proc.kill()
            reader.join(timeout=30)
            raise TimeoutError(f"cluster run did not finish in {timeout_s:.0f}s: {outputs.get('err', '')[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cluster run failed ({proc.returncode}): {outputs.get('err', '')[-4000:]}"
                           f"\n--- cluster logs ---\n{cluster.tail_logs()}")
    summary = _parse_summary(outputs["out"])
    summary["driver_wall_s"] = wall
    summary["killed"] = killed
    return summary


def compare_datasets(ref: Path, other: Path) -> dict:
    """What must be equal between a local and a cluster run, measured (not asserted)."""
    import numpy as np
    import pyarrow.parquet as pq

    from curation import open_dataset
    from schemas.dataset import SHARDS_DIR, shard_key

    def rows(p):  # sub-shard names without their attempt id, which differs from run to run
        rows = pq.read_table(Path(p) / "manifest.parquet").drop(["source_file"]).to_pylist()
        return [{**r, "shard": shard_key(r["shard"])} for r in rows]

    ra, rb = rows(ref), rows(other)
    ids_b = [r["episode_id"] for r in rb]
    da, db = open_dataset(str(ref)), open_dataset(str(other))
    arrays_equal, arrays_compared = True, 0
    b_names = {shard_key(s): s for s in db.shard_names}
    for shard in da.shard_names:
        xa = da.read_shard(shard)
        xb = db.read_shard(b_names[shard_key(shard)]) if shard_key(shard) in b_names else {}
        if sorted(xa) != sorted(xb):
            arrays_equal = False
            continue
        for name in xa:
            arrays_compared += 1
            a, b = xa[name], xb[name]
            arrays_equal &= bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))  # NaN = masked
    leftovers = sorted(p.name for p in (Path(other) / SHARDS_DIR).iterdir() if p.name.startswith(".tmp-"))
    return {
        "episodes_ref": len(ra), "episodes": len(rb),
        "manifest_rows_equal": ra == rb,
        "checksums_equal": [r["checksum"] for r in ra] == [r["checksum"] for r in rb],
        "episode_ids_unique": len(ids_b) == len(set(ids_b)),
        "arrays_equal": arrays_equal, "arrays_compared": arrays_compared,
        "shards_ref": da.shard_names, "shards": db.shard_names, "tmp_leftovers": leftovers,
        "shard_sets_equal": sorted(map(shard_key, da.shard_names)) == sorted(b_names),
    }


def stage_throughput(summary: dict) -> list[dict]:
    """Frames per second of each stage, from the summed per-stage seconds of all
    workers (a stage's own rate, not the job's)."""
    frames = summary.get("frames_written_this_run") or 0
    out = []
    for stage, sec in summary.get("stage_seconds", {}).items():
        if stage in ("plan", "finalize", "fingerprint_pass"):
            continue
        out.append({"stage": stage, "seconds": sec, "frames_per_s": frames / sec if sec >= 0.01 else None})
    return out


def bench_cluster(source, workdir: Path, shard_episodes: int = 3) -> dict:
    from pipelines.testing.cluster import GPU_STANDIN, LocalCluster

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {"source": str(source), "shard_episodes": shard_episodes, "runs": []}
    local = run_local(source, workdir / "local", shard_episodes)
    result["runs"].append(_row("local (1 process)", local))
    result["stage_throughput_local"] = stage_throughput(local)
    t0 = time.perf_counter()
    cluster = LocalCluster(workers=2)
    try:
        cluster.start()
        result["cluster_start_s"] = time.perf_counter() - t0
        result["nodes"] = {k: n.node_id for k, n in cluster.nodes.items()}
        clean = run_cluster_job(cluster, source, workdir / "ray", shard_episodes, label_resource=GPU_STANDIN)
        result["runs"].append(_row("ray cluster, 3 nodes", clean))
        result["compare_clean"] = compare_datasets(workdir / "local", workdir / "ray")
        killed = run_cluster_job(cluster, source, workdir / "ray-killed", shard_episodes, kill=VICTIM,
                                 label_resource=GPU_STANDIN)
        result["runs"].append(_row(f"ray cluster, {VICTIM} killed", killed))
        result["compare_killed"] = compare_datasets(workdir / "local", workdir / "ray-killed")
        result["killed"] = killed["killed"]
        result["attempts_killed_run"] = killed["engine"].get("attempts")
        result["label_actor_nodes"] = killed["engine"].get("label_actor_nodes")
        result["stage_throughput_clean"] = stage_throughput(clean)
        result["stage_throughput_killed"] = stage_throughput(killed)
    finally:
        t1 = time.perf_counter()
        cluster.stop()
        result["cluster_stop_s"] = time.perf_counter() - t1
        result["processes_left"] = cluster.alive_processes()
    return result


def _row(name: str, s: dict) -> dict:
    att = (s.get("engine") or {}).get("attempts") or {}
    return {"run": name, "episodes": s["counts"]["written"], "frames": s["counts"]["frames_written"],
            "processing_s": s["processing_s"], "driver_wall_s": s["driver_wall_s"],
            "episodes_per_s": s["episodes_per_s"], "frames_per_s": s["frames_per_s"],
            "task_attempts": att.get("task_attempts"), "retried_tasks": att.get("retried_tasks"),
            "complete": s["complete"]}


def _stage_rows(result: dict) -> list[dict]:
    rows: dict = {}
    for run in ("local", "clean", "killed"):
        for r in result.get(f"stage_throughput_{run}", []):
            rows.setdefault(r["stage"], {"stage": r["stage"]})[f"{run}_frames_per_s"] = r["frames_per_s"]
    return list(rows.values())


def add_bench(bench_sub) -> None:
    p = bench_sub.add_parser("cluster", help="the job on a local 3-node Ray cluster, with and without a killed node")
    p.add_argument("--source", default=None,
                   help="RLDS dataset (default: the shared Bridge episodes, else a small simulated dataset)")
    p.add_argument("--shard-episodes", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the datasets go (default a temp dir, removed after)")
    add_report_args(p, bench="cluster")
    p.set_defaults(func=cmd_bench_cluster)


def _default_source(tmp: Path) -> Path:
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"
    if shared.is_dir():
        return shared
    from curation.sources.metaworld.rollout import simulate_dataset

    return Path(simulate_dataset(tmp / "sim", tasks=["pick-place-v3", "drawer-open-v3"], episodes_per_task=3,
                                 size=64, max_steps=24, seed=0))


def cmd_bench_cluster(args) -> int:
    import shutil
    import tempfile

    for k, v in {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        os.environ.setdefault(k, v)
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        source = Path(args.source) if args.source else _default_source(tmp)
        result = bench_cluster(source, tmp / "runs", args.shard_episodes)
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    path = write_bench_json("cluster", result, args.out_json)
    ck, cc = result["compare_killed"], result["compare_clean"]
    att = result.get("attempts_killed_run") or {}
    text = "\n".join([
        format_table(result["runs"], floatfmt=".2f"),
        "",
        f"cluster start {result['cluster_start_s']:.1f}s; killed {result['killed'].get('node')} at "
        f"{result['killed'].get('at_s')}s; label actor on node(s) {result['label_actor_nodes']}",
        f"equal to local: clean run manifest {cc['manifest_rows_equal']} arrays {cc['arrays_equal']}; "
        f"killed run manifest {ck['manifest_rows_equal']} arrays {ck['arrays_equal']} "
        f"ids unique {ck['episode_ids_unique']}",
        "",
        f"killed run: {att.get('task_attempts')} task attempts for {att.get('tasks')} tasks; retried: "
        + "; ".join(f"{r['unit'].split(' (')[0]} x{r['attempts']}" for r in att.get("retried", [])),
        f"cluster stop {result['cluster_stop_s']:.1f}s, processes left {result['processes_left']}",
        "",
        "per-stage throughput (frames / summed stage seconds of all workers):",
        format_table(_stage_rows(result), floatfmt=".1f"),
        f"-> {path}",
    ])
    emit(result, args.json, text)
    ok = all(c["manifest_rows_equal"] and c["arrays_equal"] and c["episode_ids_unique"] for c in (cc, ck))
    return 0 if ok else 1
