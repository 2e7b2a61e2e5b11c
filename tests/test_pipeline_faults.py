"""Fault isolation: corrupt input (truncated tfrecord, undecodable JPEG, NaN actions),
a labeler that raises and a unit that fails are quarantined with provenance, stage and
reason; the job goes on; nothing is lost and everything is reported."""

from __future__ import annotations

import pyarrow.parquet as pq
import tensorflow as tf

from test_pipeline_helpers import edit_record, job_config, write_bad_dataset


def _files(path):
    return sorted(path.glob("*-train.tfrecord-*"))


def test_corrupt_input_is_quarantined_and_the_job_goes_on(tmp_path):
    from curation.store.validate import validate_dataset
    from pipelines.job import run_job

    src = write_bad_dataset(tmp_path / "src", n=8, T=10, nan_episode=2, episodes_per_shard=4)
    first, second = _files(src)

    def bad_jpeg(ex):
        ex.features.feature["steps/observation/image"].bytes_list.value[2] = b"\xff\xd8\xff\xe0 not a jpeg"

    edit_record(first, 1, bad_jpeg)
    sizes = [len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(str(second))]
    second.write_bytes(second.read_bytes()[: sizes[0] + sizes[1] + sizes[2] // 2])  # cut inside episode 6

    s = run_job(job_config(src, shard_episodes=4), tmp_path / "ds", progress=False)
    c = s["counts"]
    assert (c["planned"], c["written"], c["quarantined"], c["unaccounted"]) == (8, 4, 4, 0)
    assert c["read"] == 4  # episodes read intact: 0, 3, 4, 5 (the reader rejects the NaN one itself)
    q = {r["episode_index"]: r for r in pq.read_table(tmp_path / "ds" / "quarantine.parquet").to_pylist()}
    assert sorted(q) == [1, 2, 6, 7]
    assert "decode" in q[1]["reason"].lower() or "jpeg" in q[1]["reason"].lower() or "image" in q[1]["reason"].lower()
    assert "non-finite action" in q[2]["reason"]
    assert "truncated" in q[6]["reason"] and "truncated" in q[7]["reason"]
    assert q[1]["source_file"].endswith(first.name) and q[6]["source_file"].endswith(second.name)
    assert all(r["dataset"] == "stanford_hydra_dataset_converted_externally_to_rlds" and r["episode_id"] for r in q.values())
    written = pq.read_table(tmp_path / "ds" / "manifest.parquet").column("episode_index").to_pylist()
    assert written == [0, 3, 4, 5]
    assert validate_dataset(tmp_path / "ds") == []
    assert s["complete"]


def test_labeler_error_and_bad_labels_are_quarantined(tmp_path):
    from pipelines.stages import ProcessUnit, local_labeler, plan_units

    src = write_bad_dataset(tmp_path / "src", n=3, T=10)
    cfg = job_config(src, shard_episodes=3)
    real = local_labeler(cfg)

    def flaky(ep):
        if ep.provenance.episode_index == 0:
            raise RuntimeError("CUDA out of memory (simulated)")
        labels = real(ep)
        if ep.provenance.episode_index == 2:
            labels.tracks_px[:, :, -1] = 5.0  # a labeler bug: positions past the episode's end
            labels.in_range[:, -1] = False
        return labels

    _, (unit,) = plan_units(cfg)
    rec = ProcessUnit(cfg, str(tmp_path / "ds"), labeler=flaky)(unit)
    assert [r["episode_index"] for r in rec["episodes"]] == [1]
    q = {r["episode_index"]: r for r in rec["quarantine"]}
    assert q[0]["stage"] == "label" and "CUDA out of memory" in q[0]["reason"] and "RuntimeError" in q[0]["error"]
    assert q[2]["stage"] == "contract" and "out-of-range" in q[2]["reason"]


def test_failing_unit_goes_to_dead_letter_on_every_engine(tmp_path):
    from pipelines.engines.beam import BeamEngine
    from pipelines.engines.local import Failure, LocalEngine

    def stage(x):
        if x == 2:
            raise ValueError("disk full (simulated)")
        return x * 10

    cfg = job_config(tmp_path, runner="beam", workers=2)
    for engine in (LocalEngine(cfg), BeamEngine(cfg, tmp_path / "job")):
        with engine:
            got = dict(engine.map_unordered(stage, [1, 2, 3]))
        assert got[1] == 10 and got[3] == 30
        assert isinstance(got[2], Failure) and "disk full" in got[2].error
