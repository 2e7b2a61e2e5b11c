"""The job on one machine: config, shard writer encoding, a local run on the real
Bridge episodes (valid, complete, readable), reruns and config changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from pipelines.config import JobConfig
from curation.store.writer import committed_groups
from test_pipeline_helpers import cached_run, job_config, manifest_rows


def test_config_file_overrides_and_hash(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("labels: {stride: 2, tracker: lk}\nwriter: {shard_episodes: 5}\nengine: {runner: ray, workers: 2}\n")
    cfg = JobConfig.load(f, ["labels.stride=8", "curation.filters.min_steps=3", "engine.num_gpus.label=0.5"],
                         **{"source.path": "/data/x", "engine.workers": None})
    assert cfg.labels == {"stride": 8, "tracker": "lk"}
    assert cfg.writer.shard_episodes == 5 and cfg.engine.runner == "ray" and cfg.engine.workers == 2
    assert cfg.curation.filters == {"min_steps": 3} and cfg.engine.num_gpus == {"label": 0.5}
    assert JobConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.label_config().stride == 8
    # How a job is run does not change what it makes; what it makes does.
    other = JobConfig.from_dict({**cfg.to_dict(), "engine": {"runner": "local", "workers": 1}})
    assert other.content_hash() == cfg.content_hash()
    assert JobConfig.load(f, ["labels.stride=4"]).content_hash() != cfg.content_hash()
    with pytest.raises(ValueError, match="unknown writer config keys"):
        JobConfig.load(None, ["writer.shards=3"])
    with pytest.raises(ValueError, match="runner"):
        JobConfig.load(None, ["engine.runner=spark"])


def test_raw_shard_encoding_is_byte_identical_to_zarr(tmp_path):
    """The direct path writes the plain arrays (writer.compression=none: raw bytes, each chunk's
    crc32c after it) exactly as zarr would."""
    from zarr.codecs import Crc32cCodec

    from curation.store.writer import CHUNK_KEY_ENCODING, _attributes, _chunk_len, _fill, _write_array_fast, spec_by_name, write_group_json

    rng = np.random.default_rng(0)
    arrays = {"actions": rng.normal(size=(37, 7)).astype(np.float32),
              "anchor_step": np.arange(0, 40, 8, dtype=np.int32),
              "visible": rng.random((5, 4, 3)) > 0.5,
              "latent_tokens": rng.integers(-1, 8, (5, 4)).astype(np.int16)}
    (tmp_path / "ours").mkdir()
    write_group_json(tmp_path / "ours", {})
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w", zarr_format=3)
    for name, a in arrays.items():
        _write_array_fast(tmp_path / "ours", name, a, 16)
        c0 = _chunk_len(a.shape[0], 16)
        spec = spec_by_name(name)
        r = ref.create_array(name, shape=a.shape, dtype=a.dtype, chunks=(c0,) + a.shape[1:],
                             shards=(-(-a.shape[0] // c0) * c0,) + a.shape[1:], compressors=[Crc32cCodec()],
                             chunk_key_encoding=CHUNK_KEY_ENCODING,
                             fill_value=_fill(a.dtype),
                             attributes=_attributes(spec))
        with zarr.config.set({"array.write_empty_chunks": True}):
            r[...] = a
    back = zarr.open_group(str(tmp_path / "ours"), mode="r")
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name][...], a)
        assert back[name].metadata.to_dict()["codecs"][0]["name"] == "sharding_indexed"
        files = sorted(p.relative_to(tmp_path / "ours") for p in (tmp_path / "ours" / name).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref" / name).rglob("*") if p.is_file())
        for f in files:
            mine, theirs = (tmp_path / "ours" / f).read_bytes(), (tmp_path / "ref" / f).read_bytes()
            assert (json.loads(mine) == json.loads(theirs)) if f.name == "zarr.json" else mine == theirs, f


def test_encoded_shards_are_byte_identical_to_zarrs(tmp_path):
    """The direct path encodes fixed point, blosc and PNG frames exactly as zarr's codecs do."""
    from curation.store.writer import _write_array, _write_array_fast, write_group_json

    rng = np.random.default_rng(1)
    tracks = rng.uniform(-5, 70, (21, 4, 6, 2)).astype(np.float32)
    tracks[:, :, 4:] = np.nan
    arrays = {"tracks_px": tracks, "visible": rng.random((21, 4, 6)) > 0.3,
              "depth_m/cam": rng.uniform(0.2, 3, (5, 8, 8)).astype(np.float32),
              "frames/cam": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
              "actions": rng.normal(size=(5, 7)).astype(np.float32)}
    (tmp_path / "ours").mkdir()
    write_group_json(tmp_path / "ours", {})
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w", zarr_format=3)
    for name, a in arrays.items():
        _write_array_fast(tmp_path / "ours", name, a, 16, "zstd")
        _write_array(ref, name, a, 16, "zstd")
        for f in sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref" / name).rglob("*") if p.is_file()):
            mine, theirs = (tmp_path / "ours" / f).read_bytes(), (tmp_path / "ref" / f).read_bytes()
            assert (json.loads(mine) == json.loads(theirs)) if f.name == "zarr.json" else mine == theirs, f


