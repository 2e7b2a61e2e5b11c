"""The stages of a curation job, as plain functions and callable classes.

    plan_units            source -> [UnitTask]             (driver)
    FingerprintUnit       UnitTask -> fingerprints          (pass 1, only when dedup is on)
    ProcessUnit           UnitTask -> commit record         (pass 2: read -> check -> filter ->
                                                             label -> filter -> arrays -> write shard)

Nothing here knows which engine runs it: the local, Beam and Ray engines call
the same objects. Every episode of a unit ends in exactly one place: a
manifest row, a filtered row or a quarantine row, all in the unit's commit
record. A unit is the work of one worker and becomes one shard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from pipelines.config import JobConfig
from pipelines.writer import EpisodePayload, commit_unit
from schemas.episode import Episode, EpisodeError, Provenance
from schemas.triplet import EpisodeLabels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitTask:
    """One work unit of the job: the episodes [start, stop) of `split` in `file`,
    processed by one worker into shard `group`."""

    group: int
    split: str
    start: int
    stop: int
    file: str = ""
    unit: Any = None  # the source's own WorkUnit object, handed back to read_unit

    @property
    def num_episodes(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return f"unit {self.group} ({self.split}[{self.start}:{self.stop}] {self.file})"


# ---------------------------------------------------------------------------------------
# Source access (cached per process: a worker opens a dataset once)
# ---------------------------------------------------------------------------------------

_SOURCES: dict[tuple, Any] = {}
_LABELERS: dict[str, Any] = {}


def open_source(path: str, split: str, decode_threads: int | None = None):
    key = (path, split, decode_threads)
    if key not in _SOURCES:
        from curation.rlds import RLDSSource

        _SOURCES[key] = RLDSSource(path, split, decode_threads=decode_threads)
    return _SOURCES[key]


def limit_threads(n: int) -> None:
    """Keep a worker to its share of the machine: one engine worker per core scales only
    if OpenCV's and torch's own thread pools don't each spread over every core."""
    import cv2
    import torch

    n = max(1, int(n))
    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def plan_units(cfg: JobConfig) -> tuple[Any, list[UnitTask]]:
    """Deterministic work units (hence shards) of the job: the source's units of
    `shard_episodes` episodes, clipped to the configured episode range, in order."""
    src = open_source(cfg.source.path, cfg.source.split)
    lo = cfg.source.start or 0
    hi = cfg.source.stop if cfg.source.stop is not None else src.num_episodes
    tasks = []
    for u in src.work_units(episodes_per_unit=cfg.writer.shard_episodes):
        start, stop = max(u.start, lo), min(u.stop, hi)
        if start >= stop:
            continue
        if (start, stop) != (u.start, u.stop):
            u = dataclasses.replace(u, start=start, stop=stop)
        tasks.append(UnitTask(len(tasks), u.split, start, stop, str(getattr(u, "file", "")), u))
    return src, tasks


def _provenance_of(item: Any) -> Optional[Provenance]:
    return getattr(item, "provenance", None)


def quarantine_row(prov: Provenance, stage: str, reason: str, error: str = "") -> dict:
    return {"episode_id": prov.episode_id, "dataset": prov.dataset, "split": prov.split,
            "episode_index": int(prov.episode_index), "source_file": prov.file, "stage": stage,
            "reason": reason, "error": error}


def filtered_row(prov: Provenance, reason: str, detail: str = "", duplicate_of: str | None = None) -> dict:
    return {"episode_id": prov.episode_id, "dataset": prov.dataset, "split": prov.split,
            "episode_index": int(prov.episode_index), "source_file": prov.file, "reason": reason,
            "detail": detail, "duplicate_of": duplicate_of}


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, EpisodeError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


def _short_tb(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))[-2000:]


def _set_seeds(seed: int, episode_id: str) -> None:
    """Per-episode seed, so a labeler with randomness gives the same labels on any
    engine, worker and retry."""
    s = (int(seed) * 1_000_003 + int(episode_id, 16)) % (2**32)
    np.random.seed(s)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(s)


