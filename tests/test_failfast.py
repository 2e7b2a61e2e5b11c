"""A bad job fails fast and leaves nothing behind; publish refuses an empty dataset and
warns about a mostly quarantined one; the card and `curate inspect` say per label who
has it and why the others do not. On the real Bridge episodes (no depth, no intrinsics)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from test_pipeline_helpers import FAST, cached_run, job_config, write_bad_dataset


def _curate(capsys, *argv) -> tuple[int, list[str], str]:
    """`curate ARGV` in this process: exit status, the stderr lines of its own errors and
    warnings (library log lines left out), stdout."""
    from cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if line.startswith(("curate run: error:", "error:", "warning:"))]
    return rc, said, out


BAD_VALUES = [
    ("labels.tracker=nonsense", "labels.tracker = 'nonsense': unknown tracker backend; choose one of cotracker, flow, learned, lk"),
    ("labels.depth=midas", "labels.depth = 'midas': unknown depth backend; choose one of dataset, depth-anything"),
    ("labels.flow=raft", "labels.flow = 'raft': unknown flow backend; choose one of dis, farneback"),
    ("labels.grid=abc", "labels.grid = 'abc': expected an integer"),
    ("labels.stride=0", "labels.stride = 0: out of range; expected a number >= 1"),
    ("labels.fov_deg=500", "labels.fov_deg = 500: out of range; expected a number in [1, 179]"),
    ("labels.outlier_removal=maybe", "labels.outlier_removal = 'maybe': expected true or false"),
    ("labels.tracker_params.win=3", "labels.tracker_params.win = 3: unknown parameter of 'lk'; choose from win_size, "
     "max_level, fb_threshold_px, mode, iterations, epsilon, min_eig_threshold, refine_radius_px, color"),
    ("labels.tracker_params.win_size=big", "labels.tracker_params.win_size = 'big': expected an integer"),
    ("labels.tracker_params.mode=zigzag", "labels.tracker_params = {'mode': 'zigzag'}: tracker backend 'lk' refuses "
     "them: LK mode must be 'chain', 'anchor' or 'hybrid', got 'zigzag'"),
    ("labels.flow_params.preset=turbo", "labels.flow_params = {'preset': 'turbo'}: flow backend 'dis' refuses them: "
     "unknown DIS preset 'turbo'; choose one of ['fast', 'fine', 'medium', 'ultrafast']"),
    ("labels.latent_checkpoint=/no/such.safetensors", "labels.latent_checkpoint = '/no/such.safetensors': no such file or directory"),
    ("curation.filters.static_quantile=2", "curation.filters.static_quantile = 2: out of range; expected a number in [0, 1]"),
    ("curation.filters.disabled=[static,shaky]", "curation.filters.disabled = 'shaky': unknown filter; choose from "
     "too_short, static, no_language, low_visibility, bad_actions, blank_camera"),
    ("curation.filters.min_len=3", "curation.filters.min_len = 3: unknown key; choose from min_steps, static_motion_px, "
     "static_quantile, static_pixel_delta, static_changed_fraction, require_language, drop_uninformative_language, min_track_visibility, "
     "max_abs_action, blank_std, blank_frame_fraction, disabled"),
    ("curation.dedup.max_hamming=-1", "curation.dedup.max_hamming = -1: out of range; expected a number >= 0"),
    ("writer.compression=lz4", "writer.compression = 'lz4': choose one of none, zstd"),
    ("engine.runner=spark", "engine.runner = 'spark': choose one of local, beam, ray"),
    ("engine.address=head-node", "engine.address = 'head-node': not a Ray address; expected HOST:PORT, ray://HOST:PORT, auto or local"),
    ("engine.address=10.0.0.1:99999", "engine.address = '10.0.0.1:99999': not a Ray address; expected HOST:PORT, "
     "ray://HOST:PORT, auto or local"),
    ("engine.num_gpus.label=-1", "engine.num_gpus.label = -1: out of range; expected a number >= 0"),
    ("engine.num_gpus.decode=1", "engine.num_gpus.decode = 1: unknown model stage; choose from label"),
    ("engine.beam_options=[--no_such_option=1]", "engine.beam_options = '--no_such_option': not a Beam pipeline option "
     "(python -m apache_beam.examples.wordcount --help lists them)"),
    ("engine.beam_options=[--direct_num_workers=two]", "engine.beam_options = '--direct_num_workers=two': Beam's "
     "PipelineOptions refuse them: argument --direct_num_workers: invalid int value: 'two'"),
    ("engine.beam_options=[--runner=SparkyRunner]", "engine.beam_options = '--runner=SparkyRunner': unknown Beam runner; "
     "choose one of DataflowRunner, BundleBasedDirectRunner, DirectRunner, SwitchingDirectRunner, InteractiveRunner, "
     "FlinkRunner, FnApiRunner, KafkaStreamsRunner, PortableRunner, PrismRunner, SparkRunner, TestDirectRunner, "
     "TestDataflowRunner"),
    ("labels.camera=image_9", "labels.camera = 'image_9': not a camera of bridge_dataset; choose one of image_0, "
     "image_1, image_2, image_3"),
    ("source.split=test", "source.split = 'test': no split 'test'; splits are ['train', 'val']"),
    ("source.start=30", "source.start = 30: past the end; split 'train' has 25 episodes"),
]


@pytest.mark.parametrize("setting,message", BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_a_bad_value_exits_2_with_one_line_and_writes_nothing(bridge_dir, tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    rc, said, _ = _curate(capsys, "run", bridge_dir, "--out", out, "--set", setting, "--no-progress")
    assert (rc, said) == (2, [f"curate run: error: {message}"])
    assert not out.exists()


def test_a_source_that_does_not_open_is_named(tmp_path, capsys):
    rc, said, _ = _curate(capsys, "run", tmp_path / "nowhere", "--out", tmp_path / "out", "--no-progress")
    assert rc == 2 and len(said) == 1
    assert said[0].startswith(f"curate run: error: source.path = '{tmp_path / 'nowhere'}': cannot open RLDS dataset directory")
    assert not (tmp_path / "out").exists()


def test_a_unit_that_cannot_build_its_labeler_stops_the_job_and_the_fixed_rerun_works(bridge_dir, tmp_path, capsys, caplog):
    """cotracker passes the up-front checks (its model is loaded only by the workers) but has
    no checkpoint: the first unit fails with a configuration error and the job stops there."""
    out = tmp_path / "out"
    args = ["run", bridge_dir, "--out", out, "--stop", 4, "--shard-episodes", 1, "--no-progress"]
    args += [a for s in FAST for a in ("--set", s)]
    rc, said, _ = _curate(capsys, *args, "--set", "labels.tracker=cotracker")
    assert rc == 2
    assert said == ["curate run: error: stopped after the first failed unit: configuration error: labels = {'depth': "
                    "'dataset', 'tracker': 'cotracker', 'flow': 'dis'}: the labeler cannot be built: ValueError: CoTracker "
                    "needs `repo` (a local clone or 'facebookresearch/co-tracker') and `checkpoint` (a local .pth); "
                    f"no dataset written to {out}"]
    assert sum("failed, shard not committed" in r.getMessage() for r in caplog.records) == 1  # of 4 units
    assert not out.exists()
    out.mkdir()  # a directory made by the user is kept, and emptied of the failed job's state
    assert _curate(capsys, *args, "--set", "labels.tracker=cotracker")[0] == 2
    assert sorted(p.name for p in out.rglob("*")) == [".job", "lock"]
    rc, said, text = _curate(capsys, *args, "--json")
    summary = json.loads(text)
    assert (rc, said, summary["complete"], summary["counts"]["planned"]) == (0, [], True, 4)
    assert summary["counts"]["written"] + summary["counts"]["filtered"] == 4


def test_a_run_that_wrote_no_episode_does_not_block_the_corrected_one(bridge_dir, tmp_path):
    """Bridge's image_3 is blank in every episode: labelling it quarantines them all."""
    from pipelines.job import JobError, run_job

    out = tmp_path / "out"
    s = run_job(job_config(bridge_dir, extra=["labels.camera=image_3"], **{"source.stop": 2}), out, progress=False)
    assert (s["counts"]["written"], s["counts"]["quarantined"]) == (0, 2)
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert {r["reason"].split(": ", 1)[-1] for r in q} == {"camera 'image_3' is blank in this episode"}
    s = run_job(job_config(bridge_dir, **{"source.stop": 2}), out, progress=False)
    assert (s["complete"], s["counts"]["written"] + s["counts"]["filtered"], s["counts"]["quarantined"]) == (True, 2, 0)
    with pytest.raises(JobError, match="was started with a different config"):  # now there is something to keep
        run_job(job_config(bridge_dir, extra=["labels.stride=2"], **{"source.stop": 2}), out, progress=False)


