"""Chunk integrity of contract-3.1 shards: every inner chunk checked as it is read, none missing.

Contract 3.1 ends every array's inner codecs with the Zarr v3 spec's `crc32c` codec, so zarr
checks each chunk's 4-byte crc32c as it decodes it (zarr.codecs.Crc32cCodec raises ValueError
"Stored and computed checksum do not match"); the sharding codec's index carries its own crc32c
(zarr's default `index_codecs`: bytes, crc32c). What a checksum cannot catch is a chunk that is
not there: zarr reads an absent shard file, or an index entry marking an inner chunk absent
(offset and length 2**64 - 1), as fill values. The writer stores every chunk (writer.py), so
`CompleteChunksStore` turns both into a `MissingChunkError`, from the bytes zarr fetches anyway
(the shard index it reads before any chunk, or the whole shard file): no extra request.

`chunk_checksum_problems` says how an array's codecs depart from that layout, for `curate
validate` and the reader's open.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from zarr.abc.store import ByteRequest, SuffixByteRequest
from zarr.storage import WrapperStore

# zarr's sharding codec marks an absent inner chunk with this offset and length (MAX_UINT_64 in
# zarr/codecs/sharding.py); each index entry is (offset, nbytes) uint64, then the index's crc32c.
ABSENT = np.uint64(2**64 - 1)
INDEX_ENTRY_BYTES, CRC_BYTES = 16, 4
METADATA_KEY = "zarr.json"


class MissingChunkError(ValueError):
    """A chunk the shard's layout says is stored is not there (file or index entry)."""


def chunk_checksum_problems(arr) -> list[str]:
    """How a contract-3.1 array departs from per-chunk checksums ([] = as specified): crc32c must
    be the last of its inner codecs (after the serializer and compressor, so it covers the bytes
    as stored) and of its shard index's codecs."""
    from zarr.codecs import Crc32cCodec, ShardingCodec

    codecs = list(arr.metadata.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return [f"codecs {[c.to_dict()['name'] for c in codecs]}: not one sharding_indexed codec"]
    out = []
    inner = list(codecs[0].codecs)
    if not inner or not isinstance(inner[-1], Crc32cCodec):
        out.append(f"inner codecs {[c.to_dict()['name'] for c in inner]} do not end in crc32c (contract 3.1)")
    index = list(codecs[0].index_codecs)
    if not index or not isinstance(index[-1], Crc32cCodec):
        out.append(f"shard index codecs {[c.to_dict()['name'] for c in index]} do not end in crc32c")
    return out


def chunks_per_shard(arr) -> int:
    """Inner chunks in one shard file of a sharded array (its index has this many entries)."""
    outer = arr.metadata.chunk_grid.chunk_shape
    inner = arr.metadata.codecs[0].chunk_shape
    return int(math.prod(-(-o // i) for o, i in zip(outer, inner)))


class CompleteChunksStore(WrapperStore):
    """A read-only view of a shard group's store in which an absent chunk is an error (module
    docstring). `expect(path, n)` tells it the array at `path` has n inner chunks per shard file,
    which it needs to find the index at the end of a shard file read whole; until then a whole
    read is only checked for being there."""

    def __init__(self, store, chunks: Optional[dict[str, int]] = None) -> None:
        super().__init__(store)
        self.chunks: dict[str, int] = dict(chunks or {})

    def _with_store(self, store):
        return type(self)(store, self.chunks)

    def expect(self, path: str, n_chunks: int) -> None:
        self.chunks[path.strip("/")] = int(n_chunks)

    async def get(self, key: str, prototype=None, byte_range: Optional[ByteRequest] = None):
        buf = await self._store.get(key, prototype, byte_range)
        if key.rsplit("/", 1)[-1] == METADATA_KEY:
            return buf  # zarr probes for metadata; an absent zarr.json is its own error
        if buf is None:
            raise MissingChunkError(f"{key}: shard file missing (every chunk is stored; zarr would read fill values)")
        if isinstance(byte_range, SuffixByteRequest):
            index = buf.as_numpy_array()[:-CRC_BYTES]  # the shard index zarr reads first
        elif byte_range is None and key.rpartition("/")[0] in self.chunks:
            n = self.chunks[key.rpartition("/")[0]]
            index = buf.as_numpy_array()[-(n * INDEX_ENTRY_BYTES + CRC_BYTES):-CRC_BYTES]
        else:
            return buf  # one chunk's bytes: its crc32c checks them
        entries = np.frombuffer(index.tobytes(), "<u8").reshape(-1, 2)
        absent = np.flatnonzero((entries == ABSENT).all(axis=1))
        if absent.size:
            raise MissingChunkError(f"{key}: the shard index marks {absent.size} inner chunk(s) absent "
                                    f"(first: {int(absent[0])}; every chunk is stored; zarr would read fill values)")
        return buf
