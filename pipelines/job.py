"""The curation job: plan -> (fingerprint pass) -> process units -> finalize.

    run_job(cfg, out_dir) -> summary dict

Resumable: the job holds a lock on DATASET_DIR/.job/lock, removes leftovers of
killed attempts, skips units whose shard is committed (same config content hash),
and finalizes from the commit records. The manifest is written last, atomically,
so a dataset with a manifest is finished.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from schemas.durable import fsync_dir, replace_durably
from curation.store.lock import JOB_DIR, DatasetBusy
from curation.store.lock import dataset_lock as store_lock
from curation.store.writer import (
    COMMIT_RECORD, clean_stale, committed_groups, iter_manifest_rows, read_commit, shard_name, write_json_atomic,
)
from pipelines.attempts import read as read_attempts
from pipelines.config import ConfigError, JobConfig
from pipelines.engines.local import Failure
from pipelines.preflight import check_job
from pipelines.stages import (
    ATTEMPTS_DIR, TRACEBACK_CHARS, FingerprintUnit, ProcessUnit, UnitTask, plan_units, quarantine_row,
)
from schemas.dataset import (
    CONTRACT_VERSION, DATASET_JSON, FILTERED, FILTERED_SCHEMA, MANIFEST, MANIFEST_SCHEMA, QUARANTINE,
    QUARANTINE_SCHEMA, SHARDS_DIR,
)
from schemas.episode import Provenance

log = logging.getLogger(__name__)



class JobError(RuntimeError):
    """The job cannot run as configured (exit status 2)."""


class JobFailed(JobError):
    """The job ran and every unit failed (exit status 1)."""


@contextmanager
def dataset_lock(out_dir: Path):
    """One job per dataset directory (curation.store.lock, held exclusively)."""
    try:
        with store_lock(out_dir) as job_dir:
            yield job_dir
    except DatasetBusy as exc:
        raise JobError(str(exc)) from None


def make_engine(cfg: JobConfig, job_dir: Path):
    runner = cfg.engine.runner
    if runner == "local":
        from pipelines.engines.local import LocalEngine

        return LocalEngine(cfg)
    if runner == "ray":
        from pipelines.engines.ray import RayEngine

        return RayEngine(cfg, job_dir)
    if runner == "beam":
        from pipelines.engines.beam import BeamEngine

        return BeamEngine(cfg, job_dir)
    raise JobError(f"unknown runner {runner!r}")


class _Progress:
    """Progress bar driven by commit records appearing on disk, so it works the same
    for every engine (Beam workers report nothing back until the pipeline ends)."""

    def __init__(self, out_dir: Path, pending: list[UnitTask], enabled: bool):
        self.out_dir, self.enabled = out_dir, enabled
        self.pending = {t.group for t in pending}
        self.total_eps = sum(t.num_episodes for t in pending)
        self.done: set[int] = set()
        self.eps = self.frames = 0
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._bar = None
        self._thread = None

    def __enter__(self):
        if self.enabled:
            from schemas.progress import progress_bar

            self._bar = progress_bar(total=self.total_eps, desc="curate", unit="ep", file=sys.stderr, dynamic_ncols=True)
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(1.0):
            self.poll()

    def poll(self):
        try:  # one directory listing per poll; commit records are read only for new shards
            present = set(os.listdir(self.out_dir / SHARDS_DIR))
        except FileNotFoundError:
            return
        for g in sorted(self.pending - self.done):
            if shard_name(g) not in present:
                continue
            rec = read_commit(self.out_dir / SHARDS_DIR / shard_name(g))
            if rec is None:
                continue
            self.done.add(g)
            n = rec["unit"]["stop"] - rec["unit"]["start"]
            self.eps += n
            self.frames += rec.get("frames", 0)
            if self._bar is not None:
                dt = max(time.perf_counter() - self.t0, 1e-9)
                self._bar.set_postfix({"ep/s": f"{self.eps / dt:.2f}", "frames/s": f"{self.frames / dt:.1f}"}, refresh=False)
                self._bar.update(n)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.poll()
        if self._bar is not None:
            self._bar.close()


TRASH_PREFIX = ".trash-"


def _move_aside_and_delete(out_dir: Path, job_dir: Path) -> None:
    """--overwrite: the old dataset's files are renamed into one hidden trash directory (the
    manifest first, so it stops being a finished dataset at once), then deleted; a crash midway
    leaves an unfinished dataset plus a trash directory the next run removes, never half a dataset
    that looks finished."""
    trash = out_dir / f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for p in (out_dir / MANIFEST, out_dir / DATASET_JSON, out_dir / QUARANTINE, out_dir / FILTERED,
              out_dir / SHARDS_DIR, job_dir / "dedup.json"):
        if p.exists():
            os.rename(p, trash / p.name)
    fsync_dir(out_dir)
    shutil.rmtree(trash)


def _remove_trash(out_dir: Path) -> None:
    for p in out_dir.glob(TRASH_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)


def _job_state(job_dir: Path, cfg: JobConfig, out_dir: Path, overwrite: bool) -> dict:
    """Refuse to resume a dataset made with a different content config."""
    state_path = job_dir / "job.json"
    _remove_trash(out_dir)
    h = cfg.content_hash()
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("config_hash") != h:
            written = sum(len(r.get("episodes", [])) for r in committed_groups(out_dir).values())
            if written == 0:  # an earlier attempt that wrote no episode has nothing to keep
                log.info("%s: replacing an earlier run with another config that wrote no episode", out_dir)
            elif not overwrite:
                raise JobError(
                    f"{out_dir} was started with a different config (hash {state.get('config_hash')} != {h}); "
                    "rerun with the same config to resume, or pass --overwrite to start again")
            _move_aside_and_delete(out_dir, job_dir)
    fingerprint = source_fingerprint(cfg.source.path)
    if state_path.is_file() and not overwrite:
        before = json.loads(state_path.read_text()).get("source_fingerprint")
        if before and before != fingerprint:
            raise JobError(f"{out_dir}: the source {cfg.source.path} changed since this job started (its files' names "
                           "and sizes differ); pass --overwrite to curate it again from the start")
        earlier = json.loads(state_path.read_text()).get("contract_version")
        if earlier and earlier != CONTRACT_VERSION and committed_groups(out_dir):
            raise JobError(f"{out_dir}: its shards were written under data contract {earlier}, this code writes "
                           f"{CONTRACT_VERSION}; a resume would mix the two in one dataset: pass --overwrite to "
                           "curate it again from the start")
    state = {"config_hash": h, "config": cfg.to_record(), "contract_version": CONTRACT_VERSION,
             "source_fingerprint": fingerprint}
    write_json_atomic(state_path, state)
    return state


def source_fingerprint(path: str) -> str:
    """sha256 over the source's file names and sizes (a local path or any fsspec URL): a resume
    must read the same files as the run it continues."""
    import hashlib

    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    files = fs.find(root, detail=True)
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{posixpath.relpath(name, root)}\t{files[name].get('size')}\n".encode())
    return h.hexdigest()[:16]


def check_committed_against_plan(out_dir: Path, committed: dict[int, dict], units) -> None:
    """A committed unit must be the planned unit of its number: same episode range."""
    planned = {u.group: u for u in units}
    for g, record in sorted(committed.items()):
        u = planned.get(g)
        rows = list(record.get("episodes", [])) + list(record.get("quarantine", [])) + list(record.get("filtered", []))
        idx = [int(r["episode_index"]) for r in rows if r.get("episode_index") is not None]
        if u is None or any(not (u.start <= i < u.stop) for i in idx):
            want = f"[{u.start}, {u.stop})" if u is not None else "no unit of that number"
            got = f"[{min(idx)}, {max(idx) + 1})" if idx else "no episodes"
            raise JobError(f"{out_dir}: committed shard {shard_name(g)} holds episodes {got}, but the plan has {want} "
                           "for it; the source or the unit size changed: pass --overwrite")


def _dedup_pass(engine, cfg: JobConfig, units: list[UnitTask], job_dir: Path, progress: bool) -> tuple[dict, float]:
    """Fingerprint every episode once, decide duplicates before anything is labeled;
    the decision is saved so a resumed run uses the same one."""
    path = job_dir / "dedup.json"
    if path.is_file():
        return json.loads(path.read_text())["dropped"], 0.0
    from curation.selection.dedup import DedupConfig, Fingerprint, find_duplicates

    t0 = time.perf_counter()
    fps: dict = {}
    results = engine.map_unordered(FingerprintUnit(cfg), units)
    if progress:
        from schemas.progress import progress_bar

        results = progress_bar(results, total=len(units), desc="fingerprints", unit="unit", file=sys.stderr)
    for _unit, res in results:
        if isinstance(res, Failure):
            log.warning("fingerprint pass failed for %s: %s", _unit.describe(), res.error.splitlines()[-1])
            continue
        fps.update({eid: Fingerprint.from_record(rec) for eid, rec in res["fingerprints"].items()})
    pairs = find_duplicates(fps, DedupConfig.from_dict(cfg.curation.dedup))
    dropped = {p.dropped: {"kept": p.kept, "kind": p.kind, "distance": int(p.distance)} for p in pairs}
    write_json_atomic(path, {"dropped": dropped, "fingerprinted": len(fps)})
    return dropped, time.perf_counter() - t0


def _failure_rows(src, task: UnitTask, error: str) -> list[dict]:
    last = error.strip().splitlines()[-1] if error.strip() else "unit failed"
    return [quarantine_row(Provenance(src.name, src.version, task.split, i, task.file, getattr(src, "source_url", "")),
                           "unit", f"unit failed, shard not committed: {last}", error[-TRACEBACK_CHARS:])
            for i in range(task.start, task.stop)]


def _write_table(rows: list[dict], schema, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f.name for f in schema]
    table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=schema)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    pq.write_table(table, tmp)
    replace_durably(tmp, path)


def run_job(cfg: JobConfig, out_dir: str | Path, progress: bool = True, overwrite: bool = False) -> dict:
    if "://" in str(out_dir) and not str(out_dir).startswith("file://"):
        raise JobError(f"--out {out_dir}: a dataset is written to a local or shared POSIX filesystem (shards are "
                       "committed by atomic rename); copy it to object storage with `curate publish`")
    out_dir = Path(str(out_dir).removeprefix("file://")).resolve()
    check_job(cfg)  # a bad value stops the job here, before anything is written
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cfg = cfg.effective()
    with dataset_lock(out_dir) as job_dir:
        src, units, pending, removed, t_plan = _prepare(cfg, out_dir, job_dir, overwrite)
        failures: dict[int, str] = {}
        config_error = None
        engine_stats: dict = {}
        t_dedup = 0.0
        t_run0 = time.perf_counter()
        with make_engine(cfg, job_dir) as engine:
            dropped: dict = {}
            if cfg.curation.dedup is not None and pending:
                dropped, t_dedup = _dedup_pass(engine, cfg, units, job_dir, progress)
            t_units0 = time.perf_counter()
            cpu_units0 = time.process_time()
            labeler, config_error = _engine_labeler(engine, cfg) if pending else (None, None)
            if pending and config_error is None:
                stage = ProcessUnit(cfg, str(out_dir), dropped, labeler=labeler)
                t_units0 = time.perf_counter()
                cpu_units0 = time.process_time()
                with _Progress(out_dir, pending, progress):
                    config_error = _run_units(engine, stage, pending, failures)
            t_units = time.perf_counter() - t_units0
            driver_cpu_units = time.process_time() - cpu_units0
            parallel = engine.parallelism()
            engine_stats = engine.stats()
        t_run = time.perf_counter() - t_run0
        # Attempts lost with a killed worker or node leave their uncommitted tmp shards behind;
        # the engine is shut down now, so nothing can still be writing them.
        late = clean_stale(out_dir)
        if late:
            log.info("removed %d tmp shards of attempts lost during this run", len(late))
        removed = removed + late
        nothing_committed = not committed_groups(out_dir)
        if nothing_committed and (config_error is not None or failures):
            _discard_job(out_dir, job_dir)
        else:
            t = time.perf_counter()
            summary = finalize(cfg, out_dir, src, units, failures, resumed=len(units) - len(pending))
            t_final = time.perf_counter() - t
    if nothing_committed and (config_error is not None or failures):
        _raise_unit_failures(out_dir, created, config_error, failures, len(pending))
    run_records = [r for g, r in committed_groups(out_dir).items() if g in {u.group for u in pending}]
    timings = {"plan": t_plan, "fingerprint_pass": t_dedup, "finalize": t_final, "run": t_run, "units": t_units,
               "wall": time.perf_counter() - t_start, "driver_cpu_units": driver_cpu_units}
    summary.update(_run_statistics(cfg, run_records, timings, parallel))
    summary.update(units_failed=sorted(failures), stale_removed=len(removed), engine=engine_stats,
                   attempts=_attempt_count(out_dir, pending))
    return summary


def _prepare(cfg: JobConfig, out_dir: Path, job_dir: Path, overwrite: bool):
    """Job state, leftovers of killed attempts, the plan and what is already committed:
    (source, units, pending units, removed leftovers, planning seconds)."""
    _job_state(job_dir, cfg, out_dir, overwrite)
    removed = clean_stale(out_dir)
    shutil.rmtree(out_dir / ATTEMPTS_DIR, ignore_errors=True)
    if removed:
        log.info("removed %d leftovers of killed attempts: %s", len(removed), removed[:5])
    t = time.perf_counter()
    src, units = plan_units(cfg)
    t_plan = time.perf_counter() - t
    committed = committed_groups(out_dir)
    wrong = [g for g, r in committed.items() if r.get("config_hash") != cfg.content_hash()]
    if wrong:
        raise JobError(f"{out_dir}: shards {wrong[:5]} were written with another config; use --overwrite")
    check_committed_against_plan(out_dir, committed, units)
    pending = [u for u in units if u.group not in committed]
    log.info("%s: %d episodes in %d units; %d already committed, %d to do (runner %s)",
             cfg.source.path, sum(u.num_episodes for u in units), len(units), len(units) - len(pending),
             len(pending), cfg.engine.runner)
    return src, units, pending, removed, t_plan


def _run_statistics(cfg: JobConfig, run_records: list[dict], t: dict, parallel: int) -> dict:
    """Throughput and stage seconds of this run, from the commit records of its units."""
    stage_s: Counter = Counter()
    for r in run_records:
        stage_s.update(r.get("timings", {}))
    stage_s["plan"] = t["plan"]
    stage_s["fingerprint_pass"] = t["fingerprint_pass"]
    stage_s["finalize"] = t["finalize"]
    frames_done = sum(r.get("frames", 0) for r in run_records)
    frames_read = sum(r.get("counts", {}).get("frames_read", 0) for r in run_records)
    eps_done = sum(r["unit"]["stop"] - r["unit"]["start"] for r in run_records)
    t_run, t_units = t["run"], t["units"]
    return dict(
        runner=cfg.engine.runner, workers=cfg.engine.workers, wall_s=t["wall"], processing_s=t_run,
        episodes_processed_this_run=eps_done, frames_written_this_run=frames_done,
        episodes_per_s=eps_done / t_run if t_run > 0 else 0.0, frames_per_s=frames_done / t_run if t_run > 0 else 0.0,
        units_s=t_units, units_frames_per_s=frames_done / t_units if t_units > 0 else 0.0,
        frames_read_this_run=frames_read, units_read_frames_per_s=frames_read / t_units if t_units > 0 else 0.0,
        stage_seconds={k: round(v, 4) for k, v in stage_s.items()},
        driver_cpu_units_s=t["driver_cpu_units"],
        unit_spans=_unit_spans(run_records, t_units, parallel),
    )


def _engine_labeler(engine, cfg: JobConfig) -> tuple[object, Failure | None]:
    """The engine's shared labeler (Ray's actor pool), or the configuration error that
    stopped it from starting (then no unit runs)."""
    try:
        return engine.labeler(cfg), None
    except ConfigError as exc:
        log.error("the labeler could not start: %s", exc)
        return None, Failure("", str(exc))


def _run_units(engine, stage: ProcessUnit, pending: list[UnitTask], failures: dict[int, str]) -> Failure | None:
    """Run the units, recording failed ones in `failures`. A unit that failed with a
    configuration error (its labeler cannot be built from the config) stops the loop:
    every other unit would fail the same way. Returns that failure, or None."""
    for task, res in engine.map_unordered(stage, pending):
        if not isinstance(res, Failure):
            continue
        failures[task.group] = res.error
        log.error("%s failed, shard not committed: %s", task.describe(), res.error.strip().splitlines()[-1])
        if res.config_error:
            return res
    return None


def _discard_job(out_dir: Path, job_dir: Path) -> None:
    """Remove what a job that committed no unit wrote (its state, dedup decision, attempt
    markers), so that the corrected rerun into the same directory starts afresh."""
    for name in ("job.json", "dedup.json"):
        (job_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / ATTEMPTS_DIR, ignore_errors=True)
    shards = out_dir / SHARDS_DIR
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()


def _raise_unit_failures(out_dir: Path, created: bool, config_error: Failure | None, failures: dict, n_units: int):
    """No unit was committed: nothing is left that looks like a dataset, and one line says why."""
    if created:  # the directory is this run's own: remove it whole (lock included)
        shutil.rmtree(out_dir, ignore_errors=True)
    if config_error is not None:
        when = "after the first failed unit" if failures else "before any unit"
        raise JobError(f"stopped {when}: configuration error: {config_error.config_error}; "
                       f"no dataset written to {out_dir}")
    last = Counter(e.strip().splitlines()[-1] if e.strip() else "unit failed" for e in failures.values())
    reason, n = last.most_common(1)[0]
    raise JobFailed(f"all {n_units} units failed, no dataset written to {out_dir} ({n} of them: {reason})")


def _unit_spans(records: list[dict], t_units: float, workers: int) -> dict:
    """How busy the workers were during the units phase: each committed unit's span
    (start on its worker to commit) summed, against units phase x workers. A busy
    fraction near 1 with slower units means the workers contend for the machine; a low
    one means orchestration (scheduling, start-up, stragglers) left them idle."""
    spans = [r["committed_at"] - r["started_at"] for r in records if "started_at" in r and "committed_at" in r]
    if not spans:
        return {}
    return {"units": len(spans), "sum_s": sum(spans), "mean_s": sum(spans) / len(spans), "max_s": max(spans),
            "workers_seen": len({(r.get("host"), r.get("pid")) for r in records}),
            "busy_fraction": sum(spans) / (t_units * max(1, workers)) if t_units > 0 else None}


def _attempt_count(out_dir: Path, pending: list[UnitTask]) -> dict:
    """Units started this run, attempts made at them, and how many were redone."""
    attempts = read_attempts(out_dir / ATTEMPTS_DIR)
    per_unit = Counter(a.key for a in attempts)
    return {"units": len(pending), "attempts": len(attempts),
            "retried_units": sorted(g for g, v in per_unit.items() if v > 1),
            "retries": sum(v - 1 for v in per_unit.values())}


def finalize(cfg: JobConfig, out_dir: Path, src, units: list[UnitTask], failures: dict[int, str], resumed: int = 0) -> dict:
    """Tables and dataset.json from the commit records, manifest.parquet last."""
    records = committed_groups(out_dir)
    by_group = {u.group: u for u in units}
    records = {g: r for g, r in records.items() if g in by_group}
    rows = iter_manifest_rows(records.values())
    quarantine = [q for g in sorted(records) for q in records[g]["quarantine"]]
    for g, err in sorted(failures.items()):
        if g not in records:
            quarantine.extend(_failure_rows(src, by_group[g], err))
    filtered = [f for g in sorted(records) for f in records[g]["filtered"]]
    planned = sum(u.num_episodes for u in units)
    accounted = len(rows) + len(quarantine) + len({f["episode_id"] for f in filtered})
    missing_units = [u.group for u in units if u.group not in records and u.group not in failures]
    counts = {
        "planned": planned,
        "read": sum(r["counts"]["read"] for r in records.values()),
        "written": len(rows),
        "frames_written": int(sum(r["frame_count"] for r in rows)),
        "anchors_written": int(sum(r["anchor_count"] for r in rows)),
        "filtered": len({f["episode_id"] for f in filtered if f["reason"] != "duplicate"}),
        "filtered_by_reason": dict(sorted(Counter(f["reason"] for f in filtered if f["reason"] != "duplicate").items())),
        "duplicates": sum(1 for f in filtered if f["reason"] == "duplicate"),
        "quarantined": len(quarantine),
        "quarantined_by_stage": dict(sorted(Counter(q["stage"] for q in quarantine).items())),
        "quarantined_by_reason": dict(Counter(_reason_kind(q["reason"]) for q in quarantine).most_common(20)),
        "unaccounted": planned - accounted,
        "units": len(units), "units_resumed": resumed, "units_failed": len(failures),
        "shards": sorted({r["shard"] for r in rows}),
    }
    complete = not failures and not missing_units and counts["unaccounted"] == 0
    _write_table(quarantine, QUARANTINE_SCHEMA, out_dir / QUARANTINE)
    _write_table(filtered, FILTERED_SCHEMA, out_dir / FILTERED)
    info = {
        "contract_version": CONTRACT_VERSION, "created_by": "curate run", "complete": complete,
        "source": {"name": src.name, "version": src.version, "split": cfg.source.split,
                   "path": cfg.source.path, "num_episodes": src.num_episodes},
        "config": cfg.to_record(), "config_hash": cfg.content_hash(),
        "counts": {k: v for k, v in counts.items() if k != "shards"}, "shards": counts["shards"],
    }
    write_json_atomic(out_dir / DATASET_JSON, info)
    _write_table(rows, MANIFEST_SCHEMA, out_dir / MANIFEST)  # last: its presence means finished
    extras = _finalize_extras(cfg, out_dir) if rows else {}
    counts.pop("shards")
    return {"dataset": str(out_dir), "complete": complete, "counts": counts, "extras": extras}


def _reason_kind(reason: str) -> str:
    """Group reasons for the summary: the text before the first detail."""
    return reason.split(" (")[0].split(":")[0][:80]


def _finalize_extras(cfg: JobConfig, out_dir: Path) -> dict:
    """Statistics and the dataset card, after the manifest. Their failure is reported, not
    fatal: the dataset itself is complete."""
    from curation.describe.card import write_card
    from curation.describe.stats import compute_stats

    done = {}
    for flag, fn in (("stats", compute_stats), ("card", write_card)):
        if not getattr(cfg.curation, flag):
            done[flag] = "off"
            continue
        try:
            fn(str(out_dir))
            done[flag] = "written"
        except Exception as exc:  # noqa: BLE001
            log.warning("%s.%s failed: %s", fn.__module__, fn.__name__, exc)
            done[flag] = f"failed: {type(exc).__name__}: {exc}"
    return done
