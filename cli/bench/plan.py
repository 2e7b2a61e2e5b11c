"""`curate bench pipeline`'s planning figures, the costs a cluster user sizes a job with:
core-seconds per 1,000 frames for each stage and for the whole local job, bytes written per
1,000 frames (each array and in total), the cost of the durable commit's fsyncs, and what
curating all of Open-X would take at those rates.

Open-X's size is an assumption stated in the result (the registry holds no episode counts):
OPENX_EPISODES and OPENX_STEPS, overridable on the command line. Costs are measured on the
bench's simulated episodes at its image size; label cost grows with the pixels (and the grid)
of a real dataset, so the projection is a lower bound for 256 px sources.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

# "About a million episodes" (issue 12; the Open X-Embodiment paper reports over 1M trajectories).
OPENX_EPISODES = 1_000_000
# Mean steps per episode: an assumption (Bridge's are a few dozen, DROID's a few hundred), to be
# replaced by the real mean of the datasets to be curated.
OPENX_STEPS = 100
# Cores of the cluster the projection's wall time is given for (any other count scales linearly).
PLAN_CORES = 1000


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def local_job_core_seconds(run, src: Path, out: Path) -> dict:
    """Core-seconds of a whole local `curate run` (every stage, orchestration, commits, manifest;
    stats and card as configured by the bench) and the frames it read and wrote."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    summary = run(src, out, "local", 1)
    cpu, wall = _cpu_seconds() - c0, time.perf_counter() - t0
    frames = summary["frames_read_this_run"]
    return {"core_s": cpu, "wall_s": wall, "frames_read": frames,
            "frames_written": summary["frames_written_this_run"], "core_s_per_1000_frames": cpu / frames * 1000}


def stage_rows(alone: dict) -> list[dict]:
    """Core-seconds per 1,000 frames of each stage measured alone (process CPU time, threads
    included) and their sum."""
    frames = alone["frames"]
    rows = [{"stage": k, "core_s_per_1000_frames": v / frames * 1000, "wall_s_per_1000_frames": alone["seconds"][k] / frames * 1000}
            for k, v in alone["cpu_seconds"].items()]
    rows.append({"stage": "total (stages alone)", "core_s_per_1000_frames": sum(alone["cpu_seconds"].values()) / frames * 1000,
                 "wall_s_per_1000_frames": alone["total_s"] / frames * 1000})
    return rows


def bytes_written(out: Path, frames: int) -> dict:
    """Bytes of a finished dataset per 1,000 frames: each shard array (all shards), the
    per-shard metadata and the dataset's tables."""
    per: dict[str, int] = {}
    for path in out.rglob("*"):
        if not path.is_file() or ".job" in path.relative_to(out).parts:
            continue
        rel = path.relative_to(out).parts
        if rel[0] == "shards" and len(rel) > 3:
            key = "/".join(rel[2:-1]) if rel[2] in ("frames", "depth_m") else rel[2]
        elif rel[0] == "shards":
            key = "shard metadata (zarr.json)"
        else:
            key = rel[0]
        per[key] = per.get(key, 0) + path.stat().st_size
    total = sum(per.values())
    return {"frames": frames, "total_bytes": total, "bytes_per_1000_frames": total / frames * 1000,
            "per_array_bytes_per_1000_frames": {k: v / frames * 1000 for k, v in sorted(per.items(), key=lambda kv: -kv[1])}}


