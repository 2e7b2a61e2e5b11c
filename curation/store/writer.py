"""The shard writer: episodes -> one committed Zarr v3 shard group.

A shard group is written by exactly one worker under
`shards/.tmp-shard-NNNNN-<uuid>/` and becomes visible by one atomic rename to
`shards/shard-NNNNN/`. Its commit record (the `commit` attribute of the group's
zarr.json, written in the tmp dir before the rename, so data and record appear
together; plain JSON, readable without zarr) holds the
manifest rows, checksums, quarantine and filtered rows and stage timings of the
shard's work unit. The manifest is built at finalize from the commit records.

A work unit whose episodes do not all share one array signature (image size,
camera set, label shapes) is split into sub-shards `shard-NNNNN-KK`, renamed
first; the primary `shard-NNNNN` is renamed last and lists them, so a unit is
committed exactly when its primary is.

Arrays use the sharding codec: one Zarr shard (one file) per array, inner
chunks of `frames_per_chunk` along axis 0 (frames: one frame per chunk), each in
the encoding of its ArraySpec (curation/store/encodings.py): frames as the
source's own JPEG/PNG bytes (written here straight into the shard file, never
re-encoded) or PNG, fixed-point labels, the rest plain; then zstd
(`writer.compression`, default) on all but the images. A plain array without
compression is encoded directly (raw C-order bytes + the shard index),
byte-identical to what zarr writes (tests check it) and as fast as numpy.save.
Checksums are over the decoded values (`stored_values`), what every reader gets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from curation.store.durable import fsync_dir, fsync_tree, replace_durably
from curation.store.encodings import FixedPointCodec, ImageCodec, dequantize, fixed_point_dtype, quantize
from schemas.dataset import CONTRACT_VERSION, SHARDS_DIR, ArraySpec, episode_checksum, spec_for
from schemas.episode import EncodedFrames

# Shard files are keyed "0.0.0.0" inside the array directory (zarr v3 "v2" chunk key
# encoding): one directory per array instead of one per dimension, which is most of
# the cost of writing small arrays on a real filesystem.
CHUNK_KEY_ENCODING = {"name": "v2", "separator": "."}
COMMIT_RECORD = "zarr.json"  # the commit record is its "commit" attribute
SHARD_PREFIX = "shard-"
TMP_PREFIX = ".tmp-"
# `writer.compression: zstd` is blosc's zstd at level 5 after its byte shuffle (both in the Zarr v3
# spec's blosc codec): on the curated Bridge labels (int16 tracks, masks, motion images) it takes
# 27 % fewer bytes than plain zstd level 1 (313 vs 430 KB of tracks) and still encodes at ~25 MB/s,
# a few per cent of the labeling time (measured with numcodecs on the shards of `curate bench storage`).
ZSTD_LEVEL = 5
FRAME_MODES = ("source", "png")  # writer.frames: the source's own bytes where it has them, or PNG


def shard_name(group: int, sub: int = 0) -> str:
    return f"{SHARD_PREFIX}{group:05d}" if sub == 0 else f"{SHARD_PREFIX}{group:05d}-{sub:02d}"


def spec_by_name(name: str) -> ArraySpec:
    """The ArraySpec of a concrete array name (schemas.dataset.spec_for); KeyError if none."""
    spec = spec_for(name)
    if spec is None:
        raise KeyError(f"{name}: not an array of the shard contract")
    return spec


# ---------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# Episode payloads
# ---------------------------------------------------------------------------------------

@dataclass
class EpisodePayload:
    """What the writer needs of one kept episode: its arrays (frame arrays F x ...,
    anchor arrays N x ...) and its manifest row without shard/offsets/checksum."""

    arrays: dict[str, np.ndarray]
    row: dict[str, Any]
    encoded: dict[str, EncodedFrames] = field(default_factory=dict)  # "frames/{camera}" -> the source's bytes

    @property
    def num_frames(self) -> int:
        return int(self.arrays["actions"].shape[0])

    @property
    def num_anchors(self) -> int:
        return int(self.arrays["anchor_step"].shape[0])

    def signature(self) -> tuple:
        """Arrays of one shard must agree on names, dtypes and every axis but 0."""
        return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in self.arrays.items()))


# ---------------------------------------------------------------------------------------
# Zarr encoding
# ---------------------------------------------------------------------------------------

def _chunk_len(n: int, frames_per_chunk: int) -> int:
    return max(1, min(n, frames_per_chunk))


def _layout(data: np.ndarray, frames_per_chunk: int) -> tuple[tuple, tuple]:
    n = data.shape[0]
    c0 = _chunk_len(n, frames_per_chunk)
    return (c0,) + data.shape[1:], (-(-max(n, 1) // c0) * c0,) + data.shape[1:]  # one shard file per array


def _attributes(spec: ArraySpec, **extra) -> dict:
    """An array's attributes: units, axis-0 kind, NaN rule, its encoding and error bound."""
    return {"units": spec.units, "per": spec.per, "nan_ok": spec.nan_ok, "encoding": spec.encoding,
            "max_abs_error": spec.max_abs_error, **({"scale": spec.scale} if spec.scale else {}), **extra}


