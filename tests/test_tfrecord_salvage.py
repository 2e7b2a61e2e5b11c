"""A damaged tfrecord loses only the damaged records: a flipped data byte costs exactly its
episode, a damaged record header costs the records it held (the scan resynchronises at the next
whole record), and every intact episode reads back equal to the undamaged file's."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from curation.sources.rlds import RLDSSource
from curation.sources.tfrecord_scan import HEADER_BYTES, assign_indices, scan_buffer
from schemas.episode import Episode, EpisodeError
from test_rlds_helpers import write_contributed

NAME = "stanford_hydra_dataset_converted_externally_to_rlds"


def _offsets(path) -> list[int]:
    """Byte offset of every record (16 bytes of framing per record)."""
    out, pos = [], 0
    for r in tf.data.TFRecordDataset(str(path)):
        out.append(pos)
        pos += len(r.numpy()) + 16
    return out


def _read(path):
    items = list(RLDSSource(str(path)).read(on_error="yield"))
    good = {e.provenance.episode_index: e for e in items if isinstance(e, Episode)}
    bad = {e.provenance.episode_index: str(e) for e in items if isinstance(e, EpisodeError)}
    assert len(good) + len(bad) == len(items)
    return good, bad


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _same(a: Episode, b: Episode) -> None:
    for cam in a.frames:
        np.testing.assert_array_equal(a.frames[cam], b.frames[cam])
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.language == b.language


def _dataset(tmp_path):
    path = write_contributed(tmp_path, NAME, n=5, T=3)
    (f,) = sorted(path.glob("*-train.tfrecord-*"))
    clean, _ = _read(path)
    return path, f, clean


def test_flipped_data_byte_costs_exactly_its_episode(tmp_path):
    path, f, clean = _dataset(tmp_path)
    off = _offsets(f)
    _flip(f, off[2] + HEADER_BYTES + 40)
    good, bad = _read(path)
    assert sorted(good) == [0, 1, 3, 4] and sorted(bad) == [2]
    assert "data checksum mismatch" in bad[2] and f"record at byte {off[2]}" in bad[2] and f.name in bad[2]
    for i in good:
        _same(good[i], clean[i])


def test_damaged_header_resynchronises_at_the_next_record(tmp_path):
    path, f, clean = _dataset(tmp_path)
    off = _offsets(f)
    _flip(f, off[1] + 3)  # inside record 1's length field
    good, bad = _read(path)
    assert sorted(good) == [0, 2, 3, 4] and sorted(bad) == [1]
    assert f"damaged record header at byte {off[1]}" in bad[1]
    for i in good:
        _same(good[i], clean[i])


def test_two_damaged_headers_one_record_each_are_placed(tmp_path):
    path, f, clean = _dataset(tmp_path)
    off = _offsets(f)
    _flip(f, off[1] + 2)
    _flip(f, off[3] + 9)  # record 3's header checksum
    good, bad = _read(path)
    assert sorted(good) == [0, 2, 4] and sorted(bad) == [1, 3]  # 2 lost in 2 gaps: one each
    for i in good:
        _same(good[i], clean[i])


def test_gaps_of_unknown_size_never_guess_positions(tmp_path):
    path, f, _ = _dataset(tmp_path)
    off = _offsets(f)
    _flip(f, off[1] + 2)
    _flip(f, off[3] + 9)
    _flip(f, off[4] + HEADER_BYTES + 5)  # record 4's data: the scan resyncs past it, 3 lost in 2 gaps
    good, bad = _read(path)
    assert sorted(good) == [0] and sorted(bad) == [1, 2, 3, 4]
    assert "the position of later records is unknown" in bad[2]


def test_scan_of_an_intact_buffer_matches_tensorflow(tmp_path):
    _, f, _ = _dataset(tmp_path)
    slots = scan_buffer(f.read_bytes())
    assert [s.data for s in slots] == [r.numpy() for r in tf.data.TFRecordDataset(str(f))]
    assert [d for d, _ in assign_indices(slots, 5)] == [s.data for s in slots]
    assert [r for _, r in assign_indices(slots[:3], 5)][3:] == [
        "the file holds 3 readable record slot(s), its metadata says 5 (truncated file)"] * 2
