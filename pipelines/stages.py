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
import os
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from labelers.threads import limit_threads
from pipelines import attempts
from pipelines.config import JobConfig
from curation.store.writer import EpisodePayload, commit_unit
from schemas.dataset import spec_for
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


@dataclass(frozen=True)
class Resources:
    """What one call of a stage needs, declared by the stage and read by the engines (they size
    their pools and place the work from it; none of them knows what a stage does):
    `cpus` and `gpus` per call, `model` when the stage holds a model best loaded once per
    worker (then the Ray engine runs it in an actor pool)."""

    cpus: float = 1.0
    gpus: float = 0.0
    model: bool = False


CPU_STAGE = Resources()  # a plain function handed to an engine: one core, no model


def resources_of(stage: Callable) -> Resources:
    """The resources a stage declares (its `resources` attribute); a plain function is a CPU_STAGE."""
    return getattr(stage, "resources", CPU_STAGE)


def label_resources(cfg: JobConfig) -> Resources:
    """The label stage of the job: a model to load once when a chosen backend declares one
    (labelers.backends), `engine.num_gpus["label"]` GPUs per worker. Its calls are made from inside
    a unit task, which holds the CPU: no CPU of its own."""
    return Resources(cpus=0.0, gpus=float(cfg.engine.num_gpus.get("label", 0.0)), model=cfg.label_config().loads_model())


# ---------------------------------------------------------------------------------------
# Source access (cached per process: a worker opens a dataset once)
# ---------------------------------------------------------------------------------------

_SOURCES: dict[tuple, Any] = {}
_LABELERS: dict[str, Any] = {}


def open_source(path: str, split: str, decode_threads: int | None = None):
    key = (path, split, decode_threads)
    if key not in _SOURCES:
        from curation.sources.rlds import RLDSSource

        _SOURCES[key] = RLDSSource(path, split, decode_threads=decode_threads)
    return _SOURCES[key]


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


def check_limits(ep: Episode, src) -> None:
    """EpisodeError(reason "limit: ...") for an episode past source.max_steps / max_frame_pixels /
    max_episode_bytes."""
    frames = list(ep.frames.values())
    steps = int(ep.actions.shape[0])
    pixels = max((f.shape[1] * f.shape[2] for f in frames), default=0)
    nbytes = sum(a.nbytes for a in frames + list(ep.depth_m.values()) + [ep.actions])
    for what, value, bound, key in ((f"{steps} steps", steps, src.max_steps, "max_steps"),
                                    (f"{pixels} pixels per frame", pixels, src.max_frame_pixels, "max_frame_pixels"),
                                    (f"{nbytes} bytes", nbytes, src.max_episode_bytes, "max_episode_bytes")):
        if value > bound:
            raise EpisodeError(ep.provenance.describe(), f"limit: {what} > source.{key} = {bound}", stage="limit")


def filtered_row(prov: Provenance, reason: str, detail: str = "", duplicate_of: str | None = None) -> dict:
    return {"episode_id": prov.episode_id, "dataset": prov.dataset, "split": prov.split,
            "episode_index": int(prov.episode_index), "source_file": prov.file, "reason": reason,
            "detail": detail, "duplicate_of": duplicate_of}


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, EpisodeError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


# A quarantine row keeps the innermost frames of the error, enough to find the failing line.
TRACEBACK_FRAMES = 4
TRACEBACK_CHARS = 2000


def _short_tb(exc: BaseException) -> str:
    """The last frames of the traceback, for the quarantine row: the home directory shown as ~ and
    the host name as <host>, so a published quarantine table names no machine or user."""
    import socket

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES))
    home, host = os.path.expanduser("~"), socket.gethostname()
    if home and home != "/":
        text = text.replace(home, "~")
    if host:
        text = text.replace(host, "<host>")
    return text[-TRACEBACK_CHARS:]


# Mixes the job seed into the episode's id for its seed: a prime above any seed a config sets, so
# distinct job seeds move every episode's seed (numpy seeds are 32-bit: the result is taken mod 2**32).
SEED_MULTIPLIER = 1_000_003


def _set_seeds(seed: int, episode_id: str) -> None:
    """Per-episode seed, so a labeler with randomness gives the same labels on any
    engine, worker and retry."""
    s = (int(seed) * SEED_MULTIPLIER + int(episode_id, 16)) % (2**32)
    np.random.seed(s)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(s)


# ---------------------------------------------------------------------------------------
# Pass 1: fingerprints for near-duplicate detection
# ---------------------------------------------------------------------------------------

