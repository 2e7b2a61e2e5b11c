"""A dataset made by `curate run` published to and read from a real S3-protocol
server on loopback (moto's standalone server, started and stopped here), the way
a user runs it: the `curate` program in its own process, the endpoint and the
credentials only in the standard AWS environment variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never on the command line or in any
output. The trainer-facing reader streams the published version from s3:// and
gets exactly the triplets of the local dataset. Two `curate publish` processes
race on one version: exactly one wins, the other fails with a clear error, and
the version is complete and verifiable.

(tests/test_publish_s3.py covers the publish module's API over S3 with explicit
storage options; this file covers the whole path from a curated dataset.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from cli.bench.cluster import curate_cmd
from s3_helpers import loopback_s3
from test_pipeline_helpers import cached_run

BUCKET = "curated"
SECRET = "s3cr3t-never-printed-5b1f"
KEY_ID = "AKIATESTCURATE0001"


@pytest.fixture(scope="module")
def s3_env():
    """The moto server on 127.0.0.1 (free port) and the environment a user would
    export: endpoint and credentials as AWS_* variables."""
    with loopback_s3(BUCKET, key_id=KEY_ID, secret=SECRET):
        yield dict(os.environ)


@pytest.fixture(scope="module")
def curated(bridge_dir):
    out, summary = cached_run("bridge-local", bridge_dir)  # the pipeline tests' local run (shared)
    assert summary["complete"] and summary["counts"]["written"] > 0
    return out


def curate(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(curate_cmd() + args, capture_output=True, text=True, env=env, timeout=timeout)
    assert SECRET not in res.stdout + res.stderr and KEY_ID not in res.stdout + res.stderr, "credentials leaked"
    return res


def _json(res: subprocess.CompletedProcess) -> dict:
    return json.loads(res.stdout[res.stdout.index("{"):])


def test_publish_verify_and_stream_from_s3_equal_local(s3_env, curated):
    url = f"s3://{BUCKET}/datasets"
    res = curate(["publish", str(curated), "--name", "bridge", "--version", "0.1.0", "--to", url, "--json"], s3_env)
    assert res.returncode == 0, res.stderr[-2000:]
    pub = _json(res)
    assert pub["ok"] and pub["created_now"] and pub["ref"] == f"{url}/bridge@0.1.0"
    assert pub["root"].startswith(f"s3://{BUCKET}/datasets/bridge/0.1.0/files-")

    res = curate(["verify", f"{url}/bridge@0.1.0", "--json"], s3_env)
    assert res.returncode == 0, res.stderr[-2000:]
    ver = _json(res)
    assert ver["ok"] and ver["files_checked"] == pub["num_files"] and ver["mismatched"] == []

    res = curate(["versions", f"{url}/bridge", "--json"], s3_env)
    assert res.returncode == 0 and [v["version"] for v in _json(res)["versions"]] == ["0.1.0"]

    # The trainer-facing reader: no storage options, the endpoint comes from the environment.
    from curation import open_dataset

    remote = open_dataset(f"{url}/bridge@0.1.0")
    local = open_dataset(str(curated))
    assert remote.version == "0.1.0" and remote.episode_ids == local.episode_ids
    n = 0
    for a, b in zip(local.iter_triplets(), remote.iter_triplets(), strict=True):
        assert (a.episode_id, a.anchor, a.language) == (b.episode_id, b.anchor, b.language)
        for name in a.images:
            np.testing.assert_array_equal(a.images[name], b.images[name])
        assert sorted(a.motion) == sorted(b.motion) and len(a.motion) > 0
        for name in a.motion:
            np.testing.assert_array_equal(a.motion[name], b.motion[name], err_msg=name)
        np.testing.assert_array_equal(a.action_chunk, b.action_chunk)
        np.testing.assert_array_equal(a.action_chunk_valid, b.action_chunk_valid)
        n += 1
    assert n == local.num_triplets() == remote.num_triplets() > 0


def test_two_racing_publish_processes_exactly_one_wins(s3_env, curated, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(curated, other)
    with open(other / "README.md", "a") as f:  # same dataset, other card: other content
        f.write("\nRevised card.\n")
    url = f"s3://{BUCKET}/race"
    procs = [subprocess.Popen(curate_cmd() + ["publish", str(d), "--name", "bridge", "--version", "1.0.0", "--to", url,
                                              "--no-prepare", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3_env)
             for d in (curated, other)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert SECRET not in out + err
        results.append((p.returncode, out, err))
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    winner = next(_json(subprocess.CompletedProcess([], rc, out, err)) for rc, out, err in results if rc == 0)
    loser = next(_json(subprocess.CompletedProcess([], rc, out, err)) for rc, out, err in results if rc != 0)
    assert winner["created_now"] and not loser["ok"]
    assert "bridge@1.0.0" in loser["error"] and "different content" in loser["error"], loser["error"]

    res = curate(["verify", f"{url}/bridge@1.0.0", "--json"], s3_env)
    assert res.returncode == 0
    ver = _json(res)
    assert ver["ok"] and ver["files_checked"] == winner["num_files"]
    res = curate(["versions", f"{url}/bridge", "--json"], s3_env)
    listed = _json(res)
    assert [v["content_checksum"] for v in listed["versions"]] == [winner["content_checksum"]]
