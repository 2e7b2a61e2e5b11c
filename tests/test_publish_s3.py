"""Publishing over the S3 protocol against a real S3 server on loopback (moto's
standalone server, started and stopped by this module): publish, list, verify,
diff, a flipped byte, a crash before the index, two racing publishers, the CLI.
Credentials come from the AWS environment variables only."""

from __future__ import annotations

import json
import threading

import pytest

from curation.registry import diff as D, gc, publish as P, refs, storage, verify as V, versions
from cli.main import main as curate
from test_curation_helpers import make_episode, make_labels, write_dataset

BUCKET = "curation-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(k, v)
    mp.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        mp.undo()
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # cached instances point at this stopped server


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3pub")
    pairs = []
    for i in range(4):
        ep = make_episode(i, T=10)
        pairs.append((ep, make_labels(ep, seed=i)))
    a = write_dataset(root / "a", pairs[:3])
    b = write_dataset(root / "b", pairs[1:])
    return a, b, [ep.episode_id for ep, _ in pairs]


def _opts(endpoint):
    # skip_instance_cache: a fresh client per call, as separate processes would have
    return {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}


def test_publish_verify_diff_over_s3(s3_endpoint, datasets):
    a, b, ids = datasets
    url = f"s3://{BUCKET}/datasets"
    opts = _opts(s3_endpoint)
    pv = P.publish(a, "bridge", "0.1.0", to_url=url, storage_options=opts, progress=False)
    assert pv.created_now and pv.root.startswith(f"s3://{BUCKET}/datasets/bridge/0.1.0/files-")
    again = P.publish(a, "bridge", "0.1.0", to_url=url, storage_options=opts, progress=False)
    assert not again.created_now
    with pytest.raises(refs.VersionConflict):
        P.publish(b, "bridge", "0.1.0", to_url=url, storage_options=opts, progress=False)
    P.publish(b, "bridge", "0.2.0", to_url=url, storage_options=opts, progress=False)
    assert [v.version for v in versions.list_versions(f"{url}/bridge", opts)] == ["0.1.0", "0.2.0"]
    r = V.verify(f"{url}/bridge@0.1.0", opts, progress=False)
    assert r.ok and r.files_checked == pv.num_files
    d = D.diff(f"{url}/bridge@0.1.0", f"{url}/bridge@latest", opts)
    assert (d["added"], d["removed"], d["changed"], d["unchanged"]) == ([ids[3]], [ids[0]], [], 2)
    # the published files read back byte for byte through the resolved root
    fs, root, version = versions.resolve(f"{url}/bridge@0.1.0", opts)
    assert fs.cat_file(f"{root}/manifest.parquet") == (a / "manifest.parquet").read_bytes()
    # a flipped byte in the object store is caught
    key = f"{root}/dataset.json"
    data = bytearray(fs.cat_file(key))
    data[5] ^= 0x20
    fs.pipe_file(key, bytes(data))
    r = V.verify(f"{url}/bridge@0.1.0", opts, progress=False)
    assert not r.ok and [m["path"] for m in r.mismatched] == ["dataset.json"]


def _killed(*args, **kwargs):
    raise KeyboardInterrupt("killed before the index write")


def test_crash_before_index_is_invisible_on_s3(s3_endpoint, datasets):
    a, _, _ = datasets
    url = f"s3://{BUCKET}/crash"
    opts = _opts(s3_endpoint)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(P, "create_exclusive", _killed)  # the process dies right before the index write
        P.publish(a, "ds", "1.0.0", to_url=url, storage_options=opts, progress=False)
    assert versions.list_versions(f"{url}/ds", opts) == []
    with pytest.raises(refs.PublishError, match="is not published: no index.json"):
        V.verify(f"{url}/ds@1.0.0", opts, progress=False)
    assert len(gc.unfinished_publishes(f"{url}/ds", opts)) == 1


