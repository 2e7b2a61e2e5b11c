"""The shard writer: episodes -> one committed Zarr v3 shard group.

A shard group is written by exactly one worker under
`shards/.tmp-shard-NNNNN-<uuid>/` and becomes visible by one atomic rename to
`shards/shard-NNNNN/`. Its commit record (the `commit` attribute of the group's
zarr.json, written in the tmp dir before the rename, so data and record appear
together; plain JSON, readable without zarr) holds the
manifest rows, checksums, quarantine and filtered rows and stage timings of the
shard's work unit. The manifest is built at finalize from the commit records.

A work unit whose episodes do not all share one array signature (image size,
camera set, label shapes) is split into sub-shards `shard-NNNNN-KK-<attempt>`,
renamed first; the primary `shard-NNNNN` is renamed last and lists them, so a unit
is committed exactly when its primary is. The attempt id in the sub-shard names
means two attempts of one unit (a retry racing a worker thought dead, a speculative
duplicate) never rename into the same directory: the winning primary lists only
its own sub-shards, and the loser's are removed as stale.

Arrays use the sharding codec: one Zarr shard (one file) per array, inner
chunks of `frames_per_chunk` along axis 0 (frames: one frame per chunk), each in
the encoding of its ArraySpec (curation/store/encodings.py): frames as the
source's own JPEG/PNG bytes (written here straight into the shard file, never
re-encoded) or PNG, fixed-point labels, the rest plain; then zstd
(`writer.compression`, default) on all but the images; last, on every array, the
crc32c of each inner chunk (the Zarr v3 spec's `crc32c` codec: 4 bytes after the
chunk, checked by zarr as it decodes; contract 3.1). A plain array without
compression is encoded directly (raw C-order bytes, each chunk followed by its
crc32c, then the shard index), byte-identical to what zarr writes (tests check it).
The manifest's checksums are over the decoded values (`stored_values`), what every
reader gets.
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

from curation.store.encodings import FixedPointCodec, ImageCodec, dequantize, encode_image, fixed_point_dtype, quantize
from schemas.durable import fsync_dir, fsync_tree, replace_durably
from schemas.dataset import CONTRACT_VERSION, SHARDS_DIR, ArraySpec, episode_checksum, spec_for
from schemas.episode import EncodedFrames

# Shard files are keyed "0.0.0.0" inside the array directory (zarr v3 "v2" chunk key
# encoding): one directory per array instead of one per dimension, which is most of
# the cost of writing small arrays on a real filesystem.
CHUNK_KEY_ENCODING = {"name": "v2", "separator": "."}
COMMIT_RECORD = "zarr.json"  # the commit record is its "commit" attribute
SHARD_PREFIX = "shard-"
TMP_PREFIX = ".tmp-"
# `writer.compression: zstd` is blosc's zstd at level 3 after its byte shuffle (both in the Zarr v3
# spec's blosc codec). On the curated Bridge labels (numcodecs, chunks of 16 anchors): int16
# tracks take 349 KB against 430 KB with plain zstd 1; level 5 takes 313 KB but made the shard
# write 1.25x slower (12 against 9.6 s per 1,000 frames, the old raw write 5.7 s).
ZSTD_LEVEL = 3
FRAME_MODES = ("source", "png")  # writer.frames: the source's own bytes where it has them, or PNG


def shard_name(group: int, sub: int = 0, attempt: str = "") -> str:
    """shard-NNNNN for a unit's primary shard, shard-NNNNN-KK-<attempt> for its sub-shard KK."""
    if sub == 0:
        return f"{SHARD_PREFIX}{group:05d}"
    if not attempt:
        raise ValueError("a sub-shard name needs the attempt id")
    return f"{SHARD_PREFIX}{group:05d}-{sub:02d}-{attempt}"


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
    """Through zarr, with the spec's codecs (encodings.py) and `compression` after them: the
    reference `_write_array_fast` is tested against."""
    import zarr

    spec = spec_by_name(name)
    kwargs = _codecs_for(spec, data, compression)
    chunks, shards = _layout_for(spec, data, frames_per_chunk)
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                             fill_value=_fill(data.dtype), chunk_key_encoding=CHUNK_KEY_ENCODING,
                             attributes=_attributes(spec), **kwargs)
    if data.shape[0]:
        with zarr.config.set({"array.write_empty_chunks": True}):
            arr[...] = data


