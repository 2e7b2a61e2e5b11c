"""Training statistics of a written dataset (stats.json), in one streaming pass.

Per source dataset (action and proprio encodings differ between datasets, so
they are never pooled), per dimension: count, mean, std (population, ddof=0),
min, max, q01, q99 of

    actions                     F x A, the dataset's action encoding
    proprio                     F x P
    motion/tracks_px_delta      pixels: tracks_px[t+j] - tracks_px[t], visible and in range at both
    motion/points_cam_m_delta   metres, camera frame: points_cam_m[t+j] - points_cam_m[t], valid_3d at both
    motion/depth_track_m        metres along the optical axis where valid_3d

plus counts: episodes, anchors, frames (total, per source dataset, per split)
and episodes per instruction.

How it streams: every shard is reduced to a `ShardStats` (mergeable partial
statistics) and the partials are merged. mean/std/min/max are exact (Chan's
parallel update of mean and M2). Quantiles come from a DDSketch-style
log-bucket histogram with relative accuracy QUANTILE_ALPHA (0.5%): the
reported q01/q99 is within 0.5% (relative) of a sample value whose rank is
the requested one, clamped to [min, max]; |x| below 1e-9 counts as 0.
Memory is bounded by the number of buckets (a few thousand per dimension),
not by the data.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from schemas.durable import replace_durably
from schemas.dataset import CONTRACT_VERSION, MANIFEST, SHARDS_DIR, STATS_JSON

QUANTILE_ALPHA = 0.005
_GAMMA = (1 + QUANTILE_ALPHA) / (1 - QUANTILE_ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_ABS = 1e-9
QUANTILES = {"q01": 0.01, "q99": 0.99}
ANCHOR_CHUNK = 64  # anchors read at a time from a shard (N K T arrays can be large)


class QuantileSketch:
    """Per-dimension log-bucket histogram (DDSketch); mergeable, bounded memory."""

    def __init__(self, dim: int):
        self.dim = dim
        self.pos = [Counter() for _ in range(dim)]
        self.neg = [Counter() for _ in range(dim)]
        self.zero = np.zeros(dim, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        """values: n x dim float, NaN ignored."""
        for d in range(self.dim):
            v = values[:, d]
            v = v[np.isfinite(v)]
            small = np.abs(v) <= _MIN_ABS
            self.zero[d] += int(small.sum())
            for sign_counter, part in ((self.pos[d], v[v > _MIN_ABS]), (self.neg[d], -v[v < -_MIN_ABS])):
                if part.size:
                    keys = np.ceil(np.log(part.astype(np.float64)) / _LOG_GAMMA).astype(np.int64)
                    lo = int(keys.min())
                    counts = np.bincount(keys - lo)  # O(n); keys span a few thousand buckets at most
                    nz = np.flatnonzero(counts)
                    sign_counter.update(dict(zip((nz + lo).tolist(), counts[nz].tolist())))

    def merge(self, other: "QuantileSketch") -> None:
        for d in range(self.dim):
            self.pos[d].update(other.pos[d])
            self.neg[d].update(other.neg[d])
        self.zero += other.zero

    def quantile(self, d: int, q: float) -> float:
        n = int(self.zero[d] + sum(self.pos[d].values()) + sum(self.neg[d].values()))
        if n == 0:
            return float("nan")
        rank = q * (n - 1)
        seen = 0
        # ascending order: most negative first (largest key of neg), then zero, then positive
        for k in sorted(self.neg[d], reverse=True):
            seen += self.neg[d][k]
            if seen > rank:
                return -2.0 * _GAMMA**k / (_GAMMA + 1)
        seen += int(self.zero[d])
        if seen > rank:
            return 0.0
        for k in sorted(self.pos[d]):
            seen += self.pos[d][k]
            if seen > rank:
                return 2.0 * _GAMMA**k / (_GAMMA + 1)
        return 2.0 * _GAMMA ** max(self.pos[d]) / (_GAMMA + 1)


class RunningStats:
    """Exact count / mean / M2 / min / max per dimension plus a quantile sketch."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = np.zeros(dim, dtype=np.int64)
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self.sketch = QuantileSketch(dim)

    def update(self, values: np.ndarray) -> None:
        """values: n x dim; non-finite entries are ignored per element."""
        values = np.asarray(values, dtype=np.float64).reshape(-1, self.dim)
        if values.shape[0] == 0:
            return
        finite = np.isfinite(values)
        if finite.all():  # the common case: no masking passes
            n_b = np.full(self.dim, values.shape[0], dtype=np.int64)
            mean_b = values.mean(axis=0)
            centred = values - mean_b
            m2_b = np.einsum("ij,ij->j", centred, centred)
            lo, hi = values.min(axis=0), values.max(axis=0)
        else:
            n_b = finite.sum(axis=0)
            masked = np.where(finite, values, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, masked.sum(axis=0) / np.maximum(n_b, 1), 0.0)
                m2_b = np.where(finite, (values - mean_b) ** 2, 0.0).sum(axis=0)
            lo = np.where(finite, values, np.inf).min(axis=0)
            hi = np.where(finite, values, -np.inf).max(axis=0)
        self._combine(n_b, mean_b, m2_b)
        self.min = np.minimum(self.min, lo)
        self.max = np.maximum(self.max, hi)
        self.sketch.update(values)

    def _combine(self, n_b, mean_b, m2_b) -> None:
        n_a = self.count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean_b - self.mean
            frac = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            self.mean = self.mean + delta * frac
            self.m2 = self.m2 + m2_b + delta**2 * n_a * frac
        self.count = n

    def merge(self, other: "RunningStats") -> None:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim} dims into {self.dim} dims")
        self._combine(other.count, other.mean, other.m2)
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)
        self.sketch.merge(other.sketch)

    def to_dict(self) -> dict:
        empty = self.count == 0
        std = np.sqrt(np.where(empty, np.nan, self.m2 / np.maximum(self.count, 1)))
        out = {
            "dim": self.dim,
            "count": self.count.tolist(),
            "mean": np.where(empty, np.nan, self.mean).tolist(),
            "std": std.tolist(),
            "min": np.where(empty, np.nan, self.min).tolist(),
            "max": np.where(empty, np.nan, self.max).tolist(),
        }
        for name, q in QUANTILES.items():
            out[name] = [
                float(np.clip(self.sketch.quantile(d, q), self.min[d], self.max[d])) if not empty[d] else float("nan")
                for d in range(self.dim)
            ]
        return out