def fsync_cost(dataset: Path, workdir: Path, repeats: int = 5) -> dict:
    """The durable commit's fsync of a freshly written shard (every file, then every directory,
    as commit_unit does before its rename) against writing it, per 1,000 frames (median of
    `repeats`; the same shard arrays each time)."""
    from curation import open_dataset
    from schemas.durable import fsync_tree
    from curation.store.writer import EpisodePayload, write_shard_group

    ds = open_dataset(str(dataset))
    payloads = [EpisodePayload(ds.episode_arrays(eid), dict(ds.row(eid))) for eid in ds.episode_ids]
    frames = sum(p.num_frames for p in payloads)
    writes, syncs = [], []
    for _ in range(repeats):
        d = Path(tempfile.mkdtemp(dir=workdir))
        t = time.perf_counter()
        write_shard_group(d / "g", "shard-x", payloads, 16, "none")
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        fsync_tree(d / "g")
        syncs.append(time.perf_counter() - t)
        shutil.rmtree(d)
    w, s = float(np.median(writes)), float(np.median(syncs))
    return {"frames": frames, "write_s_per_1000_frames": w / frames * 1000, "fsync_s_per_1000_frames": s / frames * 1000,
            "fsync_vs_write": s / w, "filesystem_dir": str(workdir), "repeats": repeats}


def openx_projection(core_s_per_1000: float, bytes_per_1000: float, episodes: int = OPENX_EPISODES,
                     steps: int = OPENX_STEPS, cores: int = PLAN_CORES) -> dict:
    frames = episodes * steps
    core_h = core_s_per_1000 * frames / 1000 / 3600
    return {"assumed_episodes": episodes, "assumed_steps_per_episode": steps, "frames": frames,
            "core_hours": core_h, "wall_hours_on_cores": core_h / cores, "cores": cores,
            "bytes": bytes_per_1000 * frames / 1000, "terabytes": bytes_per_1000 * frames / 1000 / 1e12}


def plan_costs(run, alone: dict, src: Path, workdir: Path, episodes: Optional[int] = None,
               steps: Optional[int] = None) -> tuple[dict, list[dict]]:
    """The planning figures (result entry) and their table rows; episodes, steps: the Open-X
    size assumed (default OPENX_EPISODES x OPENX_STEPS)."""
    episodes, steps = episodes or OPENX_EPISODES, steps or OPENX_STEPS
    job = local_job_core_seconds(run, src, workdir / "out-plan-local")
    written = bytes_written(workdir / "out-plan-local", job["frames_written"])
    sync = fsync_cost(workdir / "out-plan-local", workdir)
    proj = openx_projection(job["core_s_per_1000_frames"], written["bytes_per_1000_frames"], episodes, steps)
    rows = [{"measure": f"core-s / 1000 frames: {r['stage']}", "value": r["core_s_per_1000_frames"], "unit": "core-s",
             "note": f"wall {r['wall_s_per_1000_frames']:.1f} s"} for r in stage_rows(alone)]
    rows += [
        {"measure": "core-s / 1000 frames: whole local job", "value": job["core_s_per_1000_frames"], "unit": "core-s",
         "note": f"{job['frames_read']} frames read, {job['frames_written']} written, wall {job['wall_s']:.1f} s"},
        {"measure": "bytes written / 1000 frames", "value": written["bytes_per_1000_frames"] / 1e6, "unit": "MB",
         "note": ", ".join(f"{k} {v / 1e6:.1f}" for k, v in list(written["per_array_bytes_per_1000_frames"].items())[:4])},
        {"measure": "fsync of a committed shard / 1000 frames", "value": sync["fsync_s_per_1000_frames"], "unit": "s",
         "note": f"{sync['fsync_vs_write']:.2f}x the shard's write ({sync['write_s_per_1000_frames']:.3f} s)"},
        {"measure": "Open-X: core-hours", "value": proj["core_hours"], "unit": "core-h",
         "note": f"{episodes:,} episodes x {steps} steps (assumed); {proj['wall_hours_on_cores']:.1f} h on {proj['cores']} cores"},
        {"measure": "Open-X: bytes written", "value": proj["terabytes"], "unit": "TB", "note": "at the bench's image size"},
    ]
    return {"stages_core_s_per_1000_frames": stage_rows(alone), "local_job": job, "bytes_written": written,
            "fsync": sync, "openx": proj, "cpus": os.cpu_count()}, rows