def stored_values(name: str, data: np.ndarray) -> np.ndarray:
    """What a reader decodes from `data` written as array `name`: fixed-point arrays rounded to
    their step (the same functions as the codec), every other array unchanged. Checksums are
    taken over these values, so they hold for what is read back."""
    spec = spec_by_name(name)
    if spec.encoding != "fixed_point":
        return data
    return dequantize(quantize(data, spec.scale, "int32"), spec.scale)


def _write_array(group, name: str, data: np.ndarray, frames_per_chunk: int, compression: str) -> None:
    """Through zarr, with the spec's codecs (encodings.py) and `compression` after them."""
    import zarr

    spec = spec_by_name(name)
    chunks, shards = _layout(data, frames_per_chunk)
    stored = np.dtype(fixed_point_dtype(data, spec.scale)) if spec.encoding == "fixed_point" else data.dtype
    kwargs: dict = {"compressors": _compressor(stored) if compression == "zstd" else None}
    if spec.encoding == "fixed_point":
        kwargs["filters"] = [FixedPointCodec(scale=spec.scale, dtype=str(stored))]
    elif spec.encoding == "image":  # pixels without source bytes: lossless PNG, one frame per chunk
        chunks, shards = (1,) + data.shape[1:], (max(1, data.shape[0]),) + data.shape[1:]
        kwargs = {"serializer": ImageCodec(format="png"), "compressors": None}
    arr = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards, fill_value=_fill(data.dtype),
        chunk_key_encoding=CHUNK_KEY_ENCODING, attributes=_attributes(spec), **kwargs,
    )
    if data.shape[0] == 0:
        return
    if kwargs["compressors"] is None and "filters" not in kwargs and "serializer" not in kwargs \
            and data.dtype.byteorder in ("=", "<", "|"):
        _write_raw_shard(Path(arr.store_path.store.root) / arr.store_path.path, data, chunks[0], shards[0])
    else:
        with zarr.config.set({"array.write_empty_chunks": True}):
            arr[...] = data


