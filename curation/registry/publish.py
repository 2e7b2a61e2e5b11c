"""Immutable, atomically published dataset versions on any fsspec URL.

A registry is a URL (a local directory by default, `s3://bucket/prefix`,
`gs://...`: the same code through fsspec). A published version looks like

    <URL>/<NAME>/<VERSION>/index.json              written LAST, by exclusive create
    <URL>/<NAME>/<VERSION>/files-<PUBLISH_ID>/...  the dataset's files, byte for byte

`index.json` lists every file with its sha256 and size, the dataset's content
checksum (sha256 over the sorted "path sha256 size" lines), the creation time,
the data contract version and the prefix holding the files. A version exists
if and only if its index exists:

- Half-finished publishes are never visible: the files are uploaded under a
  fresh `files-<PUBLISH_ID>/` prefix first, their sizes are checked, and only
  then is the index created. A crash before that leaves an unreferenced
  prefix that no reader follows (`unfinished_publishes` lists them).
- Immutability and races: the index is created exclusively (local: hard link
  of a complete temp file, which fails if the name exists; S3: PUT with
  `If-None-Match: *`; other fsspec backends: open mode "xb"). Of two publishers
  racing on one version exactly one creates the index. The other, and any
  later publish of the same version, compares content checksums: identical
  content is a no-op success, different content is refused with an error.
  Nothing is ever overwritten.

Credentials are never arguments of this module's CLI: s3fs/gcsfs read the
standard environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, ...) or fsspec `storage_options` passed by the caller.

Refs: `URL/NAME@VERSION`, `NAME@VERSION` (default registry), VERSION `latest`
= the highest semantic version published.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from curation.registry.content import content_checksum, hash_dataset
from curation.registry.refs import (
    FILES_PREFIX,
    INDEX,
    INDEX_FORMAT,
    PublishError,
    PublishedVersion,
    VersionConflict,
    check_name,
    default_registry,
    parse_semver,
)
from curation.registry.storage import CHUNK_BYTES, IO_THREADS, create_exclusive, is_local, open_fs, remove_quietly, url_of
from curation.registry.versions import index_at, version_from_index
from schemas.durable import fsync_dir, fsync_tree
from curation.store.lock import DatasetBusy, dataset_lock
from schemas.dataset import CONTRACT_VERSION, DATASET_JSON, MANIFEST

log = logging.getLogger(__name__)


# Above this share of quarantined episodes (failed to read, check or label) a publish warns:
# one episode in ten failing points to a broken source or config, not a few bad recordings.
DEFAULT_MAX_QUARANTINED_SHARE = 0.1


def check_dataset(dataset_dir: str | os.PathLike) -> list[str]:
    """Problems that forbid publishing `dataset_dir` ([] = publishable).

    The contract check is curation.store.validate.validate_dataset."""
    root = Path(dataset_dir)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    problems = [f"{root / f}: missing" for f in (MANIFEST, DATASET_JSON) if not (root / f).is_file()]
    if problems:
        return problems
    tmp = sorted(p.name for p in root.glob("shards/.tmp-*"))
    if tmp:
        log.warning("%s: %d uncommitted shard temporaries are not published: %s", root, len(tmp), ", ".join(tmp[:3]))
    from curation.store.validate import validate_dataset

    return [str(v) for v in validate_dataset(str(root))]


def check_contents(dataset_dir: str | os.PathLike, allow_empty: bool = False,
                   max_quarantined_share: float = DEFAULT_MAX_QUARANTINED_SHARE) -> list[str]:
    """Refuse (PublishError) a dataset with no episodes unless `allow_empty`; return warnings
    (a quarantined share above `max_quarantined_share` of the episodes the job read)."""
    import pyarrow.parquet as pq

    from schemas.dataset import QUARANTINE

    root = Path(dataset_dir)
    if not (root / MANIFEST).is_file():
        return []  # not a finished dataset: the publish check says so
    episodes = _count_episodes(root) or 0
    quarantine = root / QUARANTINE
    quarantined = int(pq.read_metadata(quarantine).num_rows) if quarantine.is_file() else 0
    if episodes == 0 and not allow_empty:
        raise PublishError(f"{root}: refusing to publish a dataset with no episodes ({quarantined} quarantined; "
                           f"see {quarantine}); pass --allow-empty to publish it on purpose")
    info = json.loads((root / DATASET_JSON).read_text()) if (root / DATASET_JSON).is_file() else {}
    planned = (info.get("counts") or {}).get("planned") or (episodes + quarantined)
    share = quarantined / planned if planned else 0.0
    if share > max_quarantined_share:
        return [f"{root}: {quarantined} of {planned} episodes ({share:.0%}) were quarantined, more than "
                f"{max_quarantined_share:.0%} (see {quarantine})"]
    return []


def publish(
    dataset_dir: str | os.PathLike,
    name: str,
    version: str,
    to_url: Optional[str] = None,
    storage_options: Optional[dict] = None,
    validate: bool = True,
    progress: bool = True,
) -> PublishedVersion:
    """Publish `dataset_dir` as `<to_url>/<name>@<version>` (see module doc).

    Returns the version (created_now False when it already existed with the
    same content). Raises PublishError when the dataset is invalid or the
    storage fails, VersionConflict when the version exists with other content."""
    check_name(name)
    parse_semver(version)
    to_url = to_url or default_registry()
    fs, base = open_fs(to_url, storage_options)  # a bad URL fails before any hashing
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise PublishError(f"{dataset_dir}: no such dataset directory")
    try:
        with dataset_lock(dataset_dir, shared=True):  # no job may write while it is checked, hashed and copied
            if validate:
                _refuse_invalid(dataset_dir)
            return _publish_locked(dataset_dir, name, version, to_url, fs, base, progress)
    except DatasetBusy as exc:
        raise PublishError(f"refusing to publish: {exc}") from None


def _refuse_invalid(dataset_dir: Path) -> None:
    problems = check_dataset(dataset_dir)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise PublishError(f"{dataset_dir}: refusing to publish an invalid dataset ({len(problems)} problem(s)):\n  {shown}{more}")


def _publish_locked(dataset_dir: Path, name: str, version: str, to_url: str, fs, base: str,
                    progress: bool) -> PublishedVersion:
    files = hash_dataset(dataset_dir, progress=progress)
    checksum = content_checksum(files)
    version_dir = posixpath.join(base, name, version)
    ref = f"{to_url.rstrip('/')}/{name}@{version}"

    existing = index_at(fs, version_dir)
    if existing is not None:
        return _same_or_conflict(to_url, fs, version_dir, existing, checksum, ref)

    publish_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    staging = posixpath.join(version_dir, FILES_PREFIX + publish_id)
    _upload_all(dataset_dir, files, fs, staging, f"publish {name}@{version}", progress)
    index = _new_index(dataset_dir, name, version, publish_id, checksum, files)
    data = (json.dumps(index, indent=1) + "\n").encode()
    try:
        create_exclusive(fs, posixpath.join(version_dir, INDEX), data)
    except FileExistsError:
        winner = index_at(fs, version_dir)
        if winner is None:
            raise PublishError(f"{ref}: index creation reported a conflict but no index exists; retry") from None
        if winner.get("publish_id") == publish_id:
            # Our own index: a retried create whose first response was lost. The files it
            # points at are ours, so they stay.
            log.info("published %s (the index write was retried)", ref)
            return version_from_index(to_url, fs, version_dir, winner, created_now=True)
        remove_quietly(fs, staging)  # another publisher won; our copy is garbage
        return _same_or_conflict(to_url, fs, version_dir, winner, checksum, ref, raced=True)
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PublishError(f"{url_of(fs, posixpath.join(version_dir, INDEX))}: index write failed ({type(exc).__name__}: {exc})") from exc
    log.info("published %s (%d files, %d bytes)", ref, len(files), sum(f["size"] for f in files.values()))
    return version_from_index(to_url, fs, version_dir, index, created_now=True)


def _upload_all(dataset_dir: Path, files: dict[str, dict], fs, staging: str, label: str, progress: bool) -> None:
    """Copy every file to `staging`, hashing what is written; on any failure remove `staging`."""
    from schemas.progress import progress_bar

    local = is_local(fs)

    def upload(rel: str) -> int:
        # stream and hash what is actually written: the index describes the uploaded bytes,
        # and a dataset modified since it was hashed is caught instead of published
        target = posixpath.join(staging, rel)
        if local:
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
        h = hashlib.sha256()
        with open(dataset_dir / rel, "rb") as src, fs.open(target, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != files[rel]["sha256"]:
            raise PublishError(f"{dataset_dir / rel}: changed while being published; publish again when no job writes the dataset")
        return files[rel]["size"]

    total = sum(f["size"] for f in files.values())
    try:
        with progress_bar(total=total, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False) as bar:
            with ThreadPoolExecutor(max_workers=1 if local else IO_THREADS) as pool:
                for size in pool.map(upload, sorted(files)):
                    bar.update(size)
        _check_uploaded_sizes(fs, staging, files)
        if local:
            fsync_tree(staging)
            fsync_dir(posixpath.dirname(staging))  # the data is durable before the index that makes it a version
    except PublishError:
        remove_quietly(fs, staging)
        raise
    except Exception as exc:  # noqa: BLE001 - storage errors name the URL, never credentials
        remove_quietly(fs, staging)
        raise PublishError(f"{url_of(fs, staging)}: upload failed ({type(exc).__name__}: {exc})") from exc


def _new_index(dataset_dir: Path, name: str, version: str, publish_id: str, checksum: str,
               files: dict[str, dict]) -> dict:
    contract = CONTRACT_VERSION
    try:
        contract = json.loads((dataset_dir / DATASET_JSON).read_text()).get("contract_version", CONTRACT_VERSION)
    except (OSError, ValueError):
        pass
    return {
        "format": INDEX_FORMAT,
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "contract_version": contract,
        "publish_id": publish_id,
        "data_prefix": FILES_PREFIX + publish_id,
        "content_checksum": checksum,
        "episodes": _count_episodes(dataset_dir),
        "files": {rel: files[rel] for rel in sorted(files)},
    }


def _same_or_conflict(url, fs, version_dir, existing: dict, checksum: str, ref: str, raced: bool = False) -> PublishedVersion:
    if existing.get("content_checksum") == checksum:
        how = "was just published by another publisher" if raced else "is already published"
        log.info("%s %s with identical content: nothing to do", ref, how)
        return version_from_index(url, fs, version_dir, existing, created_now=False)
    how = "was published concurrently by another publisher" if raced else f"was already published on {existing.get('created')}"
    raise VersionConflict(
        f"{ref} {how} with different content (content checksum {existing.get('content_checksum', '?')[:12]} there, "
        f"{checksum[:12]} here); published versions are immutable: publish a new version number"
    )


def _check_uploaded_sizes(fs, staging: str, files: dict[str, dict]) -> None:
    fs.invalidate_cache(staging)
    found = {posixpath.relpath(p, staging): info.get("size") for p, info in fs.find(staging, detail=True).items()}
    bad = [rel for rel, f in files.items() if found.get(rel) != f["size"]]
    if bad:
        raise PublishError(f"{url_of(fs, staging)}: {len(bad)} uploaded file(s) missing or of the wrong size, e.g. {bad[0]}")


def _count_episodes(dataset_dir: Path) -> Optional[int]:
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(dataset_dir / MANIFEST).num_rows)
    except Exception:  # noqa: BLE001
        return None
