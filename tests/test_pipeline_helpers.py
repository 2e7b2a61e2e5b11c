"""Helpers for the pipeline tests (no tests here): small job configs, cached runs,
datasets with corrupt episodes in the real TFDS format, dataset comparison."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# Small labels so a job over a few episodes takes seconds on 2 shared cores.
FAST = ["labels.grid=6", "labels.horizon=6", "labels.stride=4"]
_RUNS: dict = {}
_TMP = Path(tempfile.mkdtemp(prefix="pipeline-tests-"))


def job_config(source, runner="local", workers=1, shard_episodes=3, extra=(), **kw):
    from pipelines.config import JobConfig

    return JobConfig.load(None, list(FAST) + list(extra), **{
        "source.path": str(source), "engine.runner": runner, "engine.workers": workers,
        "writer.shard_episodes": shard_episodes, **kw})


def cached_run(key: str, source, runner="local", workers=1, **kw) -> tuple[Path, dict]:
    """Run a job once per test session (several test files compare against it)."""
    if key not in _RUNS:
        from pipelines.job import run_job

        out = _TMP / key
        shutil.rmtree(out, ignore_errors=True)
        summary = run_job(job_config(source, runner, workers, **kw), out, progress=False)
        _RUNS[key] = (out, summary)
    return _RUNS[key]


def manifest_rows(out: Path) -> list[dict]:
    """Manifest rows without the machine-specific source path, shard names without the attempt id
    (which differs between two runs of the same job)."""
    from schemas.dataset import shard_key

    rows = pq.read_table(out / "manifest.parquet").drop(["source_file"]).to_pylist()
    return [{**r, "shard": shard_key(r["shard"])} for r in rows]


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same manifest rows (ids, offsets, checksums, quality figures) and array contents."""
    from curation import open_dataset

    ra, rb = manifest_rows(a), manifest_rows(b)
    assert len(ra) == len(rb) > 0
    diffs = [(i, k, x[k], y.get(k)) for i, (x, y) in enumerate(zip(ra, rb)) for k in x if x[k] != y.get(k)]
    assert not diffs, f"manifests of {a.name} and {b.name} differ (row, column, a, b): {diffs[:8]}"
    from schemas.dataset import shard_key

    da, db = open_dataset(str(a)), open_dataset(str(b))
    b_names = {shard_key(s): s for s in db.shard_names}
    for shard in da.shard_names:
        xa, xb = da.read_shard(shard), db.read_shard(b_names[shard_key(shard)])
        assert sorted(xa) == sorted(xb)
        for name in xa:
            np.testing.assert_array_equal(xa[name], xb[name], err_msg=f"{shard}/{name}")
    qa = pq.read_table(a / "quarantine.parquet").drop(["source_file", "error"]).to_pylist()
    qb = pq.read_table(b / "quarantine.parquet").drop(["source_file", "error"]).to_pylist()
    assert sorted(qa, key=str) == sorted(qb, key=str), (qa, qb)