def _compressor(stored: np.dtype):
    """blosc(zstd, ZSTD_LEVEL) after a byte shuffle of the stored values (a bit shuffle for masks:
    1.6x fewer bytes for `visible` than zstd alone)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=ZSTD_LEVEL, shuffle="bitshuffle" if stored == np.bool_ else "shuffle",
                      typesize=stored.itemsize)


def _write_source_images(group, name: str, shape: tuple, frames: EncodedFrames) -> None:
    """A frame array whose inner chunks are the source's own encoded frames, one per chunk: its
    zarr.json by zarr (codec curator.image), its one shard file written here the way zarr's
    ShardingCodec lays it out (chunks in order, then the index of (offset, nbytes) uint64 pairs
    and its crc32c)."""
    import google_crc32c

    spec = spec_by_name(name)
    arr = group.create_array(
        name, shape=shape, dtype="uint8", chunks=(1,) + tuple(shape[1:]), shards=(max(1, shape[0]),) + tuple(shape[1:]),
        serializer=ImageCodec(format=frames.format), compressors=None, fill_value=0,
        chunk_key_encoding=CHUNK_KEY_ENCODING, attributes=_attributes(spec, source_bytes=True),
    )
    if not shape[0]:
        return
    sizes = np.array([len(b) for b in frames.blobs], dtype="<u8")
    index = np.stack([np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<u8"), sizes], axis=1)
    index_bytes = np.ascontiguousarray(index, dtype="<u8").tobytes()
    key = Path(arr.store_path.store.root) / arr.store_path.path / ".".join("0" for _ in shape)
    with open(key, "wb") as f:
        f.write(b"".join(frames.blobs))
        f.write(index_bytes)
        f.write(struct.pack("<I", google_crc32c.value(index_bytes)))


def _source_frames(payloads: list["EpisodePayload"], name: str, frames: str) -> "EncodedFrames | None":
    """The source's encoded frames of array `name` over all of a shard's episodes, when every
    episode has them in one format and `frames` is "source"; else None (the pixels are encoded)."""
    if frames != "source" or spec_by_name(name).encoding != "image":
        return None
    found = [p.encoded.get(name) for p in payloads]
    if any(e is None for e in found) or len({e.format for e in found}) != 1:
        return None
    return EncodedFrames(found[0].format, tuple(b for e in found for b in e.blobs))


_META_TEMPLATES: dict[tuple, str] = {}
_GROUP_JSON = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def _array_metadata(name: str, data: np.ndarray, frames_per_chunk: int) -> dict:
    """zarr.json of an uncompressed sharded array: made by zarr itself once per
    (name, dtype, trailing shape) and patched for the length, so zarr's event loop
    is entered once per process instead of once per array."""
    import zarr

    chunks, shards = _layout(data, frames_per_chunk)
    key = (name, data.dtype.str, data.shape[1:])
    if key not in _META_TEMPLATES:
        spec = spec_by_name(name)
        with tempfile.TemporaryDirectory() as d:
            g = zarr.open_group(d, mode="w", zarr_format=3)
            g.create_array("a", shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards, compressors=None,
                           fill_value=_fill(data.dtype), chunk_key_encoding=CHUNK_KEY_ENCODING,
                           attributes=_attributes(spec))
            _META_TEMPLATES[key] = (Path(d) / "a" / "zarr.json").read_text()
    meta = json.loads(_META_TEMPLATES[key])
    meta["shape"] = list(data.shape)
    meta["chunk_grid"]["configuration"]["chunk_shape"] = list(shards)
    meta["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    return meta


def _write_array_fast(root: Path, name: str, data: np.ndarray, frames_per_chunk: int) -> None:
    """An uncompressed array without zarr's machinery: its zarr.json and one raw shard file."""
    parts = name.split("/")
    for i in range(1, len(parts)):  # implicit parent groups (frames/, depth_m/)
        gj = root.joinpath(*parts[:i]) / "zarr.json"
        if not gj.exists():
            gj.parent.mkdir(parents=True, exist_ok=True)
            gj.write_text(json.dumps(_GROUP_JSON, indent=2))
    adir = root / name
    os.makedirs(adir, exist_ok=True)
    (adir / "zarr.json").write_text(json.dumps(_array_metadata(name, data, frames_per_chunk)))
    if data.shape[0]:
        chunks, shards = _layout(data, frames_per_chunk)
        _write_raw_shard(adir, data, chunks[0], shards[0])


def _fill(dtype: np.dtype):
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.floating):
        return 0.0
    return 0


