"""The writer produces the real TFDS on-disk layout, in order, sharded as asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from curation.sources.rlds_write import write_rlds_dataset


def _features():
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
            }),
            "action": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
            "is_first": np.bool_,
        }),
        "episode_metadata": tfds.features.FeaturesDict({"seed": np.int64}),
    })


def _episodes(n, stacked):
    for i in range(n):
        T = 2 + i
        steps = {
            "observation": {"image": np.full((T, 8, 8, 3), 10 * i, np.uint8)},
            "action": np.stack([np.full(2, 100 * i + t, np.float32) for t in range(T)]),
            "language_instruction": [f"episode {i}"] * T,
            "is_first": np.arange(T) == 0,
        }
        if not stacked:
            steps = [
                {"observation": {"image": steps["observation"]["image"][t]}, "action": steps["action"][t],
                 "language_instruction": steps["language_instruction"][t], "is_first": bool(t == 0)}
                for t in range(T)
            ]
        yield {"steps": steps, "episode_metadata": {"seed": 1000 + i}}


@pytest.mark.parametrize("stacked", [True, False])
def test_writer_layout_order_and_shards(tmp_path, stacked):
    out = write_rlds_dataset(tmp_path, "toy_ds", "0.1.0", _features(),
                             {"train": _episodes(7, stacked), "val": _episodes(2, stacked)}, episodes_per_shard=3)
    assert out == tmp_path / "toy_ds" / "0.1.0"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "dataset_info.json", "features.json",
        "toy_ds-train.tfrecord-00000-of-00003", "toy_ds-train.tfrecord-00001-of-00003",
        "toy_ds-train.tfrecord-00002-of-00003", "toy_ds-val.tfrecord-00000-of-00001",
    ]
    info = json.loads((out / "dataset_info.json").read_text())
    train = [s for s in info["splits"] if s["name"] == "train"][0]
    assert [int(x) for x in train["shardLengths"]] == [3, 3, 1]
    assert info["disableShuffling"] is True

    builder = tfds.builder_from_directory(str(out))
    assert builder.info.splits["train"].num_examples == 7
    seeds, actions = [], []
    for ep in tfds.as_numpy(builder.as_dataset(split="train")):
        seeds.append(int(ep["episode_metadata"]["seed"]))
        steps = list(ep["steps"])
        actions.append([float(s["action"][0]) for s in steps])
        i = seeds[-1] - 1000
        assert steps[0]["is_first"] and not steps[-1]["is_first"]
        assert steps[0]["language_instruction"] == f"episode {i}".encode()
        assert int(steps[0]["observation"]["image"][0, 0, 0]) == 10 * i
    assert seeds == list(range(1000, 1007))  # written order, never reordered by key hash
    assert actions[3] == [300.0, 301.0, 302.0, 303.0, 304.0]


def test_writer_single_shard_and_overwrite(tmp_path):
    write_rlds_dataset(tmp_path, "toy_ds", "0.1.0", _features(), {"train": _episodes(5, True)}, episodes_per_shard=2)
    out = write_rlds_dataset(tmp_path, "toy_ds", "0.1.0", _features(), {"train": _episodes(4, True)})
    files = sorted(p.name for p in out.glob("*.tfrecord-*"))
    assert files == ["toy_ds-train.tfrecord-00000-of-00001"]  # stale shards removed
    assert tfds.builder_from_directory(str(out)).info.splits["train"].num_examples == 4


def test_writer_names_bad_episode(tmp_path):
    def bad():
        yield from _episodes(1, True)
        yield {"steps": {"observation": {"image": np.zeros((2, 9, 8, 3), np.uint8)}, "action": np.zeros((2, 2), np.float32),
                         "language_instruction": ["x", "x"], "is_first": [True, False]},
               "episode_metadata": {"seed": 0}}

    with pytest.raises(ValueError, match=r"toy_ds/0.1.0 split=train episode=1: cannot encode"):
        write_rlds_dataset(tmp_path, "toy_ds", "0.1.0", _features(), {"train": bad()})