class FingerprintUnit:
    """UnitTask -> {"group", "fingerprints": {episode_id: Fingerprint.to_record()}, "seconds"}:
    plain JSON-able data, whatever the engine ships results with. Bad episodes are skipped here;
    pass 2 quarantines them."""

    resources = CPU_STAGE

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    def __call__(self, task: UnitTask) -> dict:
        from curation.selection.dedup import DedupConfig, fingerprint

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
                        fps[item.episode_id] = fingerprint(item, dcfg).to_record()
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
    """The shard arrays of one episode (SHARD_ARRAYS names), in the contract's dtypes."""
    stored = [c for c in ep.frames if c not in ep.blank_cameras]
    values: dict[str, Any] = {}
    for cam in stored:
        values[f"frames/{cam}"] = ep.frames[cam]
        if cam in ep.depth_m:
            values[f"depth_m/{cam}"] = ep.depth_m[cam]
    values["actions"] = ep.actions
    if ep.proprio is not None:
        values["proprio"] = ep.proprio
    values.update({"anchor_step": labels.anchors, "tracks_px": labels.tracks_px, "visible": labels.visible,
                   "in_range": labels.in_range})
    optional = {"depth_track_m": labels.depth_m, "points_cam_m": labels.points_cam_m, "valid_3d": labels.valid_3d,
                "motion_image": labels.motion_image, "flow_valid": labels.flow_valid,
                "latent_tokens": labels.latent_tokens, "latent_valid": labels.latent_valid}
    values.update({name: value for name, value in optional.items() if value is not None})
    return {name: np.asarray(value, dtype=spec_for(name).dtype) for name, value in values.items()}


def source_frames(ep: Episode, arrays: dict[str, np.ndarray]) -> dict:
    """{"frames/{camera}": the source's encoded frames} of the stored cameras that have them."""
    return {f"frames/{cam}": enc for cam, enc in ep.encoded_frames.items()
            if f"frames/{cam}" in arrays and len(enc.blobs) == arrays[f"frames/{cam}"].shape[0]}