def _write_raw_shard(array_dir: Path, data: np.ndarray, c0: int, shard_len: int) -> None:
    """Encode the single shard of an uncompressed array the way zarr's ShardingCodec
    does (inner chunks in order along axis 0, edge chunk padded with the fill value,
    index of (offset, nbytes) uint64 pairs + crc32c at the end) with one write."""
    import google_crc32c

    data = np.ascontiguousarray(data)
    n_chunks = shard_len // c0
    chunk_nbytes = c0 * int(np.prod(data.shape[1:], dtype=np.int64)) * data.itemsize
    pad = shard_len * (data.nbytes // max(data.shape[0], 1)) - data.nbytes
    index = np.empty((n_chunks, 2), dtype="<u8")
    index[:, 0] = np.arange(n_chunks, dtype=np.uint64) * chunk_nbytes
    index[:, 1] = chunk_nbytes
    index_bytes = index.tobytes()
    crc = struct.pack("<I", google_crc32c.value(index_bytes))
    key = array_dir / ".".join("0" for _ in data.shape)  # the one shard, "v2" key encoding
    with open(key, "wb") as f:
        data.tofile(f)  # numpy's own unbuffered write of the whole array, as numpy.save does
        if pad:
            f.write(bytes(pad))  # fill value 0 / False / 0.0 is all zero bytes
        f.write(index_bytes)
        f.write(crc)


# ---------------------------------------------------------------------------------------
# Writing and committing a unit's shards
# ---------------------------------------------------------------------------------------

def split_by_signature(payloads: list[EpisodePayload]) -> list[list[EpisodePayload]]:
    """Group a unit's episodes by array signature, in order of first appearance."""
    groups: dict[tuple, list[EpisodePayload]] = {}
    for p in payloads:
        groups.setdefault(p.signature(), []).append(p)
    return list(groups.values())


def write_shard_group(
    tmp_dir: Path, name: str, payloads: list[EpisodePayload], frames_per_chunk: int, compression: str,
    frames: str = "source",
) -> tuple[dict, list[dict]]:
    """Write one shard group (episodes sharing a signature) into tmp_dir; return its
    root attributes and the finished manifest rows (shard, offsets, checksum of the values
    a reader decodes)."""
    stored = [{n: stored_values(n, a) for n, a in p.arrays.items()} for p in payloads]
    rows = []
    frame_start = anchor_start = 0
    for p, values in zip(payloads, stored):
        row = dict(p.row)
        row.update(
            shard=name, frame_start=frame_start, frame_count=p.num_frames,
            anchor_start=anchor_start, anchor_count=p.num_anchors, checksum=episode_checksum(values),
        )
        rows.append(row)
        frame_start += p.num_frames
        anchor_start += p.num_anchors
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True)
    attrs = {"contract_version": CONTRACT_VERSION, "shard": name, "episodes": [r["episode_id"] for r in rows]}
    write_group_json(tmp_dir, attrs)
    group = None
    for arr_name in sorted(payloads[0].arrays if payloads else ()):
        data = np.concatenate([v[arr_name] for v in stored], axis=0) if len(stored) > 1 else stored[0][arr_name]
        spec = spec_by_name(arr_name)
        if compression == "none" and spec.encoding == "plain" and data.dtype.byteorder in ("=", "<", "|"):
            _write_array_fast(tmp_dir, arr_name, data, frames_per_chunk)
            continue
        if group is None:
            import zarr

            group = zarr.open_group(str(tmp_dir), mode="a", zarr_format=3)
        source = _source_frames(payloads, arr_name, frames)
        if source is not None:
            _write_source_images(group, arr_name, data.shape, source)
        else:
            _write_array(group, arr_name, data, frames_per_chunk, compression)
    return attrs, rows


def write_group_json(group_dir: Path, attrs: dict) -> None:
    """The group's zarr.json (atomically replaced); NaN in attributes becomes null."""
    from curation.formats import to_json

    doc = {"attributes": json.loads(to_json(attrs)), "zarr_format": 3, "node_type": "group"}
    tmp = group_dir / f"{TMP_PREFIX}zarr.json"
    tmp.write_text(json.dumps(doc, indent=2))
    replace_durably(tmp, group_dir / "zarr.json")


def write_json_atomic(path: Path, obj: Any) -> None:
    from curation.formats import to_json

    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(to_json(obj) + "\n")
    replace_durably(tmp, path)