def test_every_unit_failing_leaves_no_dataset(bridge_dir, tmp_path, monkeypatch):
    from pipelines.job import JobFailed, run_job
    from pipelines.stages import ProcessUnit

    def disk_full(self, task):
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(ProcessUnit, "__call__", disk_full)
    out = tmp_path / "out"
    with pytest.raises(JobFailed) as err:
        run_job(job_config(bridge_dir, shard_episodes=2, **{"source.stop": 4}), out, progress=False)
    assert str(err.value) == f"all 2 units failed, no dataset written to {out} (2 of them: OSError: No space left on device (simulated))"
    assert not out.exists()


def test_config_errors_travel_through_the_dead_letter_of_every_engine(tmp_path):
    from pipelines.config import ConfigError
    from pipelines.engines.beam import BeamEngine
    from pipelines.engines.local import LocalEngine

    def stage(x):
        if x == 2:
            raise ConfigError("labels.depth_params.model", "/models/missing", "cannot load")
        if x == 3:
            raise ValueError("one bad unit")
        return x

    cfg = job_config(tmp_path, runner="beam", workers=1)
    for engine in (LocalEngine(cfg), BeamEngine(cfg, tmp_path / "job")):
        with engine:
            got = dict(engine.map_unordered(stage, [1, 2, 3]))
        assert got[1] == 1
        assert got[2].config_error == "labels.depth_params.model = '/models/missing': cannot load"
        assert got[3].config_error == "" and "one bad unit" in got[3].error


