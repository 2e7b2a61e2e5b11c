"""The RLDS reader on the real Bridge episodes, on work units, and on a gs:// URL."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from curation.sources.rlds import RLDSSource, WorkUnit, read_episodes
from schemas.episode import Episode, EpisodeError
from test_rlds_helpers import write_contributed

BRIDGE_INSTRUCTIONS = {
    "flip pot upright which is in sink",
    "put carrot on plate",
    "put cup from counter or drying rack into sink",
    "turn lever vertical to front",
}


@pytest.fixture(scope="module")
def bridge_episodes(bridge_dir):
    return list(read_episodes(str(bridge_dir), split="train"))


def test_bridge_reads_all_episodes(bridge_dir, bridge_episodes):
    eps = bridge_episodes
    assert len(eps) == 25 and all(isinstance(e, Episode) for e in eps)
    assert sum(e.num_steps for e in eps) == 250
    assert {e.language for e in eps} == BRIDGE_INSTRUCTIONS
    for i, e in enumerate(eps):
        e.check()
        assert e.provenance.dataset == "bridge_dataset" and e.provenance.version == "1.0.0"
        assert e.provenance.split == "train" and e.provenance.episode_index == i
        assert e.provenance.file.endswith("bridge_dataset-train.tfrecord-00000-of-00001")
        assert e.provenance.source_url == str(bridge_dir)
        assert e.primary_camera == "image_0" and e.control_hz == 5.0
        assert list(e.frames) == ["image_0", "image_1", "image_2", "image_3"]
        assert all(f.shape == (10, 64, 64, 3) and f.dtype == np.uint8 for f in e.frames.values())
        assert e.blank_cameras == ("image_3",)
        assert e.actions.shape == (10, 7) and e.actions.dtype == np.float32
        assert e.proprio.shape == (10, 7)
    assert len({e.episode_id for e in eps}) == 25


def test_bridge_matches_tfds_decoding(bridge_dir, bridge_episodes):
    """Same actions bit for bit and the same pixels (up to JPEG decoder rounding) as TFDS itself."""
    builder = tfds.builder_from_directory(str(bridge_dir))
    ref = list(tfds.as_numpy(builder.as_dataset(split="train[5:8]")))
    for k, ep in enumerate(ref):
        mine = bridge_episodes[5 + k]
        steps = list(ep["steps"])
        np.testing.assert_array_equal(np.stack([s["action"] for s in steps]), mine.actions)
        np.testing.assert_array_equal(np.stack([s["observation"]["state"] for s in steps]), mine.proprio)
        img = np.stack([s["observation"]["image_0"] for s in steps]).astype(int)
        diff = np.abs(img - mine.frames["image_0"].astype(int))
        swapped = np.abs(img - mine.frames["image_0"][..., ::-1].astype(int))
        assert diff.mean() < 3.0 and swapped.mean() > 3 * diff.mean()  # RGB order, not BGR
        assert steps[0]["language_instruction"].decode() == mine.language


def test_ranges_and_work_units_follow_shards(tmp_path):
    path = write_contributed(tmp_path, "unit_ds", n=7, T=3, episodes_per_shard=3)
    src = RLDSSource(str(path))
    assert src.num_episodes == 7 and src.name == "unit_ds" and src.version == "0.1.0"
    assert [(f.num_episodes, f.start) for f in src.files] == [(3, 0), (3, 3), (1, 6)]
    assert [(u.start, u.stop) for u in src.work_units()] == [(0, 3), (3, 6), (6, 7)]
    units = src.work_units(episodes_per_unit=2)
    assert [(u.start, u.stop) for u in units] == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7)]
    assert units[2].file.endswith("unit_ds-train.tfrecord-00001-of-00003")
    assert units[2].tfds_split == "train[3:5]"
    got = [e for u in units for e in src.read_unit(u)]
    assert [e.provenance.episode_index for e in got] == list(range(7))
    assert [int(e.actions[0, 0]) for e in got] == [100 * i for i in range(7)]  # content of episode i
    across = list(src.read(2, 5))  # crosses a shard boundary
    assert [e.provenance.episode_index for e in across] == [2, 3, 4]
    assert across[1].provenance.file == units[2].file
    assert [e.provenance.episode_index for e in src.read(-2)] == [5, 6]
    with pytest.raises(ValueError, match="split"):
        list(src.read_unit(WorkUnit("val", 0, 1, units[0].file)))


def test_source_pickles_for_workers(tmp_path):
    import pickle

    path = write_contributed(tmp_path, "pickle_ds", n=2)
    src = RLDSSource(str(path))
    list(src.read(0, 1))  # builds the parser, which must not travel
    clone = pickle.loads(pickle.dumps(src))
    eps = list(clone.read())
    assert [e.provenance.episode_index for e in eps] == [0, 1]


def test_bucket_url_reaches_the_builder():
    url = "gs://gresearch/robotics/bridge/0.1.0"
    with pytest.raises(EpisodeError) as info:
        RLDSSource(url)
    assert url in str(info.value) and "cannot reach" in str(info.value)


def test_missing_directory_and_split(tmp_path):
    with pytest.raises(EpisodeError, match="cannot open"):
        RLDSSource(str(tmp_path / "nope" / "1.0.0"))
    path = write_contributed(tmp_path, "split_ds", n=1)
    with pytest.raises(EpisodeError, match="no split 'val'"):
        RLDSSource(str(path), split="val")


def test_camera_subset(bridge_dir):
    src = RLDSSource(str(bridge_dir), cameras=["image_1"])
    assert src.config.cameras == ("image_0", "image_1")  # the primary camera is always read
    (e,) = list(src.read(0, 1))
    assert list(e.frames) == ["image_0", "image_1"] and e.blank_cameras == ()


def test_layout_mismatch_is_an_episode_error(tmp_path):
    """A dataset registered under a name whose layout differs: clear error, no traceback."""
    from curation.sources.openx.registry import get_dataset_config

    path = write_contributed(tmp_path, "metaworld_sim", n=2)  # our sim's name, a contributed layout
    with pytest.raises(EpisodeError, match=r"episode=0 .*missing episode_metadata/intrinsics"):
        list(read_episodes(str(path)))
    assert get_dataset_config("metaworld_sim").primary_camera == "image"
