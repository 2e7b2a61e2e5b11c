"""The trainer-facing reader: the ONE place that reads a curated dataset.

    ds = open_dataset("out/bridge")                      # a dataset directory
    ds = open_dataset("s3://bucket/datasets/bridge")     # an fsspec URL of one
    ds = open_dataset("file:///registry/bridge@0.1.0")   # a published version (curation.registry.publish)
    for tr in ds.iter_triplets(chunk=10):                # schemas.triplet.Triplet
        ...

A shard's arrays are read in bulk (one Zarr shard file per array), then sliced
per episode and anchor in memory: reading costs one request per array per shard,
never one per element. Memory is one shard at a time.

Reads verify themselves (`verify=True`, the default; `verify=False` skips it, for a reader that
trusts its storage: the cost is in `curate bench loader`):
- a published version: opening it checks every file's size against `index.json` and the sha256
  of every file outside `shards/` (manifest, stats, card); a shard's files are fetched once, each
  checked against its sha256, and decoded from memory. A missing or damaged file is a
  `DatasetIntegrityError` naming it.
- any dataset: every episode read is checked against its manifest checksum, so a missing chunk
  (which Zarr would read as fill values) or a damaged one is an error naming shard and episode.
  A motion-only read (no action arrays) cannot recompute that checksum; it keeps the file checks.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from schemas.dataset import (
    DATASET_JSON, MANIFEST, SHARD_ARRAYS, SHARD_NAME_RE, SHARDS_DIR, STATS_JSON, contract_problem, episode_checksum,
)
from schemas.triplet import DEFAULT_CHUNK, Triplet

FRAME_ARRAYS = {s.name.split("/")[0] for s in SHARD_ARRAYS if s.per == "frame"}
# Shard names come from the manifest (input): checked before a path is built from one.


class DatasetIntegrityError(RuntimeError):
    """A file of a curated dataset is missing, of the wrong size, or its bytes do not match."""
# What a motion-only read (stage-1 pretraining on action-free video) never opens.
ACTION_ARRAYS = ("actions", "proprio")


def array_names(group) -> list[str]:
    """Paths of every array in a Zarr group, nested ones as `frames/image`, sorted."""
    import zarr

    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


class CuratedDataset:
    """A curated dataset on any fsspec filesystem (see open_dataset)."""

    def __init__(self, fs, root: str, ref: str = "", version: Optional[str] = None,
                 storage_options: Optional[dict] = None, files: Optional[dict[str, dict]] = None,
                 verify: bool = True):
        import pyarrow.parquet as pq

        self.fs, self.root, self.ref, self.version = fs, root.rstrip("/"), ref, version
        self.storage_options = storage_options or {}
        self.files, self.verify = files, verify  # files: a published version's index table
        if verify and files is not None:
            self._check_published_files()
        manifest_path = self._path(MANIFEST)
        if not fs.exists(manifest_path):
            raise FileNotFoundError(f"{ref or root}: no {MANIFEST} (not a finished curated dataset)")
        with fs.open(manifest_path, "rb") as f:
            self.manifest = pq.read_table(f)
        self.info = self._json(DATASET_JSON) or {}
        problem = contract_problem(self.info.get("contract_version"))
        if problem:
            raise ValueError(f"{ref or root}: {problem}")
        self._rows = self.manifest.to_pylist()
        self._by_id = {r["episode_id"]: r for r in self._rows}
        bad = sorted({r["shard"] for r in self._rows if not SHARD_NAME_RE.match(str(r["shard"]))})
        if bad:
            raise DatasetIntegrityError(f"{ref or root}: {MANIFEST} names shard(s) {bad[:3]} not of the form shard-NNNNN[-KK-<attempt>]")

    def _check_published_files(self) -> None:
        """Every indexed file present with its size; every file outside shards/ hashed."""
        found = {posixpath.relpath(p, self.root): info.get("size")
                 for p, info in self.fs.find(self.root, detail=True).items()}
        where = self.ref or self.root
        for rel, entry in sorted(self.files.items()):
            if rel not in found:
                raise DatasetIntegrityError(f"{where}: {rel} is missing (listed in index.json)")
            if found[rel] != entry["size"]:
                raise DatasetIntegrityError(f"{where}: {rel} has {found[rel]} bytes, index.json says {entry['size']}")
            if not rel.startswith(SHARDS_DIR + "/"):
                self._checked_bytes(rel)

    def _checked_bytes(self, rel: str) -> bytes:
        data = self.fs.cat_file(self._path(rel))
        if hashlib.sha256(data).hexdigest() != self.files[rel]["sha256"]:
            raise DatasetIntegrityError(f"{self.ref or self.root}: {rel}: sha256 does not match index.json (damaged file)")
        return data

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
    def _group(self, shard: str, skip: Sequence[str] = ()):
        import zarr
        from fsspec.implementations.local import LocalFileSystem

        if not SHARD_NAME_RE.match(shard):
            raise DatasetIntegrityError(f"{self.ref or self.root}: bad shard name {shard!r}")
        if self.verify and self.files is not None:
            return zarr.open_group(self._verified_store(shard, skip), mode="r", zarr_format=3)
        path = self._path(SHARDS_DIR, shard)
        if isinstance(self.fs, LocalFileSystem):
            return zarr.open_group(path, mode="r", zarr_format=3)
        return zarr.open_group(self.fs.unstrip_protocol(path), mode="r", zarr_format=3,
                               storage_options=self.storage_options)

    def _verified_store(self, shard: str, skip: Sequence[str] = ()):
        """The shard's files fetched once each (but those of the arrays in `skip`), checked against
        index.json, in a memory store."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        prefix = f"{SHARDS_DIR}/{shard}/"
        proto = default_buffer_prototype()
        skipped = tuple(f"{prefix}{name}/" for name in skip)
        contents = {rel[len(prefix):]: proto.buffer.from_bytes(self._checked_bytes(rel))
                    for rel in self.files if rel.startswith(prefix) and not rel.startswith(skipped)}
        if "zarr.json" not in contents:
            raise DatasetIntegrityError(f"{self.ref or self.root}: shard {shard} is not in index.json")
        return MemoryStore(contents, read_only=True)

    def read_shard(self, shard: str, skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Every array of a shard but those named in `skip` (top-level names, e.g. "actions"),
        read in bulk: {name: array over the shard's frames/anchors}. Skipped arrays are not opened.
        Each array's declared length is checked against the manifest before anything is read."""
        group = self._group(shard, skip)
        rows = [r for r in self._rows if r["shard"] == shard]
        frames = max((r["frame_start"] + r["frame_count"] for r in rows), default=0)
        anchors = max((r["anchor_start"] + r["anchor_count"] for r in rows), default=0)
        out = {}
        for name in array_names(group):
            if name.split("/")[0] in skip:
                continue
            arr = group[name]
            want = frames if name.split("/")[0] in FRAME_ARRAYS else anchors
            if not arr.shape or arr.shape[0] < want:
                raise DatasetIntegrityError(
                    f"{self.ref or self.root}: {SHARDS_DIR}/{shard}/{name}: declared shape {arr.shape} is shorter than "
                    f"the {want} {'frames' if want == frames else 'anchors'} the manifest places in it")
            out[name] = arr[...]
        return out

    def _slice(self, r: dict, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fs, fc, as_, ac = r["frame_start"], r["frame_count"], r["anchor_start"], r["anchor_count"]
        return {n: (a[fs:fs + fc] if n.split("/")[0] in FRAME_ARRAYS else a[as_:as_ + ac]) for n, a in data.items()}

    def _check_episode(self, r: dict, arrays: dict[str, np.ndarray]) -> None:
        if self.verify and episode_checksum(arrays) != r["checksum"]:
            raise DatasetIntegrityError(
                f"{self.ref or self.root}: episode {r['episode_id']} in shard {r['shard']}: its arrays do not match "
                f"the manifest checksum (a chunk file of {SHARDS_DIR}/{r['shard']} is missing or damaged)")

    def episode_arrays(self, episode_id: str, data: Optional[dict] = None) -> dict[str, np.ndarray]:
        """One episode's arrays (frame arrays F x ..., anchor arrays N x ...), checked."""
        r = self._by_id[episode_id]
        arrays = self._slice(r, data if data is not None else self.read_shard(r["shard"]))
        self._check_episode(r, arrays)
        return arrays

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
                if not motion_only:  # the checksum covers every array; a motion-only read relies on file hashes
                    self._check_episode(r, self._slice(r, data))
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


def open_directory(ref: str, storage_options: Optional[dict] = None, verify: bool = True) -> CuratedDataset:
    """A curated dataset from a directory or an fsspec URL of one. Published versions
    (`URL/NAME@V`) open through `curation.open_dataset`, which resolves them first.
    verify=False skips the integrity checks of the module docstring."""
    import fsspec

    ref = str(ref)
    fs, root = fsspec.core.url_to_fs(ref, **(storage_options or {}))
    return CuratedDataset(fs, root, ref, None, storage_options, verify=verify)
