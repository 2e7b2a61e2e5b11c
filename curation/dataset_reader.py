"""The trainer-facing reader: the ONE place that reads a curated dataset.

    ds = open_dataset("out/bridge")                      # a dataset directory
    ds = open_dataset("s3://bucket/datasets/bridge")     # an fsspec URL of one
    ds = open_dataset("file:///registry/bridge@0.1.0")   # a published version (curation.publish)
    for tr in ds.iter_triplets(chunk=10):                # schemas.triplet.Triplet
        ...

A shard's arrays are read in bulk (one Zarr shard file per array), then sliced
per episode and anchor in memory: reading costs one request per array per shard,
never one per element. Memory is one shard at a time.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from schemas.dataset import DATASET_JSON, MANIFEST, SHARD_ARRAYS, SHARDS_DIR, STATS_JSON
from schemas.triplet import DEFAULT_CHUNK, Triplet

FRAME_ARRAYS = {s.name.split("/")[0] for s in SHARD_ARRAYS if s.per == "frame"}
# What a motion-only read (stage-1 pretraining on action-free video) never opens.
ACTION_ARRAYS = ("actions", "proprio")


def array_names(group) -> list[str]:
    """Paths of every array in a Zarr group, nested ones as `frames/image`, sorted."""
    import zarr

    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


class CuratedDataset:
    """A curated dataset on any fsspec filesystem (see open_dataset)."""

    def __init__(self, fs, root: str, ref: str = "", version: Optional[str] = None,
                 storage_options: Optional[dict] = None):
        import pyarrow.parquet as pq

        self.fs, self.root, self.ref, self.version = fs, root.rstrip("/"), ref, version
        self.storage_options = storage_options or {}
        manifest_path = self._path(MANIFEST)
        if not fs.exists(manifest_path):
            raise FileNotFoundError(f"{ref or root}: no {MANIFEST} (not a finished curated dataset)")
        with fs.open(manifest_path, "rb") as f:
            self.manifest = pq.read_table(f)
        self.info = self._json(DATASET_JSON) or {}
        self._rows = self.manifest.to_pylist()
        self._by_id = {r["episode_id"]: r for r in self._rows}

    # ---- metadata ----------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _json(self, name: str) -> Optional[dict]:
        p = self._path(name)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "r") as f:
            return json.load(f)

    @property
    def stats(self) -> Optional[dict]:
        return self._json(STATS_JSON)

    @property
    def shard_names(self) -> list[str]:
        return sorted({r["shard"] for r in self._rows})

    @property
    def episode_ids(self) -> list[str]:
        return [r["episode_id"] for r in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def num_triplets(self, shards: Optional[Sequence[str]] = None) -> int:
        keep = set(shards) if shards is not None else None
        return sum(r["anchor_count"] for r in self._rows if keep is None or r["shard"] in keep)

    def row(self, episode_id: str) -> dict:
        return self._by_id[episode_id]

    # ---- arrays ------------------------------------------------------------------
    def _group(self, shard: str):
        import zarr
        from fsspec.implementations.local import LocalFileSystem

        path = self._path(SHARDS_DIR, shard)
        if isinstance(self.fs, LocalFileSystem):
            return zarr.open_group(path, mode="r")
        return zarr.open_group(self.fs.unstrip_protocol(path), mode="r", storage_options=self.storage_options)

    def read_shard(self, shard: str, skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Every array of a shard but those named in `skip` (top-level names, e.g. "actions"),
        read in bulk: {name: array over the shard's frames/anchors}. Skipped arrays are not opened."""
        group = self._group(shard)
        return {name: group[name][...] for name in array_names(group) if name.split("/")[0] not in skip}

    def episode_arrays(self, episode_id: str, data: Optional[dict] = None) -> dict[str, np.ndarray]:
        """One episode's arrays (frame arrays F x ..., anchor arrays N x ...)."""
        r = self._by_id[episode_id]
        data = data if data is not None else self.read_shard(r["shard"])
        fs, fc, as_, ac = r["frame_start"], r["frame_count"], r["anchor_start"], r["anchor_count"]
        return {n: (a[fs:fs + fc] if n.split("/")[0] in FRAME_ARRAYS else a[as_:as_ + ac]) for n, a in data.items()}

    # ---- triplets ----------------------------------------------------------------
    def iter_triplets(self, shards: Optional[Sequence[str]] = None, chunk: int = DEFAULT_CHUNK,
                      cameras: Optional[Sequence[str]] = None, motion_only: bool = False) -> Iterator[Triplet]:
        """Every anchor of every episode of `shards` (default all), in manifest order.

        action_chunk: C x A from the anchor step; steps past the end of the episode
        are zeros with action_chunk_valid False. images: the anchor frame of each
        camera (or of `cameras`). motion: the anchor's slice of every anchor array
        (tracks_px K T 2, visible K T, in_range T, ... as stored).
        motion_only: frames, language and motion only; the action and proprio arrays are
        never read (the triplet's action_chunk is C x 0, its proprio empty)."""
        wanted = shards if shards is not None else self.shard_names
        by_shard: dict[str, list[dict]] = {}
        for r in self._rows:
            by_shard.setdefault(r["shard"], []).append(r)
        for shard in wanted:
            rows = by_shard.get(shard, [])
            if not rows:
                continue
            data = self.read_shard(shard, skip=ACTION_ARRAYS if motion_only else ())
            cams = [n.split("/", 1)[1] for n in data if n.startswith("frames/")]
            cams = [c for c in cams if cameras is None or c in cameras]
            motion_names = [n for n in data if n.split("/")[0] not in FRAME_ARRAYS and n != "anchor_step"]
            actions = data["actions"] if not motion_only else np.zeros((0, 0), np.float32)  # F A
            proprio = data.get("proprio")
            for r in rows:
                yield from self._episode_triplets(r, data, cams, motion_names, actions, proprio, chunk)

    def _episode_triplets(self, r, data, cams, motion_names, actions, proprio, chunk) -> Iterator[Triplet]:
        fs, fc = r["frame_start"], r["frame_count"]
        intr = np.asarray(r["intrinsics"], np.float32) if r.get("intrinsics") is not None else np.full(4, np.nan, np.float32)
        meta = {k: r.get(k) for k in ("dataset", "split", "episode_index", "shard", "primary_camera", "action_encoding",
                                      "control_hz", "depth_kind", "success", "intrinsics_estimated")}
        meta["backends"] = json.loads(r["backends"]) if r.get("backends") else {}
        A = actions.shape[1]
        for i in range(r["anchor_count"]):
            a = r["anchor_start"] + i
            t = int(data["anchor_step"][a])
            n_valid = max(0, min(chunk, fc - t))
            act = np.zeros((chunk, A), np.float32)
            valid = np.zeros(chunk, bool)
            if A:
                act[:n_valid] = actions[fs + t: fs + t + n_valid]
                valid[:n_valid] = True
            yield Triplet(
                episode_id=r["episode_id"], anchor=t,
                images={c: data[f"frames/{c}"][fs + t] for c in cams},
                proprio=proprio[fs + t] if proprio is not None else np.zeros(0, np.float32),
                language=r.get("language") or "",
                motion={n: data[n][a] for n in motion_names},
                action_chunk=act, action_chunk_valid=valid, intrinsics=intr, meta=meta,
            )


def open_dataset(ref: str, storage_options: Optional[dict] = None) -> CuratedDataset:
    """A curated dataset from a directory, an fsspec URL of one, or `URL/NAME@V`
    (a version published by `curate publish`, resolved by curation.publish)."""
    import fsspec

    ref = str(ref)
    last = ref.rstrip("/").rsplit("/", 1)[-1]
    if "@" in last:
        from curation.publish import resolve

        fs, root, version = resolve(ref, storage_options)
        return CuratedDataset(fs, root, ref, version, storage_options)
    fs, root = fsspec.core.url_to_fs(ref, **(storage_options or {}))
    return CuratedDataset(fs, root, ref, None, storage_options)