@dataclass
class SourceStats:
    """Partial statistics of one source dataset."""

    episodes: int = 0
    frames: int = 0
    anchors: int = 0
    splits: Counter = field(default_factory=Counter)
    action_encodings: set = field(default_factory=set)
    arrays: dict[str, RunningStats] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray) -> None:
        values = np.asarray(values)
        dim = values.shape[-1] if values.ndim > 1 else 1
        values = values.reshape(-1, dim)
        if name not in self.arrays:
            self.arrays[name] = RunningStats(dim)
        self.arrays[name].update(values)

    def merge(self, other: "SourceStats") -> None:
        self.episodes += other.episodes
        self.frames += other.frames
        self.anchors += other.anchors
        self.splits.update(other.splits)
        self.action_encodings |= other.action_encodings
        for name, st in other.arrays.items():
            if name in self.arrays:
                self.arrays[name].merge(st)
            else:
                self.arrays[name] = st


@dataclass
class ShardStats:
    """Mergeable partial statistics of any set of episodes (one shard, or merged)."""

    sources: dict[str, SourceStats] = field(default_factory=lambda: defaultdict(SourceStats))
    instructions: Counter = field(default_factory=Counter)

    def merge(self, other: "ShardStats") -> "ShardStats":
        for name, st in other.sources.items():
            self.sources[name].merge(st)
        self.instructions.update(other.instructions)
        return self