# ---------------------------------------------------------------------------------------
# Pass 1: fingerprints for near-duplicate detection
# ---------------------------------------------------------------------------------------

class FingerprintUnit:
    """UnitTask -> {"group", "fingerprints": {episode_id: Fingerprint}, "seconds"}.
    Bad episodes are skipped here; pass 2 quarantines them."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def __call__(self, task: UnitTask) -> dict:
        from curation.dedup import DedupConfig, fingerprint

        dcfg = DedupConfig.from_dict(self.cfg.curation.dedup)
        t0 = time.perf_counter()
        fps = {}
        limit_threads(self.cfg.engine.threads_per_worker)
        src = open_source(self.cfg.source.path, self.cfg.source.split, self.cfg.engine.threads_per_worker)
        try:
            for item in src.read_unit(task.unit, on_error="yield"):
                if isinstance(item, Episode):
                    try:
                        item.check()
                        fps[item.episode_id] = fingerprint(item, dcfg)
                    except Exception:  # noqa: BLE001 - pass 2 records the error
                        continue
        except Exception as exc:  # noqa: BLE001
            log.warning("fingerprint pass: %s failed (%s); pass 2 will quarantine it", task.describe(), exc)
        return {"group": task.group, "fingerprints": fps, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------
# Pass 2: one unit end to end
# ---------------------------------------------------------------------------------------

def local_labeler(cfg: JobConfig) -> Callable[[Episode], EpisodeLabels]:
    """The EpisodeLabeler of this process, built once (it may hold models)."""
    key = json.dumps(cfg.labels, sort_keys=True)
    if key not in _LABELERS:
        from labelers.episode_labeler import EpisodeLabeler
        from pipelines.config import ConfigError

        c = cfg.label_config()
        try:
            _LABELERS[key] = EpisodeLabeler(c)
        except (ValueError, TypeError, OSError, ImportError) as exc:  # a backend refused its config or model
            chosen = {"depth": c.depth, "tracker": c.tracker, "flow": c.flow}
            raise ConfigError("labels", chosen, f"the labeler cannot be built: {type(exc).__name__}: {exc}") from exc
    return _LABELERS[key]


def episode_arrays(ep: Episode, labels: EpisodeLabels) -> dict[str, np.ndarray]:
    """The shard arrays of one episode (SHARD_ARRAYS names), in contract dtypes."""
    stored = [c for c in ep.frames if c not in ep.blank_cameras]
    out: dict[str, np.ndarray] = {}
    for cam in stored:
        out[f"frames/{cam}"] = np.asarray(ep.frames[cam], dtype=np.uint8)
        if cam in ep.depth_m:
            out[f"depth_m/{cam}"] = np.asarray(ep.depth_m[cam], dtype=np.float32)
    out["actions"] = np.asarray(ep.actions, dtype=np.float32)
    if ep.proprio is not None:
        out["proprio"] = np.asarray(ep.proprio, dtype=np.float32)
    out["anchor_step"] = np.asarray(labels.anchors, dtype=np.int32)
    out["tracks_px"] = np.asarray(labels.tracks_px, dtype=np.float32)
    out["visible"] = np.asarray(labels.visible, dtype=bool)
    out["in_range"] = np.asarray(labels.in_range, dtype=bool)
    optional = {"depth_track_m": (labels.depth_m, np.float32), "points_cam_m": (labels.points_cam_m, np.float32),
                "valid_3d": (labels.valid_3d, bool), "motion_image": (labels.motion_image, np.uint8),
                "flow_valid": (labels.flow_valid, bool), "latent_tokens": (labels.latent_tokens, np.int16),
                "latent_valid": (labels.latent_valid, bool)}
    for name, (value, dtype) in optional.items():
        if value is not None:
            out[name] = np.asarray(value, dtype=dtype)
    return out


def manifest_row(ep: Episode, labels: EpisodeLabels, arrays: dict[str, np.ndarray]) -> dict:
    """The manifest row of an episode, less shard, offsets and checksum (the writer's)."""
    from curation.filters import mean_visibility, track_displacement_px

    p = ep.provenance
    prim = ep.frames[ep.primary_camera]
    if labels.intrinsics is not None:
        intr, estimated = np.asarray(labels.intrinsics, np.float32), bool(labels.intrinsics_estimated)
    elif ep.primary_camera in ep.intrinsics:
        ci = ep.intrinsics[ep.primary_camera]
        intr, estimated = ci.as_array(), bool(ci.estimated)
    else:
        intr, estimated = None, None
    disp = track_displacement_px(labels)
    disp = disp[np.isfinite(disp)]
    return {
        "episode_id": ep.episode_id, "dataset": p.dataset, "version": p.version, "split": p.split,
        "episode_index": int(p.episode_index), "source_file": p.file, "language": ep.language,
        "primary_camera": ep.primary_camera,
        "cameras": [k.split("/", 1)[1] for k in sorted(arrays) if k.startswith("frames/")],
        "height": int(prim.shape[1]), "width": int(prim.shape[2]), "action_dim": int(ep.actions.shape[1]),
        "action_encoding": ep.action_encoding,
        "proprio_dim": int(ep.proprio.shape[1]) if ep.proprio is not None else None,
        "control_hz": float(ep.control_hz) if ep.control_hz else None,
        "intrinsics": [float(v) for v in intr] if intr is not None else None,
        "intrinsics_estimated": estimated, "depth_kind": labels.depth_kind,
        "backends": json.dumps(labels.backends, sort_keys=True),
        "success": ep.success, "mean_visibility": float(mean_visibility(labels)),
        "motion_px": float(np.median(disp)) if disp.size else 0.0,
    }


ATTEMPTS_DIR = ".job/attempts"


def mark_attempt(out_dir: str, group: int) -> None:
    """One empty file per attempt at a unit: the job counts them to report retried
    work (a Ray task redone after its worker or node died, a Beam bundle retried)."""
    import os
    import uuid

    d = os.path.join(out_dir, ATTEMPTS_DIR)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"unit-{group:05d}.{os.getpid()}.{uuid.uuid4().hex[:8]}"), "w").close()


