"""Contract 3.x encodings (curation/store/encodings.py): every array read back within its bound.

Episodes of the real Bridge fixture (JPEG cameras) and of the simulator (PNG camera, depth) are
labelled by the default EpisodeLabeler and written by the shard writer; each array is then read by
a plain zarr-python process that finds our codecs through the package's entry points only, and
compared with the labeler's output (fixed-point arrays within `max_abs_error`, NaN exactly where
it was, the rest equal), and frames with TFDS's own decode of the source, bit for bit. The
validator must accept the shard and name a changed encoding or bound.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import google_crc32c

import numpy as np
import pytest
import zarr

from curation.store.encodings import FixedPointCodec, dequantize, fixed_point_dtype, quantize, within_bound
from curation.store.writer import EpisodePayload, commit_unit
from schemas.dataset import SHARD_ARRAYS, SHARDS_DIR, spec_for
from test_pipeline_helpers import shard_index

PLAIN_READ = """
import sys, zarr, numpy as np
group = zarr.open_group(sys.argv[1], mode="r")
np.savez(sys.argv[2], **{name: group[name][...] for name in sys.argv[3:]})
"""


def _labelled(path, n: int):
    from curation.sources.rlds import RLDSSource
    from labelers.episode_labeler import EpisodeLabeler
    from pipelines.stages import episode_arrays, manifest_row, source_frames

    labeler = EpisodeLabeler()
    out = []
    for ep in RLDSSource(str(path)).read(0, n):
        labels = labeler(ep)
        arrays = episode_arrays(ep, labels)
        out.append((ep, EpisodePayload(arrays, manifest_row(ep, labels, arrays), source_frames(ep, arrays))))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory, bridge_dir, sim_dataset_dir):
    """{"bridge" | "sim": (episodes, payloads, shard dir, {array: what a plain zarr read gives})}."""
    made = {}
    for name, path in (("bridge", bridge_dir), ("sim", sim_dataset_dir)):
        pairs = _labelled(path, 2)
        out = tmp_path_factory.mktemp(name)
        commit_unit(out, 0, [p for _, p in pairs], {})
        shard = out / SHARDS_DIR / "shard-00000"
        names = sorted(pairs[0][1].arrays)
        subprocess.run([sys.executable, "-c", PLAIN_READ, str(shard), str(out / "plain.npz"), *names], check=True)
        with np.load(out / "plain.npz") as z:
            plain = {k: z[k] for k in z.files}
        made[name] = ([e for e, _ in pairs], [p for _, p in pairs], shard, plain)
    return made


def _concat(payloads, name):
    return np.concatenate([p.arrays[name] for p in payloads], axis=0)


@pytest.mark.parametrize("source", ["bridge", "sim"])
def test_every_array_reads_back_within_its_bound(written, source):
    episodes, payloads, shard, plain = written[source]
    group = zarr.open_group(str(shard), mode="r")
    seen = set()
    for name, got in plain.items():
        spec = spec_for(name)
        want = _concat(payloads, name)
        np.testing.assert_array_equal(group[name][...], got)  # this process (register()) = the plain one
        assert got.dtype == np.dtype(spec.dtype) and got.shape == want.shape, name
        assert group[name].attrs["encoding"] == spec.encoding
        assert group[name].attrs["max_abs_error"] == spec.max_abs_error
        if spec.encoding == "fixed_point":
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert within_bound(got, want, spec.max_abs_error).all(), name
            assert not within_bound(got, want, spec.max_abs_error / 4).all(), name  # the values really were rounded
            assert np.isfinite(want).sum() > 0, name  # the bound was checked on real values
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
        seen.add(spec.encoding)
    assert seen == ({"image", "fixed_point", "plain"})
    if source == "sim":
        assert {"depth_m/image", "points_cam_m", "depth_track_m"} <= set(plain)


@pytest.mark.parametrize("source,fmt", [("bridge", "jpeg"), ("sim", "png")])
def test_frames_are_the_sources_bytes_and_decode_as_tfds_does(written, source, fmt):
    """Each inner chunk is the source's encoded frame, and decoding it gives TFDS's pixels
    (the Episode's frames come from TFDS's own decoder, curation/sources/rlds_decode.py)."""
    episodes, payloads, shard, plain = written[source]
    cams = [n for n in plain if n.startswith("frames/")]
    assert cams
    for name in cams:
        cam = name.split("/", 1)[1]
        blobs = [b for ep in episodes for b in ep.encoded_frames[cam].blobs]
        assert {ep.encoded_frames[cam].format for ep in episodes} == {fmt}
        data_file = shard / name / "0.0.0.0"
        data = data_file.read_bytes()
        chunks = [data[int(o):int(o + n)] for o, n in shard_index(data_file, len(blobs))]
        assert [c[:-4] for c in chunks] == blobs  # the source's bytes, each followed by its crc32c
        assert [struct.unpack("<I", c[-4:])[0] for c in chunks] == [google_crc32c.value(b) for b in blobs]
        codecs = json.loads((shard / name / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
        assert codecs == [{"name": "curator.image", "configuration": {"format": fmt, "quality": 95}}, {"name": "crc32c"}]
        np.testing.assert_array_equal(plain[name], np.concatenate([ep.frames[cam] for ep in episodes]))


def test_the_bounds_meet_the_accuracy_the_labels_need():
    by = {s.name: s for s in SHARD_ARRAYS}
    assert by["tracks_px"].max_abs_error <= 0.05  # pixels
    for name in ("points_cam_m", "depth_track_m", "depth_m/{camera}"):
        assert by[name].max_abs_error <= 0.001  # metres
    assert all(s.max_abs_error == 0 for s in SHARD_ARRAYS if s.encoding != "fixed_point")


def test_fixed_point_keeps_nan_widens_to_int32_and_never_wraps():
    x = np.array([0.0, -1.25, np.nan, 1023.9], np.float32)
    assert fixed_point_dtype(x, 32) == "int16"
    np.testing.assert_array_equal(dequantize(quantize(x, 32, "int16"), 32), [0.0, -1.25, np.nan, 1023.90625])
    big = np.array([5000.0, np.nan], np.float32)  # a track far outside a large image
    assert fixed_point_dtype(big, 32) == "int32"
    np.testing.assert_array_equal(dequantize(quantize(big, 32, "int32"), 32), big)
    with pytest.raises(ValueError, match="does not fit int16"):
        quantize(big, 32, "int16")
    assert FixedPointCodec.from_dict(FixedPointCodec(scale=32, dtype="int32").to_dict()) == FixedPointCodec(scale=32, dtype="int32")


def _tamper(shard, name, edit):
    path = shard / name / "zarr.json"
    original = path.read_text()
    meta = json.loads(original)
    edit(meta)
    path.write_text(json.dumps(meta))
    return lambda: path.write_text(original)


def test_validate_names_a_wrong_encoding_or_bound(written):
    from curation.store.validate import _validate_shard
    from schemas.dataset import episode_checksum

    _, payloads, shard, _ = written["bridge"]
    rows = [r for r in json.loads((shard / "zarr.json").read_text())["attributes"]["commit"]["episodes"]]
    root = shard.parent.parent

    def violations():
        out = []
        _validate_shard(root, shard.name, rows, True, out, zarr, episode_checksum)
        return [str(v) for v in out]

    assert violations() == []

    def bound(meta):
        meta["attributes"]["max_abs_error"] = 0.001
    def scale(meta):
        meta["codecs"][0]["configuration"]["codecs"][0]["configuration"]["scale"] = 16.0
    def plain(meta):
        meta["codecs"][0]["configuration"]["codecs"].pop(0)
        meta["data_type"] = "int16"
    def no_crc(meta):
        assert meta["codecs"][0]["configuration"]["codecs"].pop() == {"name": "crc32c"}

    for edit, expect in ((bound, "attribute max_abs_error 0.001, contract says 0.015625"),
                         (scale, "contract says one curator.fixed_point at scale 32.0"),
                         (plain, "contract says one curator.fixed_point at scale 32.0"),
                         (no_crc, "inner codecs ['curator.fixed_point', 'bytes', 'blosc'] do not end in crc32c (contract 3.1)")):
        restore = _tamper(shard, "tracks_px", edit)
        try:
            found = violations()
        finally:
            restore()
        assert any("[encoding]" in v and "tracks_px" in v and expect in v for v in found), (expect, found)
    assert violations() == []


def test_frames_without_source_bytes_are_lossless_png(written, tmp_path):
    """writer.frames=png (and any camera without source bytes: pixel tensors, BGR) re-encodes the
    pixels as PNG through the codec: exact."""
    episodes, payloads, _, _ = written["bridge"]
    commit_unit(tmp_path, 0, payloads, {}, frames="png")
    group = zarr.open_group(str(tmp_path / SHARDS_DIR / "shard-00000"), mode="r")
    for name in [n for n in payloads[0].arrays if n.startswith("frames/")]:
        meta = json.loads((tmp_path / SHARDS_DIR / "shard-00000" / name / "zarr.json").read_text())
        assert meta["codecs"][0]["configuration"]["codecs"][0]["configuration"]["format"] == "png"
        assert "source_bytes" not in meta["attributes"]
        np.testing.assert_array_equal(group[name][...], _concat(payloads, name))


def test_a_contract_2_dataset_is_still_read_and_validated(bridge_dir, tmp_path):
    """Contract 2.x stored the same arrays raw (no codecs but sharding and bytes, no encoding
    attributes): rewritten that way, a curated dataset reads back the same and validates."""
    import shutil

    from curation import open_dataset
    from curation.store.validate import validate_dataset
    from curation.store.writer import CHUNK_KEY_ENCODING, _fill
    from test_pipeline_helpers import cached_run

    src, _ = cached_run("bridge-local", bridge_dir)
    old = tmp_path / "v2"
    shutil.copytree(src, old)
    new = open_dataset(str(src))
    for shard in sorted((old / SHARDS_DIR).iterdir()):
        group = zarr.open_group(str(shard), mode="r+")
        for name in [n for n in new.read_shard(shard.name)]:
            spec, data = spec_for(name), group[name][...]
            del group[name]
            a = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(16,) + data.shape[1:],
                                   compressors=None, fill_value=_fill(data.dtype), chunk_key_encoding=CHUNK_KEY_ENCODING,
                                   attributes={"units": spec.units, "per": spec.per, "nan_ok": spec.nan_ok})
            a[...] = data
        group.attrs["contract_version"] = "2.0.0"
    info = json.loads((old / "dataset.json").read_text())
    (old / "dataset.json").write_text(json.dumps({**info, "contract_version": "2.0.0"}))
    assert validate_dataset(old) == []
    ds = open_dataset(str(old))
    for eid in new.episode_ids[:3]:
        a, b = ds.episode_arrays(eid), new.episode_arrays(eid)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n], equal_nan=True) for n in a)