def _rows_index(starts: Iterable[int], counts: Iterable[int]) -> np.ndarray:
    parts = [np.arange(s, s + c, dtype=np.int64) for s, c in zip(starts, counts)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _motion_values(group, index: np.ndarray, out: SourceStats) -> None:
    """Add motion statistics of the anchors `index` (sorted) of a shard group."""
    names = set(group.array_keys())
    if "tracks_px" not in names:
        return
    for lo in range(0, len(index), ANCHOR_CHUNK):
        idx = index[lo : lo + ANCHOR_CHUNK]
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        local = idx - idx[0]
        tracks = np.asarray(group["tracks_px"][sl])[local]  # n K T 2
        ok = np.asarray(group["visible"][sl])[local] & np.asarray(group["in_range"][sl])[local][:, None, :]  # n K T
        both = ok[:, :, 1:] & ok[:, :, :1]
        delta = tracks[:, :, 1:] - tracks[:, :, :1]
        out.add("motion/tracks_px_delta", delta[both])
        if "points_cam_m" in names and "valid_3d" in names:
            pts = np.asarray(group["points_cam_m"][sl])[local]  # n K T 3
            v3 = np.asarray(group["valid_3d"][sl])[local]
            both3 = v3[:, :, 1:] & v3[:, :, :1]
            out.add("motion/points_cam_m_delta", (pts[:, :, 1:] - pts[:, :, :1])[both3])
            if "depth_track_m" in names:
                depth = np.asarray(group["depth_track_m"][sl])[local]
                out.add("motion/depth_track_m", depth[v3][:, None])


def shard_stats(dataset_dir: str, shard: str, rows: list[dict], storage_options: dict | None = None) -> ShardStats:
    """Partial statistics of the manifest `rows` stored in `shard`."""
    import zarr

    path = posixpath.join(str(dataset_dir), SHARDS_DIR, shard.split("/")[-1])
    try:
        group = zarr.open_group(path, mode="r", storage_options=storage_options) if "://" in path else zarr.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - any open failure names the shard
        raise ValueError(f"{path}: cannot open shard group ({type(exc).__name__}: {exc})") from exc
    names = set(group.array_keys())
    part = ShardStats()
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_source[r["dataset"]].append(r)
        part.instructions[(r.get("language") or "").strip()] += 1
    actions = np.asarray(group["actions"][:]) if "actions" in names else None
    proprio = np.asarray(group["proprio"][:]) if "proprio" in names else None
    for source, srows in by_source.items():
        st = part.sources[source]
        srows = sorted(srows, key=lambda r: r["frame_start"])
        st.episodes += len(srows)
        st.frames += sum(int(r["frame_count"]) for r in srows)
        st.anchors += sum(int(r["anchor_count"]) for r in srows)
        st.splits.update(r["split"] for r in srows)
        st.action_encodings.update(r.get("action_encoding") or "" for r in srows)
        fidx = _rows_index((r["frame_start"] for r in srows), (r["frame_count"] for r in srows))
        if actions is None:
            raise ValueError(f"{path}: shard has no 'actions' array")
        if fidx.size and fidx.max() >= actions.shape[0]:
            raise ValueError(f"{path}: manifest frame range ends at {fidx.max() + 1} but 'actions' has {actions.shape[0]} rows")
        st.add("actions", actions[fidx])
        if proprio is not None and all((r.get("proprio_dim") or 0) > 0 for r in srows):
            st.add("proprio", proprio[fidx])
        aidx = np.sort(_rows_index((r["anchor_start"] for r in srows), (r["anchor_count"] for r in srows)))
        if aidx.size:
            _motion_values(group, aidx, st)
    return part


def _read_manifest(dataset_dir: str, storage_options: dict | None = None) -> list[dict]:
    import fsspec
    import pyarrow.parquet as pq

    path = posixpath.join(str(dataset_dir), MANIFEST)
    fs, fpath = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if not fs.exists(fpath):
        raise FileNotFoundError(f"{path}: no manifest (is {dataset_dir} a written dataset?)")
    with fs.open(fpath, "rb") as f:
        return pq.read_table(f).to_pylist()


def stats_from_partial(total: ShardStats) -> dict:
    datasets = {}
    for name in sorted(total.sources):
        st = total.sources[name]
        datasets[name] = {
            "episodes": st.episodes,
            "frames": st.frames,
            "anchors": st.anchors,
            "splits": dict(sorted(st.splits.items())),
            "action_encoding": sorted(st.action_encodings),
            **{arr: st.arrays[arr].to_dict() for arr in sorted(st.arrays)},
        }
    return {
        "contract_version": CONTRACT_VERSION,
        "quantile_method": f"DDSketch log buckets, relative accuracy {QUANTILE_ALPHA}; mean/std/min/max exact; std ddof=0",
        "counts": {
            "episodes": sum(d["episodes"] for d in datasets.values()),
            "anchors": sum(d["anchors"] for d in datasets.values()),
            "frames": sum(d["frames"] for d in datasets.values()),
            "per_dataset": {k: d["episodes"] for k, d in datasets.items()},
            "per_instruction": dict(sorted(total.instructions.items(), key=lambda kv: (-kv[1], kv[0]))),
        },
        "datasets": datasets,
    }


def compute_stats(
    dataset_dir: str,
    write: bool = True,
    storage_options: Optional[dict] = None,
    progress: bool = True,
) -> dict:
    """Statistics of the dataset at `dataset_dir` (a directory or fsspec URL);
    written to `<dataset_dir>/stats.json` unless write=False. One pass over the
    shards, each reduced to mergeable partial statistics."""
    from schemas.progress import progress_bar

    rows = _read_manifest(dataset_dir, storage_options)
    by_shard: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_shard[r["shard"]].append(r)
    total = ShardStats()
    for shard in progress_bar(sorted(by_shard), desc="stats", unit="shard", disable=not progress, leave=False):
        total.merge(shard_stats(dataset_dir, shard, by_shard[shard], storage_options))
    result = stats_from_partial(total)
    if write:
        import fsspec

        from curation.formats import to_json

        path = posixpath.join(str(dataset_dir), STATS_JSON)
        fs, local_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            tmp = Path(local_path).with_name(f".tmp-{STATS_JSON}-{os.getpid()}")
            tmp.write_text(to_json(result) + "\n")
            replace_durably(tmp, local_path)  # a reader never sees a half-written stats.json
        else:
            with fs.open(local_path, "w") as f:  # one PUT: an object store shows all of it or nothing
                f.write(to_json(result) + "\n")
    return result


def load_stats(dataset_dir: str) -> dict:
    import fsspec

    with fsspec.open(posixpath.join(str(dataset_dir), STATS_JSON), "r") as f:
        return json.load(f)