def read_attempts(out_dir: str) -> list[tuple[int, int]]:
    """(unit group, worker pid) of every attempt marked by `mark_attempt` in this run."""
    import os

    d = os.path.join(out_dir, ATTEMPTS_DIR)
    out = []
    for name in (os.listdir(d) if os.path.isdir(d) else []):
        unit, pid, _ = name.split(".", 2)  # unit-00003.<pid>.<uuid>
        out.append((int(unit.removeprefix("unit-")), int(pid)))
    return out


class ProcessUnit:
    """UnitTask -> the unit's commit record (shard written and committed).

    `labeler`: a callable Episode -> EpisodeLabels; None uses this process's own
    EpisodeLabeler (the Ray engine passes a proxy to its labeler actor pool).
    `duplicates`: {dropped episode_id: {"kept", "kind", "distance"}} from pass 1."""

    def __init__(self, cfg: JobConfig, out_dir: str, duplicates: dict | None = None,
                 labeler: Callable[[Episode], EpisodeLabels] | None = None):
        self.cfg = cfg
        self.out_dir = str(out_dir)
        self.duplicates = duplicates or {}
        self.labeler = labeler

    def _filter_config(self):
        if self.cfg.curation.filters is None:
            return None
        from curation.filters import FilterConfig

        return FilterConfig.from_dict(self.cfg.curation.filters)

    def __call__(self, task: UnitTask) -> dict:
        from curation.filters import apply_filters

        mark_attempt(self.out_dir, task.group)
        started_at = time.time()
        timings: dict[str, float] = defaultdict(float)
        payloads: list[EpisodePayload] = []
        quarantine: list[dict] = []
        filtered: list[dict] = []
        seen: set[int] = set()
        counts = {"read": 0, "frames_read": 0}
        fcfg = self._filter_config()
        labeler = self.labeler or local_labeler(self.cfg)
        limit_threads(self.cfg.engine.threads_per_worker)
        src = open_source(self.cfg.source.path, self.cfg.source.split, self.cfg.engine.threads_per_worker)

        def dropped_by_filters(ep: Episode, labels, when: str) -> bool:
            """Apply the filters (cheap ones before labeling, all after); record the reasons."""
            if fcfg is None:
                return False
            t = time.perf_counter()
            reasons = apply_filters(ep, labels, fcfg)
            timings["filter"] += time.perf_counter() - t
            filtered.extend(filtered_row(ep.provenance, r, when) for r in reasons)
            return bool(reasons)

        def run_episode(ep: Episode) -> None:
            prov = ep.provenance
            dup = self.duplicates.get(ep.episode_id)
            if dup is not None:
                filtered.append(filtered_row(prov, "duplicate", f"{dup['kind']} distance {dup['distance']}", dup["kept"]))
                return
            stage = "check"
            try:
                t = time.perf_counter()
                ep.check()
                timings["check"] += time.perf_counter() - t
                stage = "filter"
                if dropped_by_filters(ep, None, "before labeling"):
                    return
                stage = "label"
                t = time.perf_counter()
                _set_seeds(self.cfg.seed, ep.episode_id)
                labels = labeler(ep)
                timings["label"] += time.perf_counter() - t
                stage = "filter"
                if dropped_by_filters(ep, labels, "after labeling"):
                    return
                stage = "contract"
                t = time.perf_counter()
                arrays = episode_arrays(ep, labels)
                from curation.validate import check_episode_arrays

                problems = check_episode_arrays(arrays)
                if problems:
                    raise EpisodeError(prov.describe(), "; ".join(problems[:5]), stage="contract")
                payloads.append(EpisodePayload(arrays, manifest_row(ep, labels, arrays)))
                timings["arrays"] += time.perf_counter() - t
            except Exception as exc:  # noqa: BLE001 - one bad episode never stops the unit
                log.warning("quarantined %s at %s: %s", prov.describe(), stage, _reason_of(exc))
                quarantine.append(quarantine_row(prov, stage, _reason_of(exc), _short_tb(exc)))

        def prov_at(idx: int) -> Provenance:
            return Provenance(src.name, src.version, task.split, idx, task.file, getattr(src, "source_url", ""))

        # The reader yields one item per episode, in order; a truncated file ends the
        # unit early. Whatever was not yielded is accounted for after the loop.
        last_error = ""
        idx = task.start
        t_read = time.perf_counter()
        try:
            for item in src.read_unit(task.unit, on_error="yield"):
                timings["read"] += time.perf_counter() - t_read
                prov = _provenance_of(item) or prov_at(idx)
                idx = int(prov.episode_index) + 1
                seen.add(int(prov.episode_index))
                if isinstance(item, BaseException):
                    last_error = _reason_of(item)
                    quarantine.append(quarantine_row(prov, getattr(item, "stage", "read"), last_error, str(item)))
                else:
                    counts["read"] += 1
                    counts["frames_read"] += item.num_steps
                    run_episode(item)
                t_read = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - the reader died mid-unit
            timings["read"] += time.perf_counter() - t_read
            last_error = f"reader failed: {_reason_of(exc)}"
        for i in range(task.start, task.stop):
            if i not in seen:
                quarantine.append(quarantine_row(prov_at(i), "read", f"not readable ({last_error or 'reader yielded fewer episodes than planned'})"))
        record = {"unit": {"group": task.group, "split": task.split, "start": task.start, "stop": task.stop,
                           "file": task.file},
                  "config_hash": self.cfg.content_hash(), "counts": counts,
                  "quarantine": quarantine, "filtered": filtered, "timings": dict(timings),
                  "started_at": started_at}  # with the commit's committed_at: the unit's span on its worker
        return commit_unit(self.out_dir, task.group, payloads, record,
                           self.cfg.writer.frames_per_chunk, self.cfg.writer.compression)
