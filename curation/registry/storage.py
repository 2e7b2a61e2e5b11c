"""The storage under a registry, through fsspec: opening a URL, hashing a file, and the one
operation a version's immutability rests on, the exclusive create of its index:

- local: a hard link of a complete, fsynced temporary file, which fails if the name exists;
- S3: PUT with `If-None-Match: *`, read back (a store that ignores the header is caught);
- GCS: an upload with the precondition ifGenerationMatch=0;
- any other fsspec backend: open mode "xb", refused where the backend has none.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import uuid
from pathlib import Path
from typing import Optional

from curation.registry.refs import PublishError
from schemas.durable import fsync_dir

log = logging.getLogger(__name__)



# Files are read, hashed and copied in 8 MiB pieces: few, large requests to an object store and a
# bounded buffer per thread.
CHUNK_BYTES = 8 << 20
# Transfers in flight to a remote store (uploads, verify reads), which serves parallel requests;
# a local filesystem gets one (its disk is the limit).
IO_THREADS = 8
# S3 conditional PUTs tried before giving up: a 409 ConditionalRequestConflict (a racing PUT still
# in progress) answers "try again"; a few tries outlast a race between publishers.
S3_CREATE_ATTEMPTS = 5


def open_fs(url: str, storage_options: Optional[dict]):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:  # noqa: BLE001 - unknown protocol, missing backend
        raise PublishError(f"{url}: cannot open this URL ({type(exc).__name__}: {exc})") from exc


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def url_of(fs, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def sha256_remote(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb", block_size=CHUNK_BYTES) as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def create_exclusive(fs, path: str, data: bytes) -> None:
    """Create `path` with `data` unless it exists; FileExistsError if it does.
    Readers never see a partial file."""
    if is_local(fs):
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, fails with FileExistsError if `path` exists
        except FileExistsError:
            raise
        except OSError as exc:
            # Without hard links the only exclusive create writes after creating: a reader (or a
            # crash) would see an empty index. Refused rather than trusted.
            raise PublishError(f"{path}: this filesystem offers no hard links ({exc}), so the index cannot be "
                               "created atomically; publish to a POSIX filesystem or an object store") from exc
        finally:
            os.unlink(tmp)
        fsync_dir(posixpath.dirname(path))
        return
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("s3", "s3a"):
        for attempt in range(S3_CREATE_ATTEMPTS):
            try:
                fs.pipe_file(path, data, mode="create")  # PUT If-None-Match: *
                # read back: a store that ignores If-None-Match (old MinIO/Ceph) would let a
                # racing PUT overwrite ours; the loser then sees the other's bytes here
                fs.invalidate_cache(path)
                if fs.cat_file(path) != data:
                    raise FileExistsError(errno.EEXIST, f"{path} was written by another publisher")
                return
            except FileExistsError:
                raise
            except OSError as exc:
                # 412 PreconditionFailed (exists) or 409 ConditionalRequestConflict (racing PUT): look
                fs.invalidate_cache(path)
                if fs.exists(path):
                    raise FileExistsError(errno.EEXIST, f"{path} exists") from exc
                if attempt == S3_CREATE_ATTEMPTS - 1:
                    raise
        return
    if protocol in ("gs", "gcs"):
        _create_exclusive_gcs(fs, path, data)
        return
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except (ValueError, NotImplementedError) as exc:
        raise PublishError(
            f"{url_of(fs, path)}: this storage ({protocol}) offers no exclusive create, so an atomic, race-free publish "
            "cannot be guaranteed"
        ) from exc


def _create_exclusive_gcs(fs, path: str, data: bytes) -> None:
    """GCS: an upload with the precondition ifGenerationMatch=0 succeeds only if no object of
    that name exists (gcsfs passes `if_generation_match` through to the upload)."""
    try:
        fs.pipe_file(path, data, if_generation_match=0)
    except TypeError as exc:
        raise PublishError(f"{url_of(fs, path)}: this gcsfs cannot send a generation precondition ({exc}); "
                           "an atomic, race-free publish cannot be guaranteed") from exc
    except OSError as exc:
        fs.invalidate_cache(path)
        if fs.exists(path):  # 412 Precondition Failed: another publisher created it
            raise FileExistsError(errno.EEXIST, f"{path} exists") from exc
        raise


def remove_quietly(fs, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except Exception as exc:  # noqa: BLE001 - garbage left behind is invisible, only log
        log.warning("could not remove %s: %s", url_of(fs, path), exc)