def commit_unit(
    out_dir: Path,
    group_index: int,
    payloads: list[EpisodePayload],
    record: dict,
    frames_per_chunk: int = 16,
    compression: str = "zstd",
    frames: str = "source",
) -> dict:
    """Write and commit the shard(s) of one work unit. `record` carries the unit's
    quarantine/filtered rows, timings and anything else to keep; returns the
    commit record of the primary shard (with "episodes": manifest rows of all
    its sub-shards). Idempotent: if the unit is already committed (a retried
    task whose first attempt got through), the existing record is returned."""
    shards_dir = Path(out_dir) / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    primary = shards_dir / shard_name(group_index)
    existing = read_commit(primary)
    if existing is not None:
        return existing
    attempt = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    groups = split_by_signature(payloads) or [[]]
    tmp_dirs, all_rows, sub_names = [], [], []
    try:
        for sub, members in enumerate(groups):
            name = shard_name(group_index, sub)
            tmp = shards_dir / f"{TMP_PREFIX}{name}-{attempt}"
            tmp_dirs.append((tmp, shards_dir / name))
            attrs, rows = write_shard_group(tmp, name, members, frames_per_chunk, compression, frames)
            all_rows.extend(rows)
            if sub:
                sub_names.append(name)
                write_group_json(tmp, {**attrs, "commit": {"shard": name, "primary": shard_name(group_index),
                                                           "episodes": rows, "attempt": attempt}})
            else:
                primary_attrs = attrs
        write_seconds = time.perf_counter() - t0
        record = dict(record)
        record.setdefault("timings", {})
        record["timings"]["write"] = record["timings"].get("write", 0.0) + write_seconds
        record.update(
            shard=shard_name(group_index), group=group_index, contract_version=CONTRACT_VERSION,
            episodes=all_rows, sub_shards=sub_names, frames=int(sum(r["frame_count"] for r in all_rows)),
            attempt=attempt, host=socket.gethostname(), pid=os.getpid(), committed_at=time.time(),
        )
        write_group_json(tmp_dirs[0][0], {**primary_attrs, "commit": record})
        record = read_commit(tmp_dirs[0][0])  # exactly what a reader of the committed shard sees
        for tmp, _ in tmp_dirs:
            fsync_tree(tmp)  # every shard file on disk before any name becomes visible
        # Sub-shards first, the primary last: the primary's rename is the unit's commit.
        for tmp, final in tmp_dirs[1:] + tmp_dirs[:1]:
            try:
                os.rename(tmp, final)
            except OSError:
                # Another attempt of this unit committed first (same deterministic content).
                if final.name == primary.name:
                    existing = read_commit(primary)
                    if existing is None:
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)
                    return existing
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(shards_dir)  # the renames themselves
        return record
    finally:
        for tmp, _ in tmp_dirs:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def read_commit(shard_dir: Path) -> dict | None:
    path = Path(shard_dir) / COMMIT_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("attributes", {}).get("commit")
    except (OSError, ValueError, AttributeError):
        return None


def committed_groups(out_dir: Path) -> dict[int, dict]:
    """{group index: commit record} of every committed unit (primary shard)."""
    shards_dir = Path(out_dir) / SHARDS_DIR
    out: dict[int, dict] = {}
    if not shards_dir.is_dir():
        return out
    for d in sorted(shards_dir.iterdir()):
        name = d.name
        if not name.startswith(SHARD_PREFIX) or "-" in name[len(SHARD_PREFIX):]:
            continue
        rec = read_commit(d)
        if rec is not None:
            out[int(name[len(SHARD_PREFIX):])] = rec
    return out


def clean_stale(out_dir: Path) -> list[str]:
    """Remove leftovers of killed attempts: tmp dirs, and sub-shards whose primary
    never committed. Returns the removed names. Call only when no worker of this
    dataset is running (the job holds the dataset lock)."""
    shards_dir = Path(out_dir) / SHARDS_DIR
    removed = []
    if not shards_dir.is_dir():
        return removed
    names = {d.name for d in shards_dir.iterdir()}
    for name in sorted(names):
        path = shards_dir / name
        stale = name.startswith(TMP_PREFIX)
        if name.startswith(SHARD_PREFIX) and "-" in name[len(SHARD_PREFIX):]:
            primary = name[: len(SHARD_PREFIX) + 5]
            stale = read_commit(shards_dir / primary) is None
        if stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def iter_manifest_rows(records: Iterable[dict]) -> list[dict]:
    rows = []
    for rec in sorted(records, key=lambda r: r["group"]):
        rows.extend(sorted(rec["episodes"], key=lambda r: (r["shard"], r["frame_start"])))
    return rows