def textured_frames(T: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """A random texture sliding one pixel per step: enough for the tracker and filters."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 255, (size, size + T, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(big[::4, ::4], 4, 0), 4, 1)[:size, : size + T]  # 4 px blobs
    return np.stack([big[:, t:t + size] for t in range(T)])


def write_bad_dataset(root: Path, n: int = 6, T: int = 10, nan_episode: int | None = None,
                      episodes_per_shard: int | None = None) -> Path:
    """A contributed-style dataset (JPEG frames) with textured moving frames."""
    import tensorflow_datasets as tfds

    from curation.sources.rlds_write import write_rlds_dataset

    obs = {"image": tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8, encoding_format="jpeg"),
           "state": tfds.features.Tensor(shape=(3,), dtype=np.float32)}
    feats = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict(obs),
            "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
    })
    eps = []
    for i in range(n):
        actions = np.linspace(-1, 1, T * 4, dtype=np.float32).reshape(T, 4) * (i + 1) / n
        if i == nan_episode:
            actions[3, 1] = np.nan
        eps.append({"steps": {
            "observation": {"image": textured_frames(T, seed=i), "state": np.full((T, 3), i, np.float32)},
            "action": actions, "reward": np.zeros(T, np.float32), "is_first": np.arange(T) == 0,
            "language_instruction": [f"push the block {['left', 'right', 'up'][i % 3]}"] * T,
        }, "episode_metadata": {"file_path": f"/raw/ep{i}.h5"}})
    return write_rlds_dataset(root, "stanford_hydra_dataset_converted_externally_to_rlds", "0.1.0", feats,
                              {"train": eps}, episodes_per_shard=episodes_per_shard)


def edit_record(path: Path, index: int, edit) -> None:
    """Rewrite one serialized episode of a tfrecord: edit(tf.train.Example)."""
    import tensorflow as tf

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    ex = tf.train.Example.FromString(records[index])
    edit(ex)
    records[index] = ex.SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def shard_index(shard_file: Path, n_chunks: int) -> np.ndarray:
    """The (offset, nbytes) uint64 pairs of a shard file's index: the file's last 16 * n_chunks + 4
    bytes, then a crc32c of the index (zarr's sharding codec, index at the end)."""
    raw = shard_file.read_bytes()
    return np.frombuffer(raw[-(16 * n_chunks + 4):-4], "<u8").reshape(n_chunks, 2).copy()


def write_shard_index(shard_file: Path, chunks: list[bytes]) -> None:
    """A shard file of `chunks` (each already encoded), laid out as zarr's sharding codec does."""
    import struct

    import google_crc32c

    sizes = np.array([len(c) for c in chunks], "<u8")
    index = np.stack([np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes], axis=1).astype("<u8").tobytes()
    shard_file.write_bytes(b"".join(chunks) + index + struct.pack("<I", google_crc32c.value(index)))


def as_contract_3_0(root: Path) -> None:
    """Rewrite a contract-3.1 dataset as contract 3.0 stored it (the same codecs without the
    trailing crc32c): every inner chunk without its last 4 bytes (checked to be its crc32c first),
    crc32c dropped from each array's inner codecs, contract_version 3.0.0 in dataset.json and every
    shard group."""
    import json
    import math
    import struct

    import google_crc32c

    for meta in sorted(Path(root, "shards").glob("*/**/zarr.json")):
        doc = json.loads(meta.read_text())
        if doc.get("node_type") == "group":
            attrs = doc.get("attributes", {})
            if "contract_version" in attrs:
                attrs["contract_version"] = "3.0.0"
                if isinstance(attrs.get("commit"), dict):
                    attrs["commit"]["contract_version"] = "3.0.0"
                meta.write_text(json.dumps(doc, indent=2))
            continue
        sharding = doc["codecs"][0]["configuration"]
        assert sharding["codecs"][-1]["name"] == "crc32c", meta
        sharding["codecs"].pop()
        n = math.prod(-(-o // i) for o, i in zip(doc["chunk_grid"]["configuration"]["chunk_shape"], sharding["chunk_shape"]))
        shard_file = meta.parent / ".".join("0" for _ in doc["shape"])
        if shard_file.is_file():
            raw = shard_file.read_bytes()
            chunks = []
            for offset, nbytes in shard_index(shard_file, n):
                c = raw[int(offset):int(offset + nbytes)]
                assert struct.unpack("<I", c[-4:])[0] == google_crc32c.value(c[:-4]), (shard_file, offset)
                chunks.append(c[:-4])
            write_shard_index(shard_file, chunks)
        meta.write_text(json.dumps(doc))
    info_path = Path(root, "dataset.json")
    info = json.loads(info_path.read_text())
    info["contract_version"] = "3.0.0"
    info_path.write_text(json.dumps(info, indent=2))