def test_two_racing_s3_publishers_exactly_one_wins(s3_endpoint, datasets):
    a, b, _ = datasets
    url = f"s3://{BUCKET}/race"
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(label, path):
        opts = _opts(s3_endpoint)
        barrier.wait()
        try:
            outcomes[label] = P.publish(path, "ds", "1.0.0", to_url=url, storage_options=opts, progress=False)
        except refs.PublishError as exc:
            outcomes[label] = exc

    threads = [threading.Thread(target=run, args=(k, p)) for k, p in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [k for k, o in outcomes.items() if isinstance(o, refs.PublishedVersion) and o.created_now]
    lost = [k for k, o in outcomes.items() if isinstance(o, refs.VersionConflict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "published concurrently by another publisher with different content" in str(outcomes[lost[0]])
    opts = _opts(s3_endpoint)
    assert versions.open_version(f"{url}/ds@1.0.0", opts).content_checksum == outcomes[won[0]].content_checksum
    assert V.verify(f"{url}/ds@1.0.0", opts, progress=False).ok
    assert gc.unfinished_publishes(f"{url}/ds", opts) == []


def test_cli_over_s3_with_endpoint_option(s3_endpoint, datasets, capsys):
    a, _, _ = datasets
    url = f"s3://{BUCKET}/cli"
    assert curate(["publish", str(a), "--name", "ds", "--version", "0.1.0", "--to", url, "--endpoint-url", s3_endpoint,
                   "--no-prepare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["created_now"] and out["ref"] == f"{url}/ds@0.1.0"
    assert "testing" not in json.dumps(out)  # no credentials in the report
    assert curate(["verify", f"{url}/ds@0.1.0", "--endpoint-url", s3_endpoint, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    assert curate(["versions", f"{url}/ds", "--endpoint-url", s3_endpoint, "--json"]) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)["versions"]] == ["0.1.0"]
    # the endpoint from the standard AWS environment variable, no option at all
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        assert curate(["diff", f"{url}/ds@0.1.0", f"{url}/ds@latest", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["unchanged"] == 3


def test_exclusive_create_on_s3_never_overwrites(s3_endpoint):
    import fsspec

    fs = fsspec.filesystem("s3", **_opts(s3_endpoint))
    path = f"{BUCKET}/excl/index.json"
    storage.create_exclusive(fs, path, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(fs, path, b"second")
    assert fs.cat_file(path) == b"first"


def test_trainer_reader_streams_a_published_version_from_s3(s3_endpoint, datasets):
    """The published files are a complete dataset: the trainer-facing reader
    (curation.store.reader, resolving the ref through curation.registry.versions.resolve)
    iterates every triplet straight from s3://."""
    from curation import open_dataset

    a, _, _ = datasets
    url = f"s3://{BUCKET}/reader"
    opts = _opts(s3_endpoint)
    P.publish(a, "ds", "0.1.0", to_url=url, storage_options=opts, progress=False)
    ds = open_dataset(f"{url}/ds@latest", opts)
    import pyarrow.parquet as pq

    rows = pq.read_table(a / "manifest.parquet").to_pylist()
    assert len(ds) == len(rows) == 3
    triplets = list(ds.iter_triplets())
    assert len(triplets) == ds.num_triplets() == sum(r["anchor_count"] for r in rows)
    first = triplets[0]
    assert first.episode_id == rows[0]["episode_id"] and first.anchor == 0
    assert first.images["image"].shape == (32, 32, 3)


def test_stats_of_a_published_version_read_from_s3(s3_endpoint, datasets):
    from curation.describe.stats import compute_stats

    a, _, _ = datasets
    url = f"s3://{BUCKET}/stats"
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    pv = P.publish(a, "ds", "0.1.0", to_url=url, storage_options=opts, progress=False)
    remote = compute_stats(pv.root, write=False, storage_options=opts, progress=False)
    local = compute_stats(str(a), write=False, progress=False)
    assert remote["counts"] == local["counts"]
    assert remote["datasets"]["synth"]["actions"] == local["datasets"]["synth"]["actions"]


def test_retried_index_put_whose_first_response_was_lost_is_our_success(s3_endpoint, datasets):
    """The first index PUT reaches the server but its response is lost; the retry gets 412.
    The index found is our own (same publish id): success, and our files stay."""
    import s3fs

    a, _, _ = datasets
    url = f"s3://{BUCKET}/lost-response"
    opts = _opts(s3_endpoint)
    real = s3fs.S3FileSystem._pipe_file
    lost: list[str] = []

    async def put_then_lose_response(self, path, data, *args, **kwargs):
        out = await real(self, path, data, *args, **kwargs)
        if path.endswith("/index.json") and not lost:
            lost.append(path)
            raise OSError("connection reset before the response arrived")
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(s3fs.S3FileSystem, "_pipe_file", put_then_lose_response)
        pv = P.publish(a, "ds", "1.0.0", to_url=url, storage_options=opts, progress=False)
    assert lost and pv.created_now
    assert V.verify(f"{url}/ds@1.0.0", opts, progress=False).ok
    assert gc.unfinished_publishes(f"{url}/ds", opts) == []
