"""Bad input: every bad episode is a clear EpisodeError naming file, episode and reason, and
reading a whole dataset skips and reports it while returning the good ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from cli.main import main as curate
from curation.sources.rlds import RLDSSource, read_episodes
from curation.sources.rlds_write import write_rlds_dataset
from schemas.episode import Episode, EpisodeError
from test_pipeline_helpers import edit_record
from test_rlds_helpers import contributed_episode, contributed_features, write_contributed

NAME = "stanford_hydra_dataset_converted_externally_to_rlds"  # a registered contributed dataset


def _split(items):
    good = [x for x in items if isinstance(x, Episode)]
    bad = [x for x in items if isinstance(x, EpisodeError)]
    assert len(good) + len(bad) == len(items)
    return good, bad


def _shard(path, k=0):
    return sorted(path.glob("*-train.tfrecord-*"))[k]


def test_truncated_tfrecord_reports_file_and_goes_on(tmp_path):
    path = write_contributed(tmp_path, NAME, n=6, T=3, episodes_per_shard=3)
    first = _shard(path, 0)
    sizes = [len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(str(first))]  # 16 B of framing per record
    data = first.read_bytes()
    first.write_bytes(data[: sizes[0] + sizes[1] + sizes[2] // 2])  # cut inside episode 2
    good, bad = _split(list(read_episodes(str(path), on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [0, 1, 3, 4, 5]
    (err,) = bad
    msg = str(err)
    assert first.name in msg and "episode=2" in msg and "runs past the end of the file (truncated)" in msg
    assert err.provenance.episode_index == 2 and err.provenance.file == str(first)
    with pytest.raises(EpisodeError, match="episode=2.*truncated or corrupt tfrecord"):
        list(read_episodes(str(path)))


def test_tfrecord_cut_at_a_record_boundary(tmp_path):
    path = write_contributed(tmp_path, NAME, n=3, T=3)
    f = _shard(path)
    first_len = len(next(iter(tf.data.TFRecordDataset(str(f)))).numpy()) + 16
    f.write_bytes(f.read_bytes()[:first_len])
    good, bad = _split(list(RLDSSource(str(path)).read(on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [0]
    assert "episode=1" in str(bad[0]) and "ended after 1 episodes, dataset_info says 3" in str(bad[0])


def test_undecodable_jpeg_names_step_and_camera(tmp_path):
    path = write_contributed(tmp_path, NAME, n=3, T=12)  # > 8 frames: the threaded decode path

    def corrupt(ex):
        ex.features.feature["steps/observation/image"].bytes_list.value[9] = b"\xff\xd8\xff\xe0 not a jpeg"

    edit_record(_shard(path), 1, corrupt)
    good, bad = _split(list(read_episodes(str(path), on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [0, 2]
    msg = str(bad[0])
    assert "episode=1" in msg and _shard(path).name in msg
    assert "step 9 camera 'image': undecodable image" in msg


def test_missing_key(tmp_path):
    path = write_contributed(tmp_path, NAME, n=3, T=4)
    edit_record(_shard(path), 0, lambda ex: ex.features.feature.pop("steps/action"))
    edit_record(_shard(path), 2, lambda ex: ex.features.feature.pop("episode_metadata/file_path"))
    good, bad = _split(list(read_episodes(str(path), on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [1]
    msg = str(bad[0])
    assert "episode=0" in msg and "missing key(s) ['steps/action']" in msg and _shard(path).name in msg
    msg = str(bad[1])
    assert "episode=2" in msg and "cannot parse episode" in msg and "episode_metadata/file_path" in msg


def test_nan_actions(tmp_path):
    actions = np.zeros((5, 4), np.float32)
    actions[3, 1] = np.nan
    eps = [contributed_episode(0, 5), contributed_episode(1, 5, actions=actions), contributed_episode(2, 5)]
    path = write_rlds_dataset(tmp_path, NAME, "0.1.0", contributed_features(), {"train": eps})
    good, bad = _split(list(read_episodes(str(path), on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [0, 2]
    assert "episode=1" in str(bad[0]) and "non-finite action (NaN/inf) at step 3 dim 1" in str(bad[0])
    assert bad[0].where.startswith(f"{NAME}/0.1.0 split=train episode=1 (")
    assert (bad[0].provenance.dataset, bad[0].provenance.episode_index) == (NAME, 1)
    import pickle
    again = pickle.loads(pickle.dumps(bad[0]))  # errors cross process boundaries in Beam and Ray
    assert (again.reason, again.provenance, str(again)) == (bad[0].reason, bad[0].provenance, str(bad[0]))


def test_empty_episode(tmp_path):
    feats = contributed_features()
    eps = [contributed_episode(0, 3), {"steps": [], "episode_metadata": {"file_path": "empty"}}, contributed_episode(2, 3)]
    path = write_rlds_dataset(tmp_path, NAME, "0.1.0", feats, {"train": eps})
    good, bad = _split(list(read_episodes(str(path), on_error="yield")))
    assert [e.provenance.episode_index for e in good] == [0, 2]
    assert "episode=1" in str(bad[0]) and "empty episode" in str(bad[0])


def test_inspect_reports_bad_episodes(tmp_path, capsys):
    actions = np.zeros((4, 4), np.float32)
    actions[0, 0] = np.inf
    eps = [contributed_episode(i, 4) for i in range(4)]
    eps[2] = contributed_episode(2, 4, actions=actions)
    path = write_rlds_dataset(tmp_path, NAME, "0.1.0", contributed_features(), {"train": eps})
    assert curate(["inspect", str(path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["episodes"] == 3 and r["episodes_in_split"] == 4 and r["steps"] == 12
    (b,) = r["bad_episodes"]
    assert "episode=2" in b["where"] and "non-finite action" in b["reason"]


def test_on_error_is_checked(tmp_path):
    path = write_contributed(tmp_path, NAME, n=1)
    with pytest.raises(ValueError, match="on_error"):
        list(read_episodes(str(path), on_error="skip"))
