"""moto's S3 server on loopback for the tests that stream from or publish to S3."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest


@contextlib.contextmanager
def loopback_s3(bucket: str, key_id: str = "k", secret: str = "s") -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port) with the environment a user would export
    (AWS_ENDPOINT_URL and credentials; no profile or session token) and `bucket` created;
    yields the endpoint. fsspec caches s3fs instances by their arguments, not the environment,
    so the cache is cleared on the way in and out (an instance of another test's server, or of
    this stopped one, must not be reused)."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    s3fs.S3FileSystem.clear_instance_cache()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    mp = pytest.MonkeyPatch()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key_id,
                     "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        boto3.client("s3").create_bucket(Bucket=bucket)  # endpoint and keys from the environment
        yield endpoint
    finally:
        mp.undo()
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