def manifest_row(ep: Episode, labels: EpisodeLabels, arrays: dict[str, np.ndarray]) -> dict:
    """The manifest row of an episode, less shard, offsets and checksum (the writer's)."""
    from curation.selection.filters import mean_visibility, track_displacement_px

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
    cameras = [k.split("/", 1)[1] for k in sorted(arrays) if k.startswith("frames/")]
    return {
        "episode_id": ep.episode_id, "dataset": p.dataset, "version": p.version, "split": p.split,
        "episode_index": int(p.episode_index), "source_file": p.file, "language": ep.language,
        "language_informative": bool(ep.language_informative),
        "primary_camera": ep.primary_camera, "cameras": cameras,
        "camera_sizes": [[int(d) for d in arrays[f"frames/{c}"].shape[1:3]] for c in cameras],
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


# Markers of the attempts at each unit (pipelines.attempts, keyed by shard group): the job counts
# them to report retried work (a Ray task redone after its worker or node died, a Beam bundle retried).
ATTEMPTS_DIR = ".job/attempts"


class ProcessUnit:
    """UnitTask -> the unit's commit record (shard written and committed).

    `labeler`: a callable Episode -> EpisodeLabels; None uses this process's own
    EpisodeLabeler (the Ray engine passes a proxy to its labeler actor pool).
    `duplicates`: {dropped episode_id: {"kept", "kind", "distance"}} from pass 1."""

    resources = CPU_STAGE

    def __init__(self, cfg: JobConfig, out_dir: str, duplicates: dict | None = None,
                 labeler: Callable[[Episode], EpisodeLabels] | None = None):
        self.cfg = cfg
        self.out_dir = str(out_dir)
        self.duplicates = duplicates or {}
        self.labeler = labeler

    def _filter_config(self):
        if self.cfg.curation.filters is None:
            return None
        from curation.selection.filters import FilterConfig

        return FilterConfig.from_dict(self.cfg.curation.filters)

    def __call__(self, task: UnitTask) -> dict:
        attempts.mark(os.path.join(self.out_dir, ATTEMPTS_DIR), task.group)
        started_at = time.time()
        run = _UnitRun(task, self._filter_config(), self.labeler or local_labeler(self.cfg), self.duplicates,
                       self.cfg.seed, self.cfg.source)
        limit_threads(self.cfg.engine.threads_per_worker)
        run.read(open_source(self.cfg.source.path, self.cfg.source.split, self.cfg.engine.threads_per_worker))
        record = {"unit": {"group": task.group, "split": task.split, "start": task.start, "stop": task.stop,
                           "file": task.file},
                  "config_hash": self.cfg.content_hash(), "counts": run.counts,
                  "quarantine": run.quarantine, "filtered": run.filtered, "timings": dict(run.timings),
                  "started_at": started_at}  # with the commit's committed_at: the unit's span on its worker
        return commit_unit(self.out_dir, task.group, run.payloads, record,
                           self.cfg.writer.frames_per_chunk, self.cfg.writer.compression, self.cfg.writer.frames)


class _UnitRun:
    """The episodes of one unit through check -> filter -> label -> filter -> arrays, each ending
    in exactly one of `payloads` (to write), `filtered` or `quarantine`; per-stage seconds in
    `timings`."""

    def __init__(self, task: UnitTask, fcfg, labeler: Callable[[Episode], EpisodeLabels], duplicates: dict,
                 seed: int, limits):
        self.task, self.fcfg, self.labeler, self.duplicates, self.seed = task, fcfg, labeler, duplicates, seed
        self.limits = limits  # SourceConfig: max_steps, max_frame_pixels, max_episode_bytes
        self.timings: dict[str, float] = defaultdict(float)
        self.payloads: list[EpisodePayload] = []
        self.quarantine: list[dict] = []
        self.filtered: list[dict] = []
        self.counts = {"read": 0, "frames_read": 0}

    def read(self, src) -> None:
        """Every episode of the unit. The reader yields one item per episode, in order; a truncated
        file ends the unit early, and whatever was not yielded is quarantined as not readable."""
        task = self.task
        seen: set[int] = set()
        last_error = ""
        idx = task.start
        t_read = time.perf_counter()
        try:
            for item in src.read_unit(task.unit, on_error="yield"):
                self.timings["read"] += time.perf_counter() - t_read
                prov = _provenance_of(item) or self._prov_at(src, idx)
                idx = int(prov.episode_index) + 1
                seen.add(int(prov.episode_index))
                if isinstance(item, BaseException):
                    last_error = _reason_of(item)
                    self.quarantine.append(quarantine_row(prov, getattr(item, "stage", "read"), last_error, str(item)))
                else:
                    self.counts["read"] += 1
                    self.counts["frames_read"] += item.num_steps
                    self.episode(item)
                t_read = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - the reader died mid-unit
            self.timings["read"] += time.perf_counter() - t_read
            last_error = f"reader failed: {_reason_of(exc)}"
        for i in range(task.start, task.stop):
            if i not in seen:
                reason = f"not readable ({last_error or 'reader yielded fewer episodes than planned'})"
                self.quarantine.append(quarantine_row(self._prov_at(src, i), "read", reason))

    def _prov_at(self, src, idx: int) -> Provenance:
        return Provenance(src.name, src.version, self.task.split, idx, self.task.file, getattr(src, "source_url", ""))

    def _timed(self, stage: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.timings[stage] += time.perf_counter() - t
        return out

    def _dropped_by_filters(self, ep: Episode, labels, when: str) -> bool:
        """Apply the filters (cheap ones before labeling, all after); record the reasons."""
        from curation.selection.filters import apply_filters

        if self.fcfg is None:
            return False
        reasons = self._timed("filter", apply_filters, ep, labels, self.fcfg)
        self.filtered.extend(filtered_row(ep.provenance, r, when) for r in reasons)
        return bool(reasons)

    def episode(self, ep: Episode) -> None:
        prov = ep.provenance
        dup = self.duplicates.get(ep.episode_id)
        if dup is not None:
            self.filtered.append(filtered_row(prov, "duplicate", f"{dup['kind']} distance {dup['distance']}", dup["kept"]))
            return
        stage = "check"
        try:
            self._timed("check", ep.check)
            stage = "limit"
            check_limits(ep, self.limits)
            stage = "filter"
            if self._dropped_by_filters(ep, None, "before labeling"):
                return
            stage = "label"
            _set_seeds(self.seed, ep.episode_id)
            labels = self._timed("label", self.labeler, ep)
            stage = "filter"
            if self._dropped_by_filters(ep, labels, "after labeling"):
                return
            stage = "contract"
            self.payloads.append(self._timed("arrays", self._payload, ep, labels))
        except Exception as exc:  # noqa: BLE001 - one bad episode never stops the unit
            log.warning("quarantined %s at %s: %s", prov.describe(), stage, _reason_of(exc))
            self.quarantine.append(quarantine_row(prov, stage, _reason_of(exc), _short_tb(exc)))

    @staticmethod
    def _payload(ep: Episode, labels: EpisodeLabels) -> EpisodePayload:
        from curation.store.validate import check_episode_arrays

        arrays = episode_arrays(ep, labels)
        problems = check_episode_arrays(arrays)
        if problems:
            raise EpisodeError(ep.provenance.describe(), "; ".join(problems[:5]), stage="contract")
        return EpisodePayload(arrays, manifest_row(ep, labels, arrays), source_frames(ep, arrays))
