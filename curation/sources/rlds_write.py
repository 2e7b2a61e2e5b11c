"""Write an RLDS dataset in the real TFDS on-disk format (what Open X-Embodiment ships).

    <root>/<name>/<version>/
        dataset_info.json
        features.json
        <name>-<split>.tfrecord-00000-of-00002
        <name>-<split>.tfrecord-00001-of-00002

One serialized tf.train.Example per episode, encoded by TFDS's own feature
connectors (`FeaturesDict.encode_example` + `ExampleSerializer`), so the result is
byte-for-byte the layout `tfds.builder_from_directory` reads. Episodes are written
in the order they are given (no key-hash shuffling, unlike a default
GeneratorBasedBuilder), and `disable_shuffling` is recorded so readers keep it.

Used by the simulator (curation/simulate.py) and by tests that need small Open-X
datasets with the quirks of the real ones.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

_FILE_FORMAT = "tfrecord"


def _steps_as_list(steps: Any) -> Any:
    """Accept steps as a list of step dicts or as a (nested) dict of stacked arrays."""
    if isinstance(steps, Mapping):
        return _unstack(steps)
    return list(steps)


def _unstack(tree: Mapping) -> list[dict]:
    """{"a": [T...], "b": {"c": [T...]}} -> [{"a": .., "b": {"c": ..}}, ...] (T entries)."""
    lengths: set[int] = set()

    def collect(node):
        for v in node.values():
            if isinstance(v, Mapping):
                collect(v)
            else:
                lengths.add(len(v))

    collect(tree)
    if len(lengths) > 1:
        raise ValueError(f"stacked steps have inconsistent lengths {sorted(lengths)}")
    T = lengths.pop() if lengths else 0

    def pick(node, t):
        return {k: (pick(v, t) if isinstance(v, Mapping) else v[t]) for k, v in node.items()}

    return [pick(tree, t) for t in range(T)]


def write_rlds_dataset(
    root: str | os.PathLike,
    name: str,
    version: str,
    features,
    splits: Mapping[str, Iterable[dict]],
    description: str = "",
    episodes_per_shard: int | None = None,
    homepage: str | None = None,
    citation: str | None = None,
) -> pathlib.Path:
    """Write `splits` ({split: iterable of episodes}) as a TFDS dataset; return <root>/<name>/<version>.

    Each episode is {"steps": [step dict, ...] or {key: stacked array}, "episode_metadata": {...}}
    matching `features` (a tfds.features.FeaturesDict whose "steps" is a tfds.features.Dataset).
    `episodes_per_shard` splits a split over several tfrecord files (one file when None).
    Existing tfrecords of the written splits in the target directory are replaced.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import example_serializer
    from tensorflow_datasets.core import splits as splits_lib

    if episodes_per_shard is not None and episodes_per_shard < 1:
        raise ValueError(f"episodes_per_shard must be >= 1, got {episodes_per_shard}")
    if not isinstance(features, tfds.features.FeaturesDict):
        features = tfds.features.FeaturesDict(features)
    out = pathlib.Path(root) / name / version
    out.mkdir(parents=True, exist_ok=True)

    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=name,
            version=tfds.core.Version(version),
            data_dir=str(out),
            module_name=__name__,
        ),
        description=description or f"{name} written by curation.sources.rlds_write",
        features=features,
        disable_shuffling=True,
        homepage=homepage,
        citation=citation,
    )
    info.set_file_format(_FILE_FORMAT)
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())

    split_infos = [_write_split(out, name, version, split, episodes, features, serializer, episodes_per_shard)
                   for split, episodes in splits.items()]
    info.set_splits(splits_lib.SplitDict(split_infos))
    info.write_to_directory(str(out))
    return out


def _write_split(out: pathlib.Path, name: str, version: str, split: str, episodes: Iterable[dict], features,
                 serializer, episodes_per_shard: int | None):
    """One split's tfrecord shards, each written under a temporary name and renamed once
    complete; -> its tfds SplitInfo."""
    import tensorflow as tf
    from tensorflow_datasets.core import naming
    from tensorflow_datasets.core import splits as splits_lib

    for old in out.glob(f"{name}-{split}.{_FILE_FORMAT}-*"):
        old.unlink()
    template = naming.ShardedFileTemplate(data_dir=str(out), dataset_name=name, split=split, filetype_suffix=_FILE_FORMAT)
    tmp_paths: list[pathlib.Path] = []
    shard_lengths: list[int] = []
    num_bytes = 0
    writer = None
    for i, episode in enumerate(episodes):
        if writer is None:
            tmp = out / f".{name}-{split}.{_FILE_FORMAT}-{len(tmp_paths):05d}.tmp"
            tmp_paths.append(tmp)
            shard_lengths.append(0)
            writer = tf.io.TFRecordWriter(str(tmp))
        example = dict(episode)
        example["steps"] = _steps_as_list(example["steps"])
        try:
            encoded = features.encode_example(example)
        except Exception as e:  # name the episode: a feature mismatch otherwise reads as noise
            writer.close()
            raise ValueError(f"{name}/{version} split={split} episode={i}: cannot encode: {e}") from e
        record = serializer.serialize_example(encoded)
        writer.write(record)
        shard_lengths[-1] += 1
        num_bytes += len(record)
        if episodes_per_shard is not None and shard_lengths[-1] >= episodes_per_shard:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()
    n = len(tmp_paths)
    for k, tmp in enumerate(tmp_paths):
        tmp.rename(template.sharded_filepath(shard_index=k, num_shards=n))
    log.debug("wrote %s split %s: %d episodes in %d shard(s)", name, split, sum(shard_lengths), n)
    return splits_lib.SplitInfo(name=split, shard_lengths=shard_lengths, num_bytes=num_bytes, filename_template=template)
