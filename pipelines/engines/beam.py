"""The Beam engine: the same stages as a Beam pipeline.

    Create(work units) -> Reshuffle -> ParDo(stage) --ok-----------> results
                                                   \\--dead_letter-> failures

DirectRunner in multi-process mode by default (`direct_running_mode=
multi_processing`, `direct_num_workers=workers`); any runner through the
standard pipeline options given in `engine.beam_options` (e.g. `--runner=
DataflowRunner --project=... --region=... --temp_location=gs://... --setup_file=
./setup.py` or `--requirements_file`). Results travel back to the driver as small
JSON files under the job directory (which must be on storage every worker can reach
for a distributed runner): data only, so nothing read back from that directory can
run code, as an unpickled file could. Shards are committed by the stage itself.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pipelines.config import redact_beam_options
from pipelines.engines.local import Failure, apply_or_fail

log = logging.getLogger(__name__)


def pipeline_options(beam_options: list[str], workers: int):
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_options or [])
    if not any(a.startswith("--runner") for a in args):
        args = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}"] + args
    return PipelineOptions(args)


class _ApplyStage:
    """DoFn body: run the stage on one element; a raised error goes to the dead-letter output."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, keyed):
        import apache_beam as beam

        key, item = keyed
        result = apply_or_fail(self.fn, item)
        if isinstance(result, Failure):
            yield beam.pvalue.TaggedOutput("dead_letter", (key, result))
        else:
            yield key, result


def _dump(keyed, out_dir: str, kind: str) -> None:
    """One result as `{kind}-{key}.json`; a dead letter is its Failure's record."""
    import fsspec

    key, value = keyed
    record = value.to_record() if isinstance(value, Failure) else value
    with fsspec.open(f"{out_dir}/{kind}-{key:06d}.json", "w") as f:
        json.dump(record, f)


def _load(fs, path: str) -> tuple[int, Any]:
    kind, key = Path(path).stem.split("-")  # ok-NNNNNN or dead-NNNNNN
    with fs.open(path, "r") as f:
        record = json.load(f)
    return int(key), Failure.from_record(record) if kind == "dead" else record


class BeamEngine:
    name = "beam"

    def __init__(self, cfg, job_dir: str | Path):
        self.cfg = cfg
        self.job_dir = str(job_dir)

    def parallelism(self) -> int:
        return max(1, int(self.cfg.engine.workers))

    def __enter__(self) -> "BeamEngine":
        # The DirectRunner relays every worker's INFO lines; keep the job's output readable.
        for name in ("apache_beam", "apache_beam.runners.portability.local_job_service"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        pass

    def labeler(self, cfg):
        return None  # each Beam worker process builds its labeler once (cached per process)

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        import apache_beam as beam
        import fsspec

        items = list(items)
        if not items:
            return
        out_dir = f"{self.job_dir}/beam-{uuid.uuid4().hex[:8]}"
        fs, root = fsspec.core.url_to_fs(out_dir)
        fs.makedirs(root, exist_ok=True)
        opts = pipeline_options(self.cfg.engine.beam_options, self.cfg.engine.workers)
        with beam.Pipeline(options=opts) as p:
            outs = (
                p
                | "units" >> beam.Create(list(enumerate(items)), reshuffle=False)
                | "fan out" >> beam.Reshuffle()
                | "stage" >> beam.FlatMap(_ApplyStage(fn)).with_outputs("dead_letter", main="ok")
            )
            _ = outs.ok | "keep results" >> beam.Map(_dump, out_dir, "ok")
            _ = outs.dead_letter | "dead letters" >> beam.Map(_dump, out_dir, "dead")
        for path in sorted(fs.ls(root, detail=False)):
            key, value = _load(fs, path)
            yield items[key], value
        fs.rm(root, recursive=True)

    def stats(self) -> dict:
        opts = pipeline_options(self.cfg.engine.beam_options, self.cfg.engine.workers)
        return {"beam_options": redact_beam_options([list(kv) for kv in opts.get_all_options(drop_default=True).items()])[:12]}
