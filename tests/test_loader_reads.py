"""The reader's episode-level read path and the loader on it: an episode read by its own slices
equals plain zarr-python reads and the whole-shard read; any read order yields the same
triplets; a dataset streamed from s3:// (a directory copied there, and a published version)
equals the local directory, through the reader and through the loader with workers; the
verification catches a flipped byte and a deleted chunk through the new path; the loader's
subsample-first transform equals the full computation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from s3_helpers import loopback_s3
from test_pipeline_helpers import as_contract_3_0, cached_run, shard_index, write_shard_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bridge(bridge_dir) -> Path:
    """25 Bridge episodes of 10 steps in shards of 3: episodes start at frames 0, 10, 20 of
    their shard, inner chunks are 16 frames, so most episodes straddle a chunk boundary."""
    out, summary = cached_run("bridge-local", bridge_dir)
    assert summary["complete"]
    return out


def _assert_same_triplet(a, b) -> None:
    assert (a.episode_id, a.anchor, a.language) == (b.episode_id, b.anchor, b.language)
    assert sorted(a.images) == sorted(b.images) and sorted(a.motion) == sorted(b.motion) and a.motion
    for name in a.images:
        np.testing.assert_array_equal(a.images[name], b.images[name])
    for name in a.motion:
        np.testing.assert_array_equal(a.motion[name], b.motion[name], err_msg=name)
    np.testing.assert_array_equal(a.action_chunk, b.action_chunk)
    np.testing.assert_array_equal(a.action_chunk_valid, b.action_chunk_valid)
    np.testing.assert_array_equal(a.proprio, b.proprio)


def test_episode_reads_equal_plain_zarr_and_the_whole_shard(bridge):
    import zarr

    from curation import open_dataset
    from curation.store.reader import FRAME_ARRAYS, array_names

    ds = open_dataset(str(bridge))
    straddling = 0
    for shard in ds.shard_names:
        whole = ds.read_shard(shard)
        plain = zarr.open_group(str(bridge / "shards" / shard), mode="r", zarr_format=3)
        names = array_names(plain)
        assert sorted(whole) == names and "actions" in names and "tracks_px" in names
        for eid in ds.episodes_of(shard):
            r = ds.row(eid)
            got = ds.read_episode(eid)
            assert sorted(got) == names
            fs, fc, as_, ac = r["frame_start"], r["frame_count"], r["anchor_start"], r["anchor_count"]
            straddling += fs // 16 != (fs + fc - 1) // 16
            for name in names:
                lo, n = (fs, fc) if name.split("/")[0] in FRAME_ARRAYS else (as_, ac)
                ref = plain[name][lo:lo + n]  # zarr-python's own read of the same slice
                assert got[name].shape[0] == n and got[name].dtype == ref.dtype
                np.testing.assert_array_equal(got[name], ref, err_msg=f"{shard}/{name} episode {eid}")
                np.testing.assert_array_equal(got[name], whole[name][lo:lo + n])
    assert straddling > 0  # the slices really cross inner-chunk boundaries


def test_any_episode_order_reads_the_same_triplets(bridge):
    from curation import open_dataset

    ds = open_dataset(str(bridge))
    by_episode = {}
    for tr in ds.iter_triplets(prefetch=0):
        by_episode.setdefault(tr.episode_id, []).append(tr)
    order = list(np.random.default_rng(0).permutation(ds.episode_ids))
    got = list(ds.iter_triplets(episodes=order))  # with the prefetch thread
    assert [t.episode_id for t in got] == [e for e in order for _ in by_episode[e]]
    for a, b in zip((t for e in order for t in by_episode[e]), got, strict=True):
        _assert_same_triplet(a, b)
    # stopping early stops the prefetch thread (no thread left behind)
    import threading

    it = ds.iter_triplets(episodes=order)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name == "curated-prefetch"]


@pytest.fixture(scope="module")
def s3(bridge):
    """moto's S3 server on loopback with the AWS_* environment pointing at it; the Bridge dataset
    copied there as a directory and published there as a version."""
    import fsspec

    from curation.registry.publish import publish

    with loopback_s3("loader"):
        fsspec.filesystem("s3").put(str(bridge), "loader/dir/bridge", recursive=True)
        pv = publish(str(bridge), "bridge", "1.0.0", to_url="s3://loader/reg", progress=False)
        yield {"dir": "s3://loader/dir/bridge", "published": pv.ref}


def test_s3_streaming_equals_the_directory(bridge, s3):
    from curation import open_dataset

    local = list(open_dataset(str(bridge)).iter_triplets())
    for ref in (s3["dir"], s3["published"]):
        remote = open_dataset(ref)
        assert remote.episode_ids == open_dataset(str(bridge)).episode_ids
        got = list(remote.iter_triplets())
        assert len(got) == len(local) > 0
        for a, b in zip(local, got, strict=True):
            _assert_same_triplet(a, b)


def _samples(ref, cfg, workers: int, **kw) -> dict:
    from policy.loader import TripletStream, make_loader

    out = {}
    for batch in make_loader(TripletStream(ref, cfg, seed=5, shuffle_buffer=8, epochs=1, **kw), 4, workers, seed=0):
        for i, (eid, t) in enumerate(zip(batch["episode_id"], batch["anchor"])):
            assert (eid, t) not in out
            out[(eid, t)] = {k: batch[k][i].numpy() for k in ("image", "motion", "motion_mask", "action", "state")}
    return out


def test_loader_from_s3_with_workers_equals_the_directory(bridge, s3):
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.train import config_for_data

    cfg = config_for_data(open_dataset(str(bridge)), LaMPConfig(d_model=32, n_heads=2, motion_points=16,
                                                                motion_horizon=4, image_patch=8))
    local = _samples(str(bridge), cfg, 0)
    assert len(local) == open_dataset(str(bridge)).num_triplets()
    for ref in (s3["published"], s3["dir"]):
        remote = _samples(ref, cfg, 2)
        assert sorted(remote) == sorted(local)
        for key, sample in local.items():
            for name, value in sample.items():
                np.testing.assert_array_equal(value, remote[key][name], err_msg=f"{ref} {key} {name}")


def test_loader_reads_only_the_primary_camera_and_the_labels_it_uses(bridge, tmp_path):
    """The loader asks the reader for the transform's camera and labels only: with every other
    camera's frames and every other label deleted from a copy, the ordinary read fails and the
    loader's samples equal those of the intact dataset (verification on)."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError
    from policy.loader import labels_read
    from schemas.triplet import ALWAYS_READ, PRIMARY_CAMERA

    cfg = _small_cfg(bridge)
    keep = set(labels_read(cfg)) | set(ALWAYS_READ)
    copy = _copy(bridge, tmp_path)
    ds = open_dataset(str(bridge))
    primary = {ds.row(e)["primary_camera"] for s in ds.shard_names for e in ds.episodes_of(s)}
    removed = set()
    for shard in (copy / "shards").iterdir():
        for cam in (shard / "frames").iterdir():
            if cam.is_dir() and cam.name not in primary:
                shutil.rmtree(cam)
                removed.add(f"frames/{cam.name}")
        for name in ("points_cam_m", "motion_image", "flow_valid", "latent_tokens", "latent_valid"):
            if (shard / name).is_dir() and name not in keep:
                shutil.rmtree(shard / name)
                removed.add(name)
    assert any(n.startswith("frames/") for n in removed) and "motion_image" in removed, removed  # Bridge: 3 cameras
    bare = open_dataset(str(copy))
    with pytest.raises(DatasetIntegrityError, match="has no array 'frames/"):  # a camera of the manifest is gone
        bare.read_episode(bare.episodes_of(bare.shard_names[0])[0])
    got = list(bare.iter_triplets(cameras=PRIMARY_CAMERA, labels=labels_read(cfg)))
    assert len(got) == ds.num_triplets() and all(set(t.images) == {t.meta["primary_camera"]} for t in got)
    assert all(set(t.motion) <= keep for t in got)
    want, two_workers = _samples(str(bridge), cfg, 0), _samples(str(copy), cfg, 2)
    assert two_workers.keys() == want.keys()
    for key, sample in two_workers.items():
        for name, value in sample.items():
            np.testing.assert_array_equal(value, want[key][name], err_msg=f"{key} {name}")


