"""Local, Ray and Beam give the same dataset (manifest rows, checksums, array
contents, quarantine) on a simulated Meta-World dataset and on real Bridge episodes."""

from __future__ import annotations

import os

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
    from curation import open_dataset

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


def test_a_local_ray_keeps_its_workers_in_the_jobs_process_group(tmp_path):
    """A kill of the job's process group reaches every worker of the local cluster it started
    (by default the raylet gives each worker a group of its own, which outlives such a kill)."""
    from pipelines.engines.ray import RayEngine

    def where(_item):
        import os

        return os.getpid(), os.getpgrp()

    with RayEngine(job_config(tmp_path, runner="ray", workers=2)) as engine:
        workers = {r for _, r in engine.map_unordered(where, range(8))}
    assert workers and all(pid != os.getpid() for pid, _ in workers)  # they ran in Ray's workers
    assert {group for _, group in workers} == {os.getpgrp()}, workers


def test_label_stage_declares_a_model_from_the_backend_registries(tmp_path):
    """The engines read what a stage declares: the label stage holds a model exactly when a chosen
    backend's class says it loads one (or a latent checkpoint is set); no engine names a backend."""
    from labelers.backends import loads_model
    from pipelines.stages import CPU_STAGE, FingerprintUnit, ProcessUnit, Resources, label_resources, resources_of

    assert [loads_model("tracker", t) for t in ("lk", "flow", "cotracker")] == [False, False, True]
    assert [loads_model("depth", d) for d in ("dataset", "depth-anything")] == [False, True]
    assert [loads_model("flow", f) for f in ("dis", "farneback")] == [False, False]
    plain = label_resources(job_config(tmp_path))
    assert plain == Resources(cpus=0.0, gpus=0.0, model=False)
    assert label_resources(job_config(tmp_path, **{"labels.tracker": "cotracker"})).model
    assert label_resources(job_config(tmp_path, **{"labels.depth": "depth-anything", "engine.num_gpus": {"label": 0.5}})) == \
        Resources(cpus=0.0, gpus=0.5, model=True)
    assert label_resources(job_config(tmp_path, **{"labels.latent_checkpoint": str(tmp_path)})).model
    assert ProcessUnit.resources == FingerprintUnit.resources == CPU_STAGE == Resources(cpus=1.0, gpus=0.0, model=False)
    assert resources_of(lambda item: item) == CPU_STAGE  # a plain function is a one-core CPU stage


def test_effective_backend_parameters_fill_constructor_defaults():
    """Two configs that build the same backend compare equal (the card marks accuracy rows by them)."""
    from labelers.backends import effective_params

    assert effective_params("flow", "dis", {}) == effective_params("flow", "dis", {"preset": "fine"})
    assert effective_params("flow", "dis", {"preset": "medium"}) != effective_params("flow", "dis", {})
    lk = effective_params("tracker", "lk", {})  # mode chain: the refined tracker, with LK's own defaults below it
    assert (lk["mode"], lk["ref_gap"], lk["win_size"]) == ("chain", 4, 11)
    assert "ref_gap" not in effective_params("tracker", "lk", {"mode": "hybrid"})  # the plain LK tracker
