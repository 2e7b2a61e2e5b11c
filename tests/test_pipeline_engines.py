"""Local, Ray and Beam give the same dataset (manifest rows, checksums, array
contents, quarantine) on a simulated Meta-World dataset and on real Bridge episodes."""

from __future__ import annotations

import pytest

from test_pipeline_helpers import assert_same_dataset, cached_run, job_config, manifest_rows


@pytest.fixture(scope="module")
def sim_local(sim_dataset_dir):
    return cached_run("sim-local", sim_dataset_dir, shard_episodes=2)


def test_sim_local_run_has_ground_truth_depth(sim_local):
    out, s = sim_local
    assert s["complete"] and s["counts"]["unaccounted"] == 0 and s["counts"]["written"] >= 3
    rows = manifest_rows(out)
    assert all(r["depth_kind"] == "metric" for r in rows)
    assert all(r["intrinsics_estimated"] is False for r in rows)
    from curation.store.reader import open_dataset

    arrays = open_dataset(str(out)).read_shard(rows[0]["shard"])
    assert any(n.startswith("depth_m/") for n in arrays) and "points_cam_m" in arrays


def test_ray_equals_local_on_sim(sim_dataset_dir, sim_local):
    out, s = cached_run("sim-ray", sim_dataset_dir, runner="ray", workers=2, shard_episodes=2)
    assert s["runner"] == "ray" and s["engine"]["cluster_resources"]["CPU"] == 2
    assert_same_dataset(sim_local[0], out)


def test_beam_equals_local_on_sim(sim_dataset_dir, sim_local):
    out, s = cached_run("sim-beam", sim_dataset_dir, runner="beam", workers=2, shard_episodes=2)
    assert s["runner"] == "beam" and s["complete"]
    assert_same_dataset(sim_local[0], out)


def test_ray_and_beam_equal_local_on_bridge(bridge_dir):
    sub = {"source.stop": 12}  # 4 units of 3: enough to spread over 2 workers, cheap on 2 shared cores
    local, _ = cached_run("bridge-local-12", bridge_dir, **sub)
    # Labeling in an actor pool (how model backends run) gives the same dataset too.
    ray_out, s = cached_run("bridge-ray-12", bridge_dir, runner="ray", workers=2, **sub, **{"engine.label_actors": 1})
    assert s["engine"]["label_actors"] == 1
    assert_same_dataset(local, ray_out)
    beam_out, _ = cached_run("bridge-beam-12", bridge_dir, runner="beam", workers=2, **sub)
    assert_same_dataset(local, beam_out)


def test_ray_redoes_the_work_of_a_lost_worker(tmp_path):
    from pipelines.engines.ray import RayEngine

    def crash_once(item):  # a closure: pickled by value, as job stages are importable anyway
        """Kill the worker process the first time an item is seen (a lost worker)."""
        import os
        from pathlib import Path

        marker = Path(item[0]) / f"seen-{item[1]}"
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return item[1] * 10

    cfg = job_config(tmp_path, runner="ray", workers=2)
    with RayEngine(cfg) as engine:
        results = [r for _, r in engine.map_unordered(crash_once, [(str(tmp_path), i) for i in range(3)])]
    assert sorted(results) == [0, 10, 20], results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen-0", "seen-1", "seen-2"]