def _copy(bridge: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(bridge, copy)
    return copy


def _flip_inside_frame(copy: Path, shard: str, eid: str, ds) -> str:
    """Flip one bit inside the JPEG entropy data of episode `eid`'s frame at its second anchor (of
    its first camera; the loader reads only anchor frames), located through the shard index: a
    wrong pixel that still decodes, so only a checksum can see it. Returns the camera's array name."""
    import zarr

    frames = copy / "shards" / shard / "frames"
    cam = sorted(p.name for p in frames.iterdir() if p.is_dir())[0]
    data_file = frames / cam / "0.0.0.0"
    raw = bytearray(data_file.read_bytes())
    n_chunks = zarr.open_array(str(frames / cam), mode="r").shape[0]  # one frame per inner chunk
    frame = ds.row(eid)["frame_start"] + int(ds.read_episode(eid)["anchor_step"][1])
    offset, nbytes = (int(v) for v in shard_index(data_file, n_chunks)[frame])
    # from 16 bytes before the chunk's end (its crc32c, if any, and the JPEG end marker lie after)
    at = next(i for i in range(offset + nbytes - 16, offset + nbytes // 2, -1)
              if raw[i] not in (0xFF, 0xFE) and raw[i - 1] != 0xFF)
    raw[at] ^= 0x01
    data_file.write_bytes(bytes(raw))
    return f"frames/{cam}"


def _small_cfg(bridge: Path):
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.train import config_for_data

    return config_for_data(open_dataset(str(bridge)), LaMPConfig(d_model=32, n_heads=2, motion_points=16,
                                                                motion_horizon=4, image_patch=8))


def test_flipped_byte_is_caught_by_the_chunk_checksum_naming_shard_array_and_episode(bridge, tmp_path):
    """Contract 3.1: zarr's crc32c codec catches the flipped bit as it decodes the chunk; the
    reader names shard, array and episode, the block's other episodes still read."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    ds = open_dataset(str(copy))
    assert ds.chunk_checksums and ds.info["contract_version"] == "3.1.0"
    shard = ds.shard_names[1]
    victim_eid = ds.episodes_of(shard)[1]
    name = _flip_inside_frame(copy, shard, victim_eid, ds)
    ds = open_dataset(str(copy))
    expect = (f"episode {victim_eid} in shard {shard}: shards/{shard}/{name} cannot be read: "
              f"ValueError: Stored and computed checksum do not match")
    with pytest.raises(DatasetIntegrityError, match=expect):
        ds.read_episode(victim_eid)
    for eid in ds.episodes_of(shard):  # the block's other episodes are intact and read
        if eid != victim_eid:
            assert ds.read_episode(eid)["actions"].shape[0] == ds.row(eid)["frame_count"]
    cfg = _small_cfg(bridge)
    with pytest.raises(Exception, match=expect):
        _samples(str(copy), cfg, 2)  # raised in a DataLoader worker, re-raised here
    with pytest.raises(Exception, match="Stored and computed checksum do not match"):
        _samples(str(copy), cfg, 0, verify=False)  # the checksum is zarr's own decode: never skipped


def test_triplet_reads_decode_only_the_anchor_frames(bridge, tmp_path):
    """On a 3.1 dataset iter_triplets fetches and decodes only the frames at the anchors: a damaged
    frame between anchors is never read (every triplet comes back, equal to the intact dataset's),
    while reading the episode's frames whole names it."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    ds = open_dataset(str(copy))
    shard = ds.shard_names[0]
    eid = ds.episodes_of(shard)[0]
    steps = ds.read_episode(eid)["anchor_step"]
    between = int(steps[0]) + 1  # not an anchor (stride 4)
    assert between not in steps.tolist()
    frames = copy / "shards" / shard / "frames"
    cam = sorted(p.name for p in frames.iterdir() if p.is_dir())[0]
    data_file = frames / cam / "0.0.0.0"
    raw = bytearray(data_file.read_bytes())
    n_chunks = int(ds.open_shard(shard)[f"frames/{cam}"].shape[0])  # one frame per inner chunk
    offset, nbytes = (int(v) for v in shard_index(data_file, n_chunks)[ds.row(eid)["frame_start"] + between])
    raw[offset + nbytes // 2] ^= 0x01  # inside the frame's bytes: its crc32c no longer matches
    data_file.write_bytes(bytes(raw))
    damaged = open_dataset(str(copy))
    got = list(damaged.iter_triplets(shards=[shard]))
    want = list(open_dataset(str(bridge)).iter_triplets(shards=[shard]))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        _assert_same_triplet(a, b)
    with pytest.raises(DatasetIntegrityError, match=f"episode {eid} in shard {shard}: shards/{shard}/frames/{cam} cannot be read"):
        damaged.read_episode(eid)


def test_contract_3_0_flipped_byte_is_caught_by_the_episode_checksum(bridge, tmp_path):
    """A contract-3.0 dataset (no chunk checksums) is still verified by its manifest's sha256."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    as_contract_3_0(copy)
    ds = open_dataset(str(copy))
    assert not ds.chunk_checksums
    assert sum(1 for _ in ds.iter_triplets()) == ds.num_triplets()  # reads, checked, as written
    shard = ds.shard_names[1]
    victim_eid = ds.episodes_of(shard)[1]
    _flip_inside_frame(copy, shard, victim_eid, ds)
    ds = open_dataset(str(copy))
    with pytest.raises(DatasetIntegrityError, match=f"episode {victim_eid} in shard {shard}: its arrays do not match"):
        ds.read_episode(victim_eid)
    for eid in ds.episodes_of(shard):
        if eid != victim_eid:
            assert ds.read_episode(eid)
    cfg = _small_cfg(bridge)
    with pytest.raises(Exception, match=f"episode {victim_eid} in shard {shard}: its arrays do not match"):
        _samples(str(copy), cfg, 2)
    assert len(_samples(str(copy), cfg, 2, verify=False)) == ds.num_triplets()  # verify=False asked for


def test_deleted_chunk_is_an_error_never_fill_values(bridge, tmp_path):
    """A deleted shard file and an index entry marking a chunk absent (index crc32c rewritten to
    match) are errors naming shard, array and episode: zarr alone would read fill values."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    shards = open_dataset(str(copy)).shard_names
    (copy / "shards" / shards[0] / "tracks_px" / "0.0.0.0").unlink()
    ds = open_dataset(str(copy))
    for eid in ds.episodes_of(shards[0]):
        with pytest.raises(DatasetIntegrityError, match=f"episode {eid} in shard {shards[0]}: shards/{shards[0]}/tracks_px "
                                                        f"cannot be read: MissingChunkError: tracks_px/0.0.0.0: shard file missing"):
            ds.read_episode(eid)
    actions = copy / "shards" / shards[1] / "actions" / "0.0"
    raw = actions.read_bytes()
    index = shard_index(actions, 2)  # 30 frames in chunks of 16
    chunks = [raw[int(o):int(o + n)] for o, n in index]
    write_shard_index(actions, chunks)  # rewritten unchanged: reads as before
    assert open_dataset(str(copy)).read_episode(ds.episodes_of(shards[1])[0])
    data = actions.read_bytes()
    index[1] = 2**64 - 1  # the second chunk marked absent, with a valid index crc32c
    import struct

    import google_crc32c

    body = index.astype("<u8").tobytes()
    actions.write_bytes(data[:-(len(body) + 4)] + body + struct.pack("<I", google_crc32c.value(body)))
    ds = open_dataset(str(copy))
    last = ds.episodes_of(shards[1])[-1]  # frames 20..29: in the second chunk
    with pytest.raises(DatasetIntegrityError, match=f"episode {last} in shard {shards[1]}: shards/{shards[1]}/actions "
                                                    f"cannot be read: MissingChunkError: .*marks 1 inner chunk"):
        ds.read_episode(last)
    assert sum(1 for _ in open_dataset(str(copy), verify=False).iter_triplets(shards=shards[1:2])) > 0  # fill values


def test_contract_3_0_deleted_chunk_is_caught_by_the_episode_checksum(bridge, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    as_contract_3_0(copy)
    shard = open_dataset(str(copy)).shard_names[0]
    (copy / "shards" / shard / "tracks_px" / "0.0.0.0").unlink()
    ds = open_dataset(str(copy))
    for eid in ds.episodes_of(shard):
        with pytest.raises(DatasetIntegrityError, match=f"episode {eid} in shard {shard}: its arrays do not match"):
            ds.read_episode(eid)


def test_missing_required_array_is_named(bridge, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    copy = _copy(bridge, tmp_path)
    shard = open_dataset(str(copy)).shard_names[0]
    shutil.rmtree(copy / "shards" / shard / "anchor_step")
    with pytest.raises(DatasetIntegrityError, match=f"shards/{shard} has no array 'anchor_step'"):
        list(open_dataset(str(copy)).iter_triplets())


def test_subsample_first_transform_equals_the_full_computation():
    from policy.loader import relative_motion, subsample_horizon, subsample_motion, subsample_points

    rng = np.random.default_rng(0)
    K, T = 36, 12
    m = {"tracks_px": rng.normal(size=(K, T, 2)).astype(np.float32) * 9, "visible": rng.random((K, T)) > 0.3,
         "in_range": rng.random(T) > 0.2, "valid_3d": rng.random((K, T)) > 0.4,
         "depth_track_m": rng.random((K, T)).astype(np.float32), "points_cam_m": rng.normal(size=(K, T, 3)).astype(np.float32)}
    m["tracks_px"][3, 5] = np.nan
    m["depth_track_m"][7, 0] = np.nan
    k_idx, t_idx = subsample_points(K, 9), subsample_horizon(T, 4)
    steps = np.concatenate([[0], t_idx])
    for repr_ in ("uvd", "xyz", "uv"):
        full, mask, anchor = relative_motion(m, repr_)
        sub, sub_mask, sub_anchor = relative_motion(subsample_motion(m, k_idx, steps), repr_)
        np.testing.assert_array_equal(sub[:, 1:], full[k_idx][:, t_idx])
        np.testing.assert_array_equal(sub_mask[:, 1:], mask[k_idx][:, t_idx])
        np.testing.assert_array_equal(sub_anchor, anchor[k_idx])
        assert sub_mask.any() and not sub_mask.all()


def test_an_episodes_samples_transformed_together_equal_one_by_one(bridge):
    """TripletTransform.many (one vectorised pass over an episode's anchors, what the loader runs)
    gives each triplet the sample the one-triplet path gives, value and dtype, for every motion
    representation; a Bridge episode's triplets carry NaN-free proprio, 7-d actions and a chunk
    that runs past the episode's end."""
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.loader import TripletStream, relative_motion, subsample_motion, subsample_motion_many, transform_samples
    from policy.train import config_for_data

    ds = open_dataset(str(bridge))
    triplets = list(ds.iter_triplets())
    assert len({t.episode_id for t in triplets}) > 1 and any(not t.action_chunk_valid.all() for t in triplets)
    for repr_ in ("uvd", "xyz", "uv"):
        cfg = config_for_data(ds, LaMPConfig(d_model=32, n_heads=2, motion_points=16, motion_horizon=4,
                                             image_patch=8, motion_repr=repr_))
        transform = TripletStream(str(bridge), cfg, shuffle_buffer=0, epochs=1).transform
        together = list(transform_samples(transform, iter(triplets)))
        assert len(together) == len(triplets)
        for tr, got in zip(triplets, together):
            want = transform.many([tr])[0]
            assert got.keys() == want.keys() and (got["episode_id"], got["anchor"]) == (tr.episode_id, tr.anchor)
            for name, value in want.items():
                if isinstance(value, np.ndarray):
                    assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
                    np.testing.assert_array_equal(got[name], value, err_msg=f"{repr_} {name}")
        # the stacked relative motion is the per-triplet one, triplet by triplet
        episode = [t for t in triplets if t.episode_id == triplets[0].episode_id]
        k, steps = transform.k_idx, transform.steps
        stacked = relative_motion(subsample_motion_many([t.motion for t in episode], k, steps), repr_)
        for i, t in enumerate(episode):
            for a, b in zip(stacked, relative_motion(subsample_motion(t.motion, k, steps), repr_)):
                np.testing.assert_array_equal(a[i], b)