# ---------------------------------------------------------------- publish


def test_publish_refuses_an_empty_dataset_unless_asked(bridge_dir, tmp_path, capsys):
    from pipelines.job import run_job

    out = tmp_path / "empty"
    s = run_job(job_config(bridge_dir, extra=["curation.filters.min_steps=100"], **{"source.stop": 3}), out, progress=False)
    assert (s["counts"]["written"], s["counts"]["filtered"]) == (0, 3)
    reg = tmp_path / "registry"
    rc, said, _ = _curate(capsys, "publish", out, "--name", "bridge", "--version", "1.0.0", "--to", reg)
    assert (rc, said) == (1, [f"error: {out}: refusing to publish a dataset with no episodes (0 quarantined; see "
                              f"{out / 'quarantine.parquet'}); pass --allow-empty to publish it on purpose"])
    assert not (reg / "bridge" / "1.0.0").exists()
    rc, said, text = _curate(capsys, "publish", out, "--name", "bridge", "--version", "1.0.0", "--to", reg,
                             "--allow-empty", "--json")
    assert (rc, said, json.loads(text)["episodes"]) == (0, [], 0)


def test_publish_warns_when_many_episodes_were_quarantined(tmp_path, capsys):
    from pipelines.job import run_job

    src = write_bad_dataset(tmp_path / "src", n=4, T=10, nan_episode=1)
    out = tmp_path / "ds"
    s = run_job(job_config(src, shard_episodes=4), out, progress=False)
    assert (s["counts"]["written"], s["counts"]["quarantined"]) == (3, 1)
    reg = tmp_path / "registry"
    rc, said, text = _curate(capsys, "publish", out, "--name", "hydra", "--version", "0.1.0", "--to", reg, "--json")
    warning = f"{out}: 1 of 4 episodes (25%) were quarantined, more than 10% (see {out / 'quarantine.parquet'})"
    assert (rc, said, json.loads(text)["warnings"]) == (0, [f"warning: {warning}"], [warning])
    rc, said, _ = _curate(capsys, "publish", out, "--name", "hydra", "--version", "0.1.0", "--to", reg,
                          "--max-quarantined-share", "0.3")
    assert (rc, said) == (0, [])


