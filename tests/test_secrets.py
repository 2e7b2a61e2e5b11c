"""A fake secret handed to a job through Beam's credential options, a secret-named Beam option and
Ray's runtime_env must appear nowhere in the dataset's files, the job state or the summary."""

from __future__ import annotations

import json
from pathlib import Path

from test_pipeline_helpers import job_config

SECRET = "FAKE-SECRET-a8f3c2e1"


def test_redaction_rules():
    from pipelines.config import REDACTED, redact_beam_options, redact_tree

    assert redact_beam_options([f"--s3_secret_access_key={SECRET}", "--runner=DirectRunner",
                                f"--my_api_token={SECRET}", ["s3_access_key_id", SECRET]]) == [
        f"--s3_secret_access_key={REDACTED}", "--runner=DirectRunner", f"--my_api_token={REDACTED}",
        ["s3_access_key_id", REDACTED]]
    tree = {"num_tokens": 8, "aws_secret_access_key": SECRET, "nested": {"password": SECRET, "user": "u"}}
    assert redact_tree(tree) == {"num_tokens": 8, "aws_secret_access_key": REDACTED,
                                 "nested": {"password": REDACTED, "user": "u"}}


def test_fake_secret_appears_nowhere_in_the_output_tree(bridge_dir, tmp_path):
    from pipelines.job import run_job

    cfg = job_config(bridge_dir, runner="beam", workers=1, **{"source.stop": 3})
    cfg.engine.beam_options = [f"--s3_secret_access_key={SECRET}", f"--s3_access_key_id={SECRET}"]
    cfg.engine.runtime_env = {"env_vars": {"AWS_SECRET_ACCESS_KEY": SECRET}}
    out = tmp_path / "ds"
    summary = run_job(cfg, out, progress=False)
    assert summary["counts"]["written"] == 3
    assert SECRET not in json.dumps(summary, default=str)
    hits = [p for p in Path(out).rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
    info = json.loads((out / "dataset.json").read_text())
    assert "<redacted>" in json.dumps(info["config"]["engine"])