def test_local_run_on_bridge_is_complete_valid_and_readable(bridge_dir):
    from curation.store.validate import validate_dataset

    out, s = cached_run("bridge-local", bridge_dir)
    c = s["counts"]
    assert s["complete"] and c["planned"] == 25 and c["unaccounted"] == 0
    assert c["written"] + c["filtered"] + c["duplicates"] + c["quarantined"] == 25
    assert c["written"] >= 20 and c["quarantined"] == 0
    assert validate_dataset(out) == []
    rows = manifest_rows(out)
    assert [r["episode_index"] for r in rows] == sorted(r["episode_index"] for r in rows)
    # Shards are fixed groups of 3 episodes by index (not by completion order).
    for r in rows:
        assert r["shard"] == f"shard-{r['episode_index'] // 3:05d}"
        assert r["cameras"] == ["image_0", "image_1", "image_2"]  # image_3 is blank in Bridge: not stored
        assert (r["height"], r["width"], r["action_dim"]) == (64, 64, 7)
        assert r["frame_count"] == 10 and r["anchor_count"] == 3  # 10 steps, stride 4 -> anchors 0, 4, 8
    info = json.loads((out / "dataset.json").read_text())
    assert info["config"]["labels"]["grid"] == 6 and info["counts"]["written"] == len(rows)
    assert info["complete"] is True
    # Shards are Zarr v3 groups with the sharding codec; commit records carry the rows.
    g = zarr.open_group(str(out / "shards" / rows[0]["shard"]), mode="r")
    assert g["frames/image_0"].metadata.to_dict()["codecs"][0]["name"] == "sharding_indexed"
    assert g.attrs["commit"]["episodes"][0]["episode_id"] == rows[0]["episode_id"]
    assert {"read", "label", "write", "finalize"} <= set(s["stage_seconds"])
    assert s["stage_seconds"]["label"] > 0 and s["frames_per_s"] > 0
    # every committed unit's span on its worker is recorded; one local worker was busy for
    # (nearly) the whole units phase, and each span covers at least its timed stages
    sp = s["unit_spans"]
    assert sp["units"] == c["units"] == 9 and sp["workers_seen"] == 1
    assert 0.5 < sp["busy_fraction"] <= 1.0 + 1e-6, sp
    for g, rec in committed_groups(out).items():
        span = rec["committed_at"] - rec["started_at"]
        assert span >= sum(rec["timings"].values()) - 1e-3, (g, span, rec["timings"])


