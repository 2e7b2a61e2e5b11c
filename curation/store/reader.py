"""The trainer-facing reader: the ONE place that reads a curated dataset.

    ds = open_dataset("out/bridge")                      # a dataset directory
    ds = open_dataset("s3://bucket/datasets/bridge")     # an fsspec URL of one
    ds = open_dataset("file:///registry/bridge@0.1.0")   # a published version (curation.registry.publish)
    for tr in ds.iter_triplets(chunk=10):                # schemas.triplet.Triplet
        ...

Episodes are read in blocks (`read_block`): runs of consecutive episodes of a shard up to
READ_BLOCK_BYTES decoded, each array by the block's slice (all arrays in one trip through Zarr's
event loop), so Zarr reads only the inner chunks the block overlaps (one shard file per array:
its index, then byte ranges); a small shard is one read per array, a large one is never decoded
whole. Reads happen in the reading process (a DataLoader worker), up to `prefetch` episodes ahead
in a background thread, in any episode order (`iter_triplets(episodes=...)`). Memory is the last
`open_shards` blocks, plus, for a published version, the verified files of as many shards.
`read_shard` still reads a shard's arrays whole.

Reads verify themselves (`verify=True`, the default; `verify=False` skips it, for a reader that
trusts its storage: the cost is in `curate bench loader`):
- a published version: opening it checks every file's size against `index.json` and the sha256
  of every file outside `shards/` (manifest, stats, card); a shard's files are fetched once, whole
  (one request per array per shard), each checked against its sha256 as fetched, and episodes are
  decoded from those bytes in memory. A missing or damaged file is a `DatasetIntegrityError`
  naming it.
- contract 3.1 on (every inner chunk ends in its crc32c, curation/store/chunks.py): zarr checks
  each chunk's crc32c as it decodes it, the reader checks that no chunk is absent (from the shard
  index zarr reads anyway) and, when a shard is opened, that every array's codecs end in crc32c
  and match its ArraySpec (a changed fixed-point scale in a zarr.json would decode wrong values
  with valid checksums). A damaged or missing chunk is a `DatasetIntegrityError` naming shard,
  array and episode. Motion-only reads are checked the same way.
- contracts 2.x and 3.0 (no chunk checksums): every episode read is checked against its manifest
  checksum (sha256 over its decoded arrays), so a missing chunk (which Zarr would read as fill
  values) or a damaged one is an error naming shard and episode. A motion-only read (no action
  arrays) cannot recompute that checksum; it keeps the file checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import queue
import re
import threading
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from schemas.dataset import (
    DATASET_JSON, MANIFEST, SHARD_ARRAYS, SHARD_NAME_RE, SHARDS_DIR, STATS_JSON, chunk_checksum_contract,
    contract_problem, episode_checksum, spec_for,
)
from schemas.triplet import ALWAYS_READ, DEFAULT_CHUNK, PRIMARY_CAMERA, Triplet

FRAME_ARRAYS = {s.name.split("/")[0] for s in SHARD_ARRAYS if s.per == "frame"}
# Arrays every shard holds (the contract's non-optional, camera-independent ones).
REQUIRED_ARRAYS = tuple(sorted(s.name for s in SHARD_ARRAYS if not s.optional and "{" not in s.name))
# Shard names come from the manifest (input): checked before a path is built from one.
# Episodes read ahead by iter_triplets' background thread: one being turned into triplets, one
# waiting, one being read covers a fetch's latency without holding more than 3 episodes.
DEFAULT_PREFETCH = 2
# Shards whose opened arrays a reader keeps (CuratedDataset.open_shard); for a published version
# each holds its verified files in memory, so this bounds memory to that many shards.
DEFAULT_OPEN_SHARDS = 4
# Decoded bytes of one read (CuratedDataset.read_block): consecutive episodes of a shard are read
# together up to this size, so a small shard is one read per array (the per-read cost of Zarr's
# event loop and thread hand-offs is paid once) and a large one is never decoded whole.
READ_BLOCK_BYTES = 64 << 20


class DatasetIntegrityError(RuntimeError):
    """A file of a curated dataset is missing, of the wrong size, or its bytes do not match."""
# What a motion-only read (stage-1 pretraining on action-free video) never opens.
ACTION_ARRAYS = ("actions", "proprio")
# What no triplet holds (schemas.triplet.Triplet: frames at the anchor, anchor arrays, actions):
# per-frame depth, which iter_triplets does not read where it need not (see there).
TRIPLET_UNUSED = ("depth_m",)
# The contract's per-anchor arrays: the labels iter_triplets(labels=...) chooses among.
ANCHOR_ARRAYS = tuple(s.name for s in SHARD_ARRAYS if s.per == "anchor")


def skipped(name: str, skip: Sequence[str]) -> bool:
    """Whether array `name` (e.g. `frames/wrist`) is in `skip`, by its full or its top-level name."""
    return name in skip or name.split("/")[0] in skip


def array_names(group) -> list[str]:
    """Paths of every array in a Zarr group, nested ones as `frames/image`, sorted."""
    import zarr

    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


class CuratedDataset:
    """A curated dataset on any fsspec filesystem (see open_dataset)."""

    def __init__(self, fs, root: str, ref: str = "", version: Optional[str] = None,
                 storage_options: Optional[dict] = None, files: Optional[dict[str, dict]] = None,
                 verify: bool = True, open_shards: int = DEFAULT_OPEN_SHARDS, block_bytes: int = READ_BLOCK_BYTES):
        import pyarrow.parquet as pq

        self.fs, self.root, self.ref, self.version = fs, root.rstrip("/"), ref, version
        self.storage_options = storage_options or {}
        self.files, self.verify = files, verify  # files: a published version's index table
        self.open_shards = max(1, int(open_shards))
        self.block_bytes = int(block_bytes)
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
        # Contract 3.1 on: zarr verifies every chunk as it decodes (module docstring); before, episodes.
        self.chunk_checksums = chunk_checksum_contract(self.info.get("contract_version"))
        self._rows = self.manifest.to_pylist()
        self._by_id = {r["episode_id"]: r for r in self._rows}
        self._by_shard: dict[str, list[dict]] = {}
        for r in self._rows:
            self._by_shard.setdefault(r["shard"], []).append(r)
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

        from zarr.storage import FsspecStore, LocalStore

        from curation.store.chunks import CompleteChunksStore

        if not SHARD_NAME_RE.match(shard):
            raise DatasetIntegrityError(f"{self.ref or self.root}: bad shard name {shard!r}")
        path = self._path(SHARDS_DIR, shard)
        if self.verified_files:
            store = self._verified_store(shard, skip)
        elif isinstance(self.fs, LocalFileSystem):
            store = LocalStore(path, read_only=True)
        else:
            store = FsspecStore.from_url(self.fs.unstrip_protocol(path), storage_options=self.storage_options,
                                         read_only=True)
        if self.verify and self.chunk_checksums:
            store = CompleteChunksStore(store)  # an absent chunk is an error, not fill values
        return zarr.open_group(store, mode="r", zarr_format=3)

    @property
    def verified_files(self) -> bool:
        """Whether shard files are fetched whole and checked against a published index."""
        return self.verify and self.files is not None

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

    def open_shard(self, shard: str, skip: Sequence[str] = ()) -> dict[str, Any]:
        """The shard's arrays but those named in `skip` (top-level names, e.g. "actions"), opened
        (metadata read, no data): {name: zarr.Array}. Each array's declared length is checked
        against the manifest here, before anything is read. Kept for the last OPEN_SHARDS shards
        this process opened (a published shard's verified files are held in memory with it)."""
        key = (shard, tuple(sorted(skip)))
        with self._lock:
            cache = self.__dict__.setdefault("_open", {})
            if key in cache:
                cache[key] = cache.pop(key)  # most recently used last
                return cache[key]
        out = self._open_arrays(shard, skip)
        with self._lock:
            while len(cache) >= self.open_shards:
                cache.pop(next(iter(cache)))
            cache[key] = out
        return out

    @property
    def _lock(self) -> threading.Lock:
        if "_open_lock" not in self.__dict__:
            self.__dict__["_open_lock"] = threading.Lock()
        return self.__dict__["_open_lock"]

    def __getstate__(self) -> dict:  # a copy for another process: no open shards, no lock
        return {k: v for k, v in self.__dict__.items() if k not in ("_open", "_open_lock", "_blocks")}

    def _open_arrays(self, shard: str, skip: Sequence[str]) -> dict[str, Any]:
        group = self._group(shard, skip)
        rows = self._by_shard.get(shard, [])
        frames = max((r["frame_start"] + r["frame_count"] for r in rows), default=0)
        anchors = max((r["anchor_start"] + r["anchor_count"] for r in rows), default=0)
        out = {}
        for name in array_names(group):
            if skipped(name, skip):
                continue
            arr = group[name]
            want = frames if name.split("/")[0] in FRAME_ARRAYS else anchors
            if not arr.shape or arr.shape[0] < want:
                raise DatasetIntegrityError(
                    f"{self.ref or self.root}: {SHARDS_DIR}/{shard}/{name}: declared shape {arr.shape} is shorter than "
                    f"the {want} {'frames' if want == frames else 'anchors'} the manifest places in it")
            if self.verify and self.chunk_checksums:
                self._check_chunked_array(shard, name, arr, group.store)
            out[name] = arr
        cameras = sorted({f"frames/{c}" for r in rows for c in (r.get("cameras") or [])})  # the manifest's
        missing = [n for n in (*REQUIRED_ARRAYS, *cameras) if n not in out and not skipped(n, skip)]
        if missing:
            raise DatasetIntegrityError(f"{self.ref or self.root}: {SHARDS_DIR}/{shard} has no array {missing[0]!r} "
                                        f"(required by the contract or by the manifest's cameras; a motion-only read skips "
                                        f"{list(ACTION_ARRAYS)})")
        return out

    def _check_chunked_array(self, shard: str, name: str, arr, store) -> None:
        """A contract-3.1 array's metadata, before any of it is read: its codecs end in crc32c and
        are those of its ArraySpec (encoding, fixed-point scale, dtype); the store learns its
        chunks per shard (to check the index of a shard file read whole)."""
        from curation.store.chunks import chunk_checksum_problems, chunks_per_shard
        from curation.store.encodings import encoding_problems

        spec = spec_for(name)
        problems = chunk_checksum_problems(arr)
        if spec is None:
            problems.append("not an array of the contract")
        elif not problems:
            problems += encoding_problems(name, arr, spec)
            if str(arr.dtype) != spec.dtype:
                problems.append(f"dtype {arr.dtype}, contract says {spec.dtype}")
        if problems:
            raise DatasetIntegrityError(f"{self.ref or self.root}: {SHARDS_DIR}/{shard}/{name}: its zarr.json does "
                                        f"not match the contract: {'; '.join(problems)}")
        store.expect(arr.path, chunks_per_shard(arr))

    def read_shard(self, shard: str, skip: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Every array of a shard but those named in `skip`, read whole: {name: array over the
        shard's frames/anchors}. Skipped arrays are not opened."""
        return {name: arr[...] for name, arr in self.open_shard(shard, skip).items()}

    def read_episode(self, episode_id: str, skip: Sequence[str] = (), anchor_frames: bool = False) -> dict[str, np.ndarray]:
        """One episode's arrays but those in `skip` (frame arrays F x ..., anchor arrays N x ...),
        cut from its read block (see read_block), checked against the manifest checksum when every
        array is read (a read that skips arrays cannot recompute it). anchor_frames: `frames/*`
        hold only the frames at the episode's anchors (N x H x W x 3, row a = step anchor_step[a]):
        the other frames are neither fetched nor decoded."""
        r = self._by_id[episode_id]
        try:
            first, data = self.read_block(episode_id, skip, anchor_frames)
        except DatasetIntegrityError:
            if len(self._block_of(r, skip)) == 1:
                raise
            # A damaged chunk fails its whole block: read this episode's own chunks alone, so the
            # error names the episode it is in and the block's intact episodes still read.
            first, data = r, self._read_slices(r["shard"], [r], skip, anchor_frames)
        f0, a0 = first["frame_start"], first["anchor_start"]
        fs, fc, as_, ac = r["frame_start"] - f0, r["frame_count"], r["anchor_start"] - a0, r["anchor_count"]
        arrays = {n: (v[fs:fs + fc] if self._per_frame(n, anchor_frames) else v[as_:as_ + ac]) for n, v in data.items()}
        if not skip and not anchor_frames:
            self._check_episode(r, arrays)
        return arrays

    @staticmethod
    def _per_frame(name: str, anchor_frames: bool) -> bool:
        """Whether array `name` of a read is indexed by frame (else by anchor)."""
        return name.split("/")[0] in FRAME_ARRAYS and not (anchor_frames and name.startswith("frames/"))

    def blocks_of(self, shard: str, skip: Sequence[str] = ()) -> list[list[dict]]:
        """The shard's episodes (manifest rows) in read blocks: runs of consecutive episodes of
        at most READ_BLOCK_BYTES decoded (one episode at least)."""
        key = (shard, tuple(sorted(skip)))
        known = self.__dict__.setdefault("_block_table", {})
        if key in known:
            return known[key]
        opened = self.open_shard(shard, skip)
        per_frame = sum(a.nbytes // max(a.shape[0], 1) for n, a in opened.items() if n.split("/")[0] in FRAME_ARRAYS)
        per_anchor = sum(a.nbytes // max(a.shape[0], 1) for n, a in opened.items() if n.split("/")[0] not in FRAME_ARRAYS)
        blocks: list[list[dict]] = [[]]
        size = 0
        for r in self._by_shard.get(shard, []):
            nbytes = r["frame_count"] * per_frame + r["anchor_count"] * per_anchor
            if blocks[-1] and size + nbytes > self.block_bytes:
                blocks.append([])
                size = 0
            blocks[-1].append(r)
            size += nbytes
        known[key] = blocks
        return blocks

    def read_block(self, episode_id: str, skip: Sequence[str] = (),
                   anchor_frames: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
        """(first row, arrays) of the read block holding `episode_id`: every array's slice over the
        block's frames / anchors, read at once (one trip through zarr's event loop; Zarr reads only
        the inner chunks the slices overlap; for a published version, from the shard's verified
        files in memory); with anchor_frames, `frames/*` at the block's anchors only (see
        read_episode). The last `open_shards` blocks read are kept for the episodes after."""
        r = self._by_id[episode_id]
        block = self._block_of(r, skip)
        key = (r["shard"], block[0]["episode_id"], tuple(sorted(skip)), anchor_frames)
        with self._lock:
            cache = self.__dict__.setdefault("_blocks", {})
            if key in cache:
                cache[key] = cache.pop(key)
                return cache[key]
        data = self._read_slices(r["shard"], block, skip, anchor_frames)
        with self._lock:
            while len(cache) >= self.open_shards:
                cache.pop(next(iter(cache)))
            cache[key] = (block[0], data)
        return block[0], data

    def _block_of(self, r: dict, skip: Sequence[str]) -> list[dict]:
        """The read block (manifest rows) holding the episode of row `r`."""
        return next(b for b in self.blocks_of(r["shard"], skip) if any(x["episode_id"] == r["episode_id"] for x in b))

    def _read_slices(self, shard: str, block: list[dict], skip: Sequence[str],
                     anchor_frames: bool = False) -> dict[str, np.ndarray]:
        """Every opened array's slice over the block (see read_block); with anchor_frames, first
        the rest, then `frames/*` at the block's anchor frames (orthogonal selection: zarr fetches
        and decodes only those inner chunks, one frame each)."""
        opened = self.open_shard(shard, skip)
        f0, a0 = block[0]["frame_start"], block[0]["anchor_start"]
        f1 = block[-1]["frame_start"] + block[-1]["frame_count"]
        a1 = block[-1]["anchor_start"] + block[-1]["anchor_count"]
        frames = [n for n in opened if anchor_frames and n.startswith("frames/")]
        reads = {n: (opened[n], slice(f0, f1) if n.split("/")[0] in FRAME_ARRAYS else slice(a0, a1))
                 for n in opened if n not in frames}
        data = self._gather(shard, block, reads)
        if frames:
            steps = data["anchor_step"]  # the block's anchors, anchor_start - a0 on
            parts = anchor_frame_slices(block, steps, a0)
            got = self._gather(shard, block, {(n, i): (opened[n], sl) for n in frames for i, sl in enumerate(parts)})
            for n in frames:
                empty = np.empty((0,) + opened[n].shape[1:], opened[n].dtype)
                data[n] = np.concatenate([got[(n, i)] for i in range(len(parts))]) if parts else empty
        return data

    def _gather(self, shard: str, block: list[dict], reads: dict) -> dict:
        """{key: (array, slice)} read in one trip through zarr's event loop; a key is an array name
        or (name, part)."""
        from zarr.core.sync import sync

        async def read_all() -> list:
            return await asyncio.gather(*(arr.async_array.getitem(sl) for arr, sl in reads.values()),
                                        return_exceptions=True)

        data = {}
        for key, value in zip(reads, sync(read_all())):
            if isinstance(value, Exception):  # a chunk's or the shard index's crc32c, an absent chunk
                which = (f"episode {block[0]['episode_id']}" if len(block) == 1 else
                         f"episodes {block[0]['episode_id']}..{block[-1]['episode_id']}")
                name = key[0] if isinstance(key, tuple) else key
                raise DatasetIntegrityError(
                    f"{self.ref or self.root}: {which} in shard {shard}: {SHARDS_DIR}/{shard}/{name} cannot be read: "
                    f"{type(value).__name__}: {value}") from value
            data[key] = value
        return data

    def _slice(self, r: dict, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        fs, fc, as_, ac = r["frame_start"], r["frame_count"], r["anchor_start"], r["anchor_count"]
        return {n: (a[fs:fs + fc] if n.split("/")[0] in FRAME_ARRAYS else a[as_:as_ + ac]) for n, a in data.items()}

    def _check_episode(self, r: dict, arrays: dict[str, np.ndarray]) -> None:
        """Contracts before 3.1: the episode's decoded arrays against its manifest checksum (3.1
        on, zarr has checked every chunk as it decoded it)."""
        if self.verify and not self.chunk_checksums and episode_checksum(arrays) != r["checksum"]:
            raise DatasetIntegrityError(
                f"{self.ref or self.root}: episode {r['episode_id']} in shard {r['shard']}: its arrays do not match "
                f"the manifest checksum (a chunk file of {SHARDS_DIR}/{r['shard']} is missing or damaged)")

    def episode_arrays(self, episode_id: str, data: Optional[dict] = None) -> dict[str, np.ndarray]:
        """One episode's arrays (frame arrays F x ..., anchor arrays N x ...), checked; sliced
        from `data` (a read_shard result) when given, else read on their own."""
        if data is None:
            return self.read_episode(episode_id)
        r = self._by_id[episode_id]
        arrays = self._slice(r, data)
        self._check_episode(r, arrays)
        return arrays

    # ---- triplets ----------------------------------------------------------------
    def episodes_of(self, shard: str) -> list[str]:
        """Episode ids of a shard, in manifest order."""
        return [r["episode_id"] for r in self._by_shard.get(shard, [])]

    def iter_triplets(self, shards: Optional[Sequence[str]] = None, chunk: int = DEFAULT_CHUNK,
                      cameras: Optional[Sequence[str] | str] = None, motion_only: bool = False,
                      episodes: Optional[Sequence[str]] = None, prefetch: int = DEFAULT_PREFETCH,
                      labels: Optional[Sequence[str]] = None) -> Iterator[Triplet]:
        """Every anchor of every episode of `shards` (default all) in manifest order, or of
        `episodes` (ids) in that order. Episodes are read one at a time (read_episode), up to
        `prefetch` of them ahead in a background thread (0: none).

        action_chunk: C x A from the anchor step; steps past the end of the episode
        are zeros with action_chunk_valid False. images: the anchor frame of each
        camera, of `cameras` (names), or of each episode's primary camera (PRIMARY_CAMERA).
        motion: the anchor's slice of every anchor array (tracks_px K T 2, visible K T,
        in_range T, ... as stored), or of `labels` (names; ALWAYS_READ come along).
        motion_only: frames, language and motion only; the action and proprio arrays are
        never read (the triplet's action_chunk is C x 0, its proprio empty)."""
        if episodes is None:
            wanted = set(shards) if shards is not None else None
            episodes = [r["episode_id"] for r in self._rows if wanted is None or r["shard"] in wanted]
        skip = ACTION_ARRAYS if motion_only else ()
        # Reads that verify chunk by chunk (3.1 on), or not at all, fetch only what triplets hold:
        # the anchor frames of the cameras asked for, the labels asked for, no per-frame depth.
        # The per-episode sha256 (before 3.1) needs every array whole.
        lean = self.chunk_checksums or not self.verify
        if lean:
            skip = skip + TRIPLET_UNUSED + unread_labels(labels)
        reads = ((eid, self.read_episode(eid, skip + (self._unread_cameras(eid, cameras) if lean else ()),
                                         anchor_frames=lean)) for eid in episodes)
        for eid, data in prefetched(reads, prefetch):
            yield from self._episode_triplets(self._by_id[eid], data, cameras, chunk, lean, labels)

    def _unread_cameras(self, episode_id: str, cameras: Optional[Sequence[str] | str]) -> tuple[str, ...]:
        """`frames/<camera>` of the cameras of the episode's shard that `cameras` leaves out (the
        same for every episode of a shard, so its episodes share read blocks)."""
        if cameras is None:
            return ()
        shard = self._by_id[episode_id]["shard"]
        known = self.__dict__.setdefault("_unread_cams", {})
        key = (shard, cameras if isinstance(cameras, str) else tuple(cameras))
        if key not in known:
            rows = self._by_shard.get(shard, [])
            have = {c for r in rows for c in (r.get("cameras") or [])}
            keep = {r.get("primary_camera") for r in rows} if cameras == PRIMARY_CAMERA else set(cameras)
            known[key] = () if None in keep else tuple(f"frames/{c}" for c in sorted(have - keep))
        return known[key]

    def _episode_triplets(self, r: dict, data: dict[str, np.ndarray], cameras, chunk: int,
                          anchor_frames: bool = False, labels: Optional[Sequence[str]] = None) -> Iterator[Triplet]:
        """The triplets of one episode from its arrays (frame arrays F x ..., anchor arrays N x ...;
        with anchor_frames, `frames/*` N x ... at the anchors: see read_episode), with the cameras
        and labels of iter_triplets (whatever else was read)."""
        cams = [n.split("/", 1)[1] for n in data if n.startswith("frames/")]
        primary = r.get("primary_camera")
        keep = ([primary] if primary else None) if cameras == PRIMARY_CAMERA else cameras
        cams = [c for c in cams if keep is None or c in keep]
        motion_names = [n for n in data if n.split("/")[0] not in FRAME_ARRAYS and n != "anchor_step"
                        and (labels is None or n in labels or n in ALWAYS_READ)]
        actions = data.get("actions", np.zeros((0, 0), np.float32))  # F A (C x 0 chunks when not read)
        proprio = data.get("proprio")
        fc = r["frame_count"]
        intr = np.asarray(r["intrinsics"], np.float32) if r.get("intrinsics") is not None else np.full(4, np.nan, np.float32)
        meta = {k: r.get(k) for k in ("dataset", "split", "episode_index", "shard", "primary_camera", "action_encoding",
                                      "control_hz", "depth_kind", "success", "intrinsics_estimated")}
        meta["backends"] = json.loads(r["backends"]) if r.get("backends") else {}
        A = actions.shape[1]
        for a in range(r["anchor_count"]):
            t = int(data["anchor_step"][a])
            n_valid = max(0, min(chunk, fc - t))
            act = np.zeros((chunk, A), np.float32)
            valid = np.zeros(chunk, bool)
            if A:
                act[:n_valid] = actions[t: t + n_valid]
                valid[:n_valid] = True
            yield Triplet(
                episode_id=r["episode_id"], anchor=t,
                images={c: data[f"frames/{c}"][a if anchor_frames else t] for c in cams},
                proprio=proprio[t] if proprio is not None else np.zeros(0, np.float32),
                language=r.get("language") or "",
                motion={n: data[n][a] for n in motion_names},
                action_chunk=act, action_chunk_valid=valid, intrinsics=intr, meta=meta,
            )


def unread_labels(labels: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The contract's anchor arrays a read of `labels` (None: all) leaves out."""
    if labels is None:
        return ()
    return tuple(n for n in ANCHOR_ARRAYS if n not in labels and n not in ALWAYS_READ)


def anchor_frame_slices(block: list[dict], steps: np.ndarray, a0: int) -> list[slice]:
    """Slices along a shard's frame axis that select exactly the anchor frames of a block's
    episodes, in anchor order: one strided slice per episode whose anchors are evenly spaced (the
    labeler's stride), else one per anchor. Zarr reads a strided slice with its basic indexer and
    fetches only the inner chunks it selects (one frame each); an integer-array selection would go
    through its much slower coordinate indexer. steps: the block's anchor_step from anchor a0."""
    out = []
    for r in block:
        st = np.asarray(steps[r["anchor_start"] - a0:][:r["anchor_count"]], np.int64) + r["frame_start"]
        gaps = np.diff(st)
        if st.size and (st.size == 1 or (gaps[0] > 0 and (gaps == gaps[0]).all())):
            out.append(slice(int(st[0]), int(st[-1]) + 1, int(gaps[0]) if st.size > 1 else 1))
        else:
            out += [slice(int(f), int(f) + 1) for f in st]
    return out


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """`items` produced up to `depth` ahead by a background thread (the consumer's order, its
    errors re-raised here); depth 0 iterates them in place. Stopping early stops the thread."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))

    thread = threading.Thread(target=produce, name="curated-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def open_directory(ref: str, storage_options: Optional[dict] = None, verify: bool = True) -> CuratedDataset:
    """A curated dataset from a directory or an fsspec URL of one. Published versions
    (`URL/NAME@V`) open through `curation.open_dataset`, which resolves them first.
    verify=False skips the integrity checks of the module docstring."""
    import fsspec

    ref = str(ref)
    fs, root = fsspec.core.url_to_fs(ref, **(storage_options or {}))
    return CuratedDataset(fs, root, ref, None, storage_options, verify=verify)