def _compressor(stored: np.dtype):
    """blosc(zstd, ZSTD_LEVEL) after a byte shuffle of the stored values (a bit shuffle for masks:
    1.6x fewer bytes for `visible` than zstd alone)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=ZSTD_LEVEL, shuffle="bitshuffle" if stored == np.bool_ else "shuffle",
                      typesize=stored.itemsize)


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


def _codecs_for(spec: ArraySpec, data: np.ndarray, compression: str, image_format: str = "png") -> dict:
    """zarr create_array codec arguments of an array: the spec's encoding, then `compression`,
    then crc32c (always last: the checksum covers the chunk's bytes exactly as stored)."""
    from zarr.codecs import Crc32cCodec

    if spec.encoding == "image":
        return {"serializer": ImageCodec(format=image_format), "compressors": [Crc32cCodec()]}
    stored = np.dtype(fixed_point_dtype(data, spec.scale)) if spec.encoding == "fixed_point" else data.dtype
    kwargs: dict = {"compressors": [_compressor(stored), Crc32cCodec()] if compression == "zstd" else [Crc32cCodec()]}
    if spec.encoding == "fixed_point":
        kwargs["filters"] = [FixedPointCodec(scale=spec.scale, dtype=str(stored))]
    return kwargs


def _layout_for(spec: ArraySpec, data: np.ndarray, frames_per_chunk: int) -> tuple[tuple, tuple]:
    """(inner chunk shape, shard shape): frames one per chunk, the rest `frames_per_chunk` long."""
    if spec.encoding == "image":
        return (1,) + data.shape[1:], (max(1, data.shape[0]),) + data.shape[1:]
    return _layout(data, frames_per_chunk)


def _array_metadata(name: str, data: np.ndarray, chunks: tuple, shards: tuple, kwargs: dict, attrs: dict) -> dict:
    """zarr.json of a sharded array: made by zarr itself once per (name, dtype, trailing shape,
    codecs, attributes) and patched for the length, so zarr's event loop is entered once per
    process instead of once per array."""
    import zarr

    key = (name, data.dtype.str, data.shape[1:], chunks[0], json.dumps({k: _codec_json(v) for k, v in kwargs.items()}),
           json.dumps(attrs, sort_keys=True))
    if key not in _META_TEMPLATES:
        with tempfile.TemporaryDirectory() as d:
            g = zarr.open_group(d, mode="w", zarr_format=3)
            g.create_array("a", shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                           fill_value=_fill(data.dtype), chunk_key_encoding=CHUNK_KEY_ENCODING, attributes=attrs, **kwargs)
            _META_TEMPLATES[key] = (Path(d) / "a" / "zarr.json").read_text()
    meta = json.loads(_META_TEMPLATES[key])
    meta["shape"] = list(data.shape)
    meta["chunk_grid"]["configuration"]["chunk_shape"] = list(shards)
    meta["codecs"][0]["configuration"]["chunk_shape"] = list(chunks)
    return meta


def _codec_json(value):
    if isinstance(value, (list, tuple)):
        return [_codec_json(v) for v in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def _blosc_of(kwargs: dict):
    """The BloscCodec among an array's compressors, or None (uncompressed: crc32c alone)."""
    from zarr.codecs import BloscCodec

    return next((c for c in kwargs["compressors"] if isinstance(c, BloscCodec)), None)


def with_crc32c(chunk: bytes) -> bytes:
    """A chunk as the Zarr v3 `crc32c` codec encodes it: its bytes, then their crc32c (uint32, little-endian)."""
    import google_crc32c

    return chunk + struct.pack("<I", google_crc32c.value(chunk))


def _encoded_chunks(spec: ArraySpec, data: np.ndarray, c0: int, shard_len: int, kwargs: dict) -> list[bytes]:
    """The inner chunks of an array's one shard, encoded as zarr's codecs would (the edge chunk
    padded with the fill value, all zero bytes): fixed point, little-endian bytes, blosc; the
    crc32c is appended by the caller."""
    from numcodecs import Blosc

    if spec.encoding == "image":
        return [encode_image(frame, kwargs["serializer"].format) for frame in data]
    pad = shard_len - data.shape[0]
    if pad:
        data = np.concatenate([data, np.zeros((pad,) + data.shape[1:], data.dtype)])
    if "filters" in kwargs:
        data = quantize(data, spec.scale, kwargs["filters"][0].dtype)
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    comp = _blosc_of(kwargs)
    blosc = None if comp is None else Blosc(cname="zstd", clevel=comp.clevel, blocksize=0, typesize=comp.typesize,
                                            shuffle=Blosc.BITSHUFFLE if comp.shuffle.name == "bitshuffle" else Blosc.SHUFFLE)
    chunks = [data[i:i + c0].tobytes() for i in range(0, shard_len, c0)]
    return chunks if blosc is None else [bytes(blosc.encode(c)) for c in chunks]


def _write_shard_file(array_dir: Path, ndim: int, chunks: Iterable[bytes]) -> None:
    """One shard file laid out as zarr's ShardingCodec does: the inner chunks in order, each
    followed by its crc32c, then the index of (offset, nbytes) uint64 pairs and its crc32c."""
    import google_crc32c

    chunks = [with_crc32c(c) for c in chunks]
    sizes = np.array([len(c) for c in chunks], dtype="<u8")
    index = np.stack([np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<u8"), sizes], axis=1)
    index_bytes = np.ascontiguousarray(index, dtype="<u8").tobytes()
    with open(array_dir / ".".join("0" for _ in range(ndim)), "wb") as f:
        f.write(b"".join(chunks))
        f.write(index_bytes)
        f.write(struct.pack("<I", google_crc32c.value(index_bytes)))


def _write_array_fast(root: Path, name: str, data: np.ndarray, frames_per_chunk: int, compression: str = "none",
                      source: "EncodedFrames | None" = None) -> None:
    """An array without zarr's machinery: its zarr.json (zarr's own, cached) and its one shard
    file, encoded here (`_write_array` is the zarr reference the tests compare it with)."""
    spec = spec_by_name(name)
    parts = name.split("/")
    for i in range(1, len(parts)):  # implicit parent groups (frames/, depth_m/)
        gj = root.joinpath(*parts[:i]) / "zarr.json"
        if not gj.exists():
            gj.parent.mkdir(parents=True, exist_ok=True)
            gj.write_text(json.dumps(_GROUP_JSON, indent=2))
    adir = root / name
    os.makedirs(adir, exist_ok=True)
    kwargs = _codecs_for(spec, data, compression, source.format if source is not None else "png")
    chunks, shards = _layout_for(spec, data, frames_per_chunk)
    attrs = _attributes(spec, source_bytes=True) if source is not None else _attributes(spec)
    (adir / "zarr.json").write_text(json.dumps(_array_metadata(name, data, chunks, shards, kwargs, attrs)))
    if not data.shape[0]:
        return
    if source is None and _blosc_of(kwargs) is None and "filters" not in kwargs and "serializer" not in kwargs:
        _write_raw_shard(adir, data, chunks[0], shards[0])  # plain bytes, no copy into chunks
    else:
        _write_shard_file(adir, data.ndim, source.blobs if source is not None else
                          _encoded_chunks(spec, data, chunks[0], shards[0], kwargs))


def _fill(dtype: np.dtype):
    if dtype == np.bool_:
        return False
    if np.issubdtype(dtype, np.floating):
        return 0.0
    return 0


def _write_raw_shard(array_dir: Path, data: np.ndarray, c0: int, shard_len: int) -> None:
    """Encode the single shard of an uncompressed array the way zarr's ShardingCodec
    does (inner chunks in order along axis 0, each followed by its crc32c, the edge chunk
    padded with the fill value, then the index of (offset, nbytes) uint64 pairs + its
    crc32c), writing the array's bytes from views of it (no chunk copies)."""
    import google_crc32c

    data = np.ascontiguousarray(data)
    n_chunks = shard_len // c0
    chunk_nbytes = c0 * int(np.prod(data.shape[1:], dtype=np.int64)) * data.itemsize
    raw = data.reshape(-1).view(np.uint8)  # the array's bytes (a view; google_crc32c takes numpy buffers)
    index = np.empty((n_chunks, 2), dtype="<u8")
    index[:, 0] = np.arange(n_chunks, dtype=np.uint64) * (chunk_nbytes + 4)
    index[:, 1] = chunk_nbytes + 4
    index_bytes = index.tobytes()
    key = array_dir / ".".join("0" for _ in data.shape)  # the one shard, "v2" key encoding
    with open(key, "wb") as f:
        for i in range(n_chunks):
            piece = raw[i * chunk_nbytes:(i + 1) * chunk_nbytes]
            pad = bytes(chunk_nbytes - len(piece))  # the edge chunk: fill value 0 / False / 0.0, all zero bytes
            crc = google_crc32c.extend(google_crc32c.value(piece), pad) if pad else google_crc32c.value(piece)
            f.write(piece.data)
            if pad:
                f.write(pad)
            f.write(struct.pack("<I", crc))
        f.write(index_bytes)
        f.write(struct.pack("<I", google_crc32c.value(index_bytes)))


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
    for arr_name in sorted(payloads[0].arrays if payloads else ()):
        data = np.concatenate([v[arr_name] for v in stored], axis=0) if len(stored) > 1 else stored[0][arr_name]
        _write_array_fast(tmp_dir, arr_name, data, frames_per_chunk, compression, _source_frames(payloads, arr_name, frames))
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
            name = shard_name(group_index, sub, attempt)
            tmp = shards_dir / f"{TMP_PREFIX}{shard_name(group_index)}-{sub:02d}-{attempt}"
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
        for tmp, final in tmp_dirs[1:]:
            os.rename(tmp, final)  # names of this attempt only: nobody else renames onto them
        try:
            os.rename(tmp_dirs[0][0], primary)
        except OSError:
            # Another attempt of this unit committed first: its record stands, ours are orphans.
            existing = read_commit(primary)
            if existing is None:
                raise
            for _, final in tmp_dirs[1:]:
                shutil.rmtree(final, ignore_errors=True)
            return existing
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
    """Remove leftovers of killed attempts: tmp dirs, and sub-shards that their primary
    does not list (it never committed, or another attempt's primary won). Returns the
    removed names. Call only when no worker of this dataset is running (the job holds
    the dataset lock)."""
    shards_dir = Path(out_dir) / SHARDS_DIR
    removed = []
    if not shards_dir.is_dir():
        return removed
    names = {d.name for d in shards_dir.iterdir()}
    for name in sorted(names):
        path = shards_dir / name
        stale = name.startswith(TMP_PREFIX)
        if name.startswith(SHARD_PREFIX) and "-" in name[len(SHARD_PREFIX):]:
            primary = read_commit(shards_dir / "-".join(name.split("-")[:2]))  # shard-NNNNN
            stale = primary is None or name not in primary.get("sub_shards", [])
        if stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def iter_manifest_rows(records: Iterable[dict]) -> list[dict]:
    rows = []
    for rec in sorted(records, key=lambda r: r["group"]):
        rows.extend(sorted(rec["episodes"], key=lambda r: (r["shard"], r["frame_start"])))
    return rows