# ---------------------------------------------------------------- what a dataset lacks


def test_bridge_card_and_inspect_say_3d_scene_flow_is_missing(bridge_dir, capsys):
    out, s = cached_run("bridge-local", bridge_dir)
    n, written = s["counts"]["planned"], s["counts"]["written"]
    dropped = n - written
    assert n == 25 and written > 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(json.loads(r["backends"]) == {"tracks": "lk", "flow": "dis"} for r in rows)  # no depth: no depth backend
    card = (out / "README.md").read_text()
    labels = card.split("## Labels", 1)[1].split("### Measured accuracy", 1)[0]
    assert "| depth | dataset |" not in labels
    without = f", {dropped} filtered: static" if dropped else ""
    assert f"| 3D scene flow | 0 of 25 | {written} no depth in the source{without} | no intrinsics in the source for " \
           f"{written} of {written} written: a 55 degree field of view is assumed |" in labels
    assert f"| 2D point tracks | {written} of 25 | {without[2:] or '-'} |" in labels
    assert ("**Missing from every episode: depth along tracks (no depth in the source); 3D scene flow (no depth in the "
            "source); latent action tokens (no latent checkpoint configured).**") in labels

    rc, said, text = _curate(capsys, "inspect", out, "--json")
    cov = {c["label"]: c for c in json.loads(text)["coverage"]["labels"]}
    assert (rc, said) == (0, [])
    assert cov["3D scene flow"]["episodes"] == 0
    assert cov["3D scene flow"]["missing"] == {"no depth in the source": written, **({"filtered: static": dropped} if dropped else {})}
    assert cov["motion images"]["episodes"] == written and cov["depth along tracks"]["cause"] == "no depth in the source"
    rc, _, text = _curate(capsys, "inspect", out)
    assert "Missing from every episode: depth along tracks (no depth in the source); 3D scene flow" in text


def test_simulated_dataset_with_depth_has_3d_scene_flow(sim_dataset_dir):
    from curation.describe.coverage import label_coverage

    out, s = cached_run("sim-local", sim_dataset_dir, shard_episodes=2)
    cov = {c["label"]: c for c in label_coverage(out)["labels"]}
    written = s["counts"]["written"]
    assert written > 0
    for label in ("2D point tracks", "depth along tracks", "3D scene flow", "motion images"):
        assert cov[label]["episodes"] == written and cov[label]["cause"] == ""
    assert cov["3D scene flow"]["note"] == ""  # the simulator writes its intrinsics
    assert cov["latent action tokens"]["missing"].get("no latent checkpoint configured") == written


def test_ray_labeler_actors_that_cannot_start_stop_the_job_before_any_unit(bridge_dir, tmp_path):
    """Model backends label in a Ray actor pool: the actor's failed build is the job's one error."""
    from pipelines.job import JobError, run_job

    out = tmp_path / "out"
    cfg = job_config(bridge_dir, runner="ray", workers=1, extra=["labels.tracker=cotracker"], **{"source.stop": 2})
    with pytest.raises(JobError) as err:
        run_job(cfg, out, progress=False)
    assert str(err.value) == ("stopped before any unit: configuration error: labels = {'depth': 'dataset', 'tracker': "
                              "'cotracker', 'flow': 'dis'}: the labeler cannot be built: ValueError: CoTracker needs "
                              "`repo` (a local clone or 'facebookresearch/co-tracker') and `checkpoint` (a local .pth); "
                              f"no dataset written to {out}")
    assert not out.exists()