def test_rerun_is_a_noop_and_other_config_is_refused(bridge_dir, tmp_path):
    from pipelines.job import JobError, run_job

    cfg = job_config(bridge_dir, shard_episodes=4, **{"source.stop": 6})
    out = tmp_path / "ds"
    first = run_job(cfg, out, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*") if p.is_file()}
    again = run_job(cfg, out, progress=False)
    assert first["counts"]["written"] == again["counts"]["written"] == 6
    assert again["counts"]["units_resumed"] == 2 and again["episodes_processed_this_run"] == 0
    assert before == {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*") if p.is_file()}
    with pytest.raises(JobError, match="different config"):
        run_job(job_config(bridge_dir, shard_episodes=4, **{"source.stop": 6}, extra=["labels.stride=2"]), out, progress=False)
    redo = run_job(job_config(bridge_dir, shard_episodes=4, **{"source.stop": 6}, extra=["labels.stride=2"]), out,
                   progress=False, overwrite=True)
    assert redo["counts"]["anchors_written"] == 6 * 5


def test_cli_run_json(bridge_dir, tmp_path, capsys):
    from cli.main import main

    rc = main(["run", str(bridge_dir), "--out", str(tmp_path / "ds"), "--stop", "3", "--no-progress", "--json",
               "--set", "labels.grid=4", "--set", "labels.horizon=4", "--set", "curation.card=false"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    c = s["counts"]
    assert c["planned"] == 3 and c["written"] >= 1 and c["unaccounted"] == 0
    assert c["written"] + c["filtered"] + c["duplicates"] + c["quarantined"] == 3
    assert c["frames_written"] == 10 * c["written"] and s["extras"]["card"] == "off"
    assert main(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def _payload(i: int, size: int):
    from curation.store.writer import EpisodePayload

    F, N, K, T = 6, 2, 3, 4
    inr = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    tracks = np.full((N, K, T, 2), np.nan, np.float32)
    tracks[np.broadcast_to(inr[:, None, :], (N, K, T))] = float(i)
    arrays = {"frames/cam": np.full((F, size, size, 3), i, np.uint8), "actions": np.full((F, 2), i, np.float32),
              "anchor_step": np.array([0, 4], np.int32), "tracks_px": tracks,
              "visible": np.zeros((N, K, T), bool), "in_range": inr}
    return EpisodePayload(arrays, {"episode_id": f"ep{i}", "episode_index": i})


def test_unit_with_two_image_sizes_commits_as_primary_plus_sub_shard(tmp_path):
    from curation.store.validate import check_episode_arrays
    from curation.store.writer import clean_stale, commit_unit, committed_groups, iter_manifest_rows, read_commit

    payloads = [_payload(0, 8), _payload(1, 16), _payload(2, 8)]
    assert all(check_episode_arrays(p.arrays) == [] for p in payloads)
    rec = commit_unit(tmp_path, 3, payloads, {"quarantine": [], "filtered": [], "timings": {}})
    sub = f"shard-00003-01-{rec['attempt']}"  # a sub-shard carries its attempt's id
    assert rec["shard"] == "shard-00003" and rec["sub_shards"] == [sub] and rec["frames"] == 18
    rows = iter_manifest_rows(committed_groups(tmp_path).values())
    assert [(r["episode_id"], r["shard"], r["frame_start"]) for r in rows] == [
        ("ep0", "shard-00003", 0), ("ep2", "shard-00003", 6), ("ep1", sub, 0)]
    g = zarr.open_group(str(tmp_path / "shards" / sub), mode="r")
    assert g["frames/cam"].shape == (6, 16, 16, 3) and (g["frames/cam"][...] == 1).all()
    # Committing the same unit again (a retried task) returns the committed record.
    assert commit_unit(tmp_path, 3, payloads, {"quarantine": [], "filtered": [], "timings": {}})["attempt"] == rec["attempt"]
    # A sub-shard whose primary never committed is a leftover.
    import shutil

    shutil.rmtree(tmp_path / "shards" / "shard-00003")
    assert read_commit(tmp_path / "shards" / sub) is not None
    assert clean_stale(tmp_path) == [sub] and committed_groups(tmp_path) == {}


def test_two_attempts_of_a_unit_never_share_a_sub_shard(tmp_path, monkeypatch):
    """Attempt A renames its sub-shard and dies before its primary; attempt B commits the unit.
    B's primary lists only B's sub-shard, A's is stale, and the reader sees B's data only."""
    import os

    from curation.store import writer
    from curation.store.writer import clean_stale, commit_unit, committed_groups

    payloads = [_payload(0, 8), _payload(1, 16)]
    real_rename = os.rename

    def die_at_primary(src, dst):
        if os.path.basename(dst) == "shard-00004":
            raise KeyboardInterrupt("attempt A killed before its commit")
        real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", die_at_primary)
    with pytest.raises(KeyboardInterrupt):
        commit_unit(tmp_path, 4, payloads, {"quarantine": [], "filtered": [], "timings": {}})
    monkeypatch.setattr(writer.os, "rename", real_rename)
    a_subs = [d.name for d in (tmp_path / "shards").iterdir() if d.name.startswith("shard-00004-01-")]
    assert len(a_subs) == 1 and committed_groups(tmp_path) == {}  # A's sub-shard renamed, unit not committed
    rec = commit_unit(tmp_path, 4, [_payload(0, 8), _payload(7, 16)], {"quarantine": [], "filtered": [], "timings": {}})
    assert rec["sub_shards"] != a_subs and len(rec["sub_shards"]) == 1
    assert clean_stale(tmp_path) == a_subs
    assert sorted(d.name for d in (tmp_path / "shards").iterdir()) == ["shard-00004", rec["sub_shards"][0]]
    g = zarr.open_group(str(tmp_path / "shards" / rec["sub_shards"][0]), mode="r")
    assert (g["frames/cam"][...] == 7).all()  # B's episode, not A's


def test_print_config_round_trips_to_the_same_dataset_hash(tmp_path, capsys):
    from cli.main import main

    assert main(["run", "/data/x", "--out", str(tmp_path / "o"), "--print-config", "--set", "labels.stride=8"]) == 0
    (tmp_path / "job.yaml").write_text(capsys.readouterr().out)
    loaded = JobConfig.load(tmp_path / "job.yaml")
    assert loaded.labels["stride"] == 8 and loaded.labels["tracker"] == "lk" and "min_steps" in loaded.curation.filters
    same = JobConfig.load(None, ["labels.stride=8", "source.path=/data/x"]).effective()
    assert loaded.content_hash() == same.content_hash()
    assert not (tmp_path / "o").exists()
