"""Salvage reading of a damaged TFRecord file: every intact record, and where the damage is.

TFRecord framing (TensorFlow's `core/lib/io/record_writer.cc`), per record:

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32), little-endian.

TensorFlow's reader stops at the first damaged record, so one flipped byte would make every later
episode of the file unreadable. `scan_records` reads the framing itself: a record whose header is
intact but whose data checksum fails is skipped exactly (its length is known); a record whose
header is damaged starts a gap, and the scan resynchronises at the next offset where a whole
record verifies (header and data checksums both match: a false match has odds of 2**-64).
`assign_indices` then maps what was found to the file's episode indices, given how many the
dataset's metadata says the file holds.

Only used after TensorFlow has reported data loss; intact files are read by TensorFlow.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Optional

import google_crc32c

HEADER_BYTES = 12  # uint64 length + uint32 crc of it
FOOTER_BYTES = 4   # uint32 crc of the data
_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class ScannedRecord:
    """One record slot of the file. `data` is None for a damaged record.
    `gap`: the slot stands for an unknown number (>= 1) of records lost to a damaged header."""

    offset: int
    data: Optional[bytes]
    reason: str = ""
    gap: bool = False


def _header_length(buf, pos: int, size: int) -> Optional[int]:
    """The record length at `pos` if its header checksum holds and the record fits in the file."""
    if pos + HEADER_BYTES + FOOTER_BYTES > size:
        return None
    raw = bytes(buf[pos:pos + 8])
    (crc,) = struct.unpack("<I", buf[pos + 8:pos + 12])
    if masked_crc(raw) != crc:
        return None
    (length,) = struct.unpack("<Q", raw)
    return length if pos + HEADER_BYTES + length + FOOTER_BYTES <= size else -1


def _data_ok(buf, pos: int, length: int) -> bool:
    start = pos + HEADER_BYTES
    (crc,) = struct.unpack("<I", buf[start + length:start + length + FOOTER_BYTES])
    return masked_crc(bytes(buf[start:start + length])) == crc


def _resync(buf, pos: int, size: int) -> int:
    """The next offset after `pos` where a whole record verifies, or `size` if none does."""
    for cand in range(pos + 1, size - HEADER_BYTES - FOOTER_BYTES + 1):
        length = _header_length(buf, cand, size)
        if length is not None and length >= 0 and _data_ok(buf, cand, length):
            return cand
    return size


def scan_buffer(buf) -> list[ScannedRecord]:
    """Every record slot of a TFRecord byte buffer, in file order."""
    size, pos, out = len(buf), 0, []
    while pos < size:
        length = _header_length(buf, pos, size)
        if length is None and pos + HEADER_BYTES + FOOTER_BYTES > size:
            out.append(ScannedRecord(pos, None, f"file ends inside a record header at byte {pos} (truncated)"))
            break
        if length == -1:
            out.append(ScannedRecord(pos, None, f"record at byte {pos} runs past the end of the file (truncated)"))
            break
        if length is None:
            nxt = _resync(buf, pos, size)
            out.append(ScannedRecord(pos, None, f"damaged record header at byte {pos}; bytes {pos}..{nxt - 1} "
                                                "unreadable", gap=True))
            pos = nxt
            continue
        if _data_ok(buf, pos, length):
            out.append(ScannedRecord(pos, bytes(buf[pos + HEADER_BYTES:pos + HEADER_BYTES + length])))
        else:
            out.append(ScannedRecord(pos, None, f"record at byte {pos}: data checksum mismatch (corrupt bytes)"))
        pos += HEADER_BYTES + length + FOOTER_BYTES
    return out


def scan_records(path: str) -> list[ScannedRecord]:
    """scan_buffer over a local file (memory-mapped) or any path TensorFlow's gfile opens."""
    import os

    if os.path.exists(path):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return []
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return scan_buffer(buf)
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return scan_buffer(f.read())


def assign_indices(slots: list[ScannedRecord], expected: int) -> list[tuple[Optional[bytes], str]]:
    """Map scanned slots to the file's `expected` records: [(data or None, reason)] * expected.

    A gap stands for the records its damaged bytes held (at least one). The sizes are known when
    there is one gap (it holds what the expected count leaves over) or when the records lost are
    as many as the gaps (one each); otherwise the split is unknown, and every record from the
    first gap on is reported unplaceable rather than given a guessed index."""
    known = sum(1 for s in slots if not s.gap)
    n_gaps = sum(1 for s in slots if s.gap)
    lost = max(n_gaps, expected - known)
    placeable = n_gaps <= 1 or lost == n_gaps
    out: list[tuple[Optional[bytes], str]] = []
    for s in slots:
        if len(out) >= expected:
            break
        if not s.gap:
            out.append((s.data, s.reason))
        elif placeable:
            out.extend([(s.data, s.reason)] * min(lost - n_gaps + 1, expected - len(out)))
        else:
            reason = f"{s.reason}; {n_gaps} damaged regions hold {lost} records: the position of later records is unknown"
            out.extend([(None, reason)] * (expected - len(out)))
            break
    if len(out) < expected:
        reason = f"the file holds {len(out)} readable record slot(s), its metadata says {expected} (truncated file)"
        out.extend([(None, reason)] * (expected - len(out)))
    return out
