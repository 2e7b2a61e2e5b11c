"""Beam beyond the one machine.

- Corrupt episodes under the multi-process DirectRunner (`direct_running_mode=
  multi_processing`, `direct_num_workers=2`) go to the quarantine, not a failed
  pipeline, and the dataset (quarantine included) equals the local run.
- Production runners: the options a Dataflow, Flink or Spark job needs pass through
  `curate run --beam-option=...` and a config file into the PipelineOptions the
  Beam engine builds, and Beam's own validator accepts the Dataflow set. Nothing is
  run against a service (none is reachable here).

(tests/test_pipeline_engines.py has the plain Beam multi-process == local test and
tests/test_pipeline_faults.py the engine-level dead-letter test.)"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from test_pipeline_helpers import assert_same_dataset, edit_record, job_config, write_bad_dataset

REPO = Path(__file__).resolve().parents[1]

DATAFLOW = [
    "--runner=DataflowRunner", "--project=robot-data-prod", "--region=europe-west4",
    "--temp_location=gs://robot-curation/tmp", "--staging_location=gs://robot-curation/staging",
    "--setup_file=./pyproject.toml", "--num_workers=4", "--max_num_workers=64",
    "--machine_type=n2-standard-8", "--experiments=use_runner_v2",
    "--sdk_container_image=europe-docker.pkg.dev/robot-data-prod/curate/beam:0.1.0",
]
FLINK = ["--runner=FlinkRunner", "--flink_master=flink-jobmanager:8081", "--parallelism=16",
         "--environment_type=DOCKER", "--environment_config=registry.local/curate/beam:0.1.0"]
SPARK = ["--runner=SparkRunner", "--spark_master_url=spark://spark-master:7077",
         "--environment_type=PROCESS", '--environment_config={"command": "/opt/curate/boot"}']


def test_corrupt_episodes_are_quarantined_under_multiprocess_beam(tmp_path):
    from pipelines.engines.beam import pipeline_options
    from pipelines.job import run_job

    src = write_bad_dataset(tmp_path / "src", n=6, T=10, nan_episode=4, episodes_per_shard=3)

    def bad_jpeg(ex):
        ex.features.feature["steps/observation/image"].bytes_list.value[3] = b"\xff\xd8\xff\xe0 broken"

    edit_record(sorted(src.glob("*-train.tfrecord-*"))[0], 1, bad_jpeg)

    opts = pipeline_options([], workers=2).get_all_options()
    assert opts["direct_running_mode"] == "multi_processing" and opts["direct_num_workers"] == 2

    local = run_job(job_config(src, shard_episodes=2), tmp_path / "local", progress=False)
    beam = run_job(job_config(src, runner="beam", workers=2, shard_episodes=2), tmp_path / "beam", progress=False)
    for s in (local, beam):
        c = s["counts"]
        assert s["complete"] and (c["planned"], c["written"], c["quarantined"], c["unaccounted"]) == (6, 4, 2, 0)
        assert c["units_failed"] == 0
    assert beam["runner"] == "beam"
    q = {r["episode_index"]: r for r in pq.read_table(tmp_path / "beam" / "quarantine.parquet").to_pylist()}
    assert sorted(q) == [1, 4]
    assert "non-finite action" in q[4]["reason"] and q[1]["stage"] in ("read", "decode")
    assert_same_dataset(tmp_path / "local", tmp_path / "beam")  # manifest, arrays and quarantine


def _cli_config(tmp_path, beam_args: list[str]):
    """What `curate run` builds from its command line (cmd_run's own parsing path)."""
    from cli.main import build_parser
    from pipelines.config import JobConfig

    args = build_parser().parse_args(["run", "src/bridge/1.0.0", "--out", str(tmp_path / "ds"), "--runner", "beam"]
                                     + [f"--beam-option={a}" for a in beam_args])
    return JobConfig.load(args.config, args.overrides, **{
        "source.path": args.source, "engine.runner": args.runner, "engine.workers": args.workers,
        "engine.beam_options": args.beam_options})


def test_dataflow_options_pass_through_and_validate(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import (
        DirectOptions, GoogleCloudOptions, SetupOptions, StandardOptions, WorkerOptions)
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    from pipelines.engines.beam import BeamEngine, pipeline_options

    cfg = _cli_config(tmp_path, DATAFLOW)
    assert cfg.engine.beam_options == DATAFLOW
    opts = pipeline_options(cfg.engine.beam_options, cfg.engine.workers)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    gc = opts.view_as(GoogleCloudOptions)
    assert (gc.project, gc.region, gc.temp_location) == ("robot-data-prod", "europe-west4", "gs://robot-curation/tmp")
    assert opts.view_as(SetupOptions).setup_file == "./pyproject.toml"
    wo = opts.view_as(WorkerOptions)
    assert (wo.num_workers, wo.max_num_workers, wo.machine_type) == (4, 64, "n2-standard-8")
    assert wo.sdk_container_image.endswith("/curate/beam:0.1.0")
    # the DirectRunner defaults are not forced onto a production runner
    assert opts.view_as(DirectOptions).direct_running_mode != "multi_processing"
    # Beam's own validator, as DataflowRunner runs it before submitting, finds nothing wrong ...
    dataflow_runner = type("DataflowRunner", (), {})()
    assert PipelineOptionsValidator(opts, dataflow_runner).validate() == []
    # ... and it is a real check: a Dataflow job without a GCS temp location is refused
    bad = pipeline_options([a for a in DATAFLOW if not a.startswith(("--temp_location", "--staging_location"))], 1)
    assert PipelineOptionsValidator(bad, dataflow_runner).validate() != []
    # the engine reports the options it would run with, without running anything
    monkeypatch.chdir(REPO)
    assert (REPO / "pyproject.toml").is_file()  # what --setup_file=./pyproject.toml ships
    stats = dict(BeamEngine(cfg, tmp_path / "job").stats()["beam_options"])
    assert stats["runner"] == "DataflowRunner" and stats["project"] == "robot-data-prod"


@pytest.mark.parametrize("name,args", [("flink", FLINK), ("spark", SPARK)])
def test_flink_and_spark_options_pass_through(tmp_path, name, args):
    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions, PortableOptions, SparkRunnerOptions, StandardOptions)

    from pipelines.engines.beam import pipeline_options

    cfg = _cli_config(tmp_path, args)
    opts = pipeline_options(cfg.engine.beam_options, cfg.engine.workers)
    po = opts.view_as(PortableOptions)
    if name == "flink":
        assert opts.view_as(StandardOptions).runner == "FlinkRunner"
        fo = opts.view_as(FlinkRunnerOptions)
        assert (fo.flink_master, fo.parallelism) == ("flink-jobmanager:8081", 16)
        assert (po.environment_type, po.environment_config) == ("DOCKER", "registry.local/curate/beam:0.1.0")
    else:
        assert opts.view_as(StandardOptions).runner == "SparkRunner"
        assert opts.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"
        assert po.environment_type == "PROCESS" and '"/opt/curate/boot"' in po.environment_config


def test_beam_options_from_a_config_file(tmp_path):
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    from pipelines.config import JobConfig
    from pipelines.engines.beam import pipeline_options

    path = tmp_path / "job.yaml"
    path.write_text("engine:\n  runner: beam\n  beam_options:\n" + "".join(f"    - '{a}'\n" for a in FLINK))
    cfg = JobConfig.load(path, [], **{"source.path": "src"})
    assert cfg.engine.beam_options == FLINK
    assert pipeline_options(cfg.engine.beam_options, 1).view_as(FlinkRunnerOptions).parallelism == 16


@pytest.mark.parametrize("flags", [DATAFLOW, FLINK, SPARK], ids=["dataflow", "flink", "spark"])
def test_production_option_sets_pass_the_up_front_check(flags):
    from pipelines.preflight import check_beam_options

    check_beam_options(flags)  # valid options are never refused before the job


def test_beam_results_cross_the_job_directory_as_json_not_pickles(tmp_path, monkeypatch):
    """The driver reads worker results back from files under the job directory: they must be data
    (JSON), so a planted file there can never run code. Dead letters keep their traceback."""
    import json
    import math

    from pipelines.config import JobConfig
    from pipelines.engines import beam as beam_engine
    from pipelines.engines.local import Failure

    read = []
    real_load = beam_engine._load

    def spy(fs, path):
        read.append(path)
        json.loads(Path(path).read_text())  # every result file parses as JSON
        return real_load(fs, path)

    monkeypatch.setattr(beam_engine, "_load", spy)
    cfg = JobConfig.from_dict({"source": {"path": str(tmp_path)}, "engine": {"runner": "beam", "workers": 1}})
    with beam_engine.BeamEngine(cfg, tmp_path / "job") as engine:
        # A library function, so that the multi-process workers can import it; -1 raises.
        out = dict(engine.map_unordered(math.sqrt, [4.0, 9.0, -1.0, 16.0]))
    assert {k: v for k, v in out.items() if k != -1.0} == {4.0: 2.0, 9.0: 3.0, 16.0: 4.0}
    assert isinstance(out[-1.0], Failure) and "math domain error" in out[-1.0].error
    assert sorted(Path(p).suffix for p in read) == [".json"] * 4
    assert not (tmp_path / "job").exists() or not any((tmp_path / "job").rglob("*.pkl"))


def test_fingerprints_round_trip_through_their_records():
    import json

    from curation.selection.dedup import Fingerprint

    fp = Fingerprint("e000001", ("bridge", "1.0.0", "train", 7), "put the pot on the stove", "ab" * 32,
                     (2**63 + 5, 17, 0), 38, b"\x00\x3c\xff\x7b")
    assert Fingerprint.from_record(json.loads(json.dumps(fp.to_record()))) == fp
