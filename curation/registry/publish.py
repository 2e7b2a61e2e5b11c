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
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from curation.store.durable import fsync_dir, fsync_tree
from curation.store.lock import DatasetBusy, dataset_lock
from schemas.dataset import CONTRACT_VERSION, DATASET_JSON, MANIFEST

log = logging.getLogger(__name__)

INDEX = "index.json"
INDEX_FORMAT = "triplet-curator-version/1"
FILES_PREFIX = "files-"
DEFAULT_REGISTRY = "~/.local/share/triplet-curator/registry"  # overridden by $CURATE_REGISTRY
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEMVER_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")
# Above this share of quarantined episodes (failed to read, check or label) a publish warns:
# one episode in ten failing points to a broken source or config, not a few bad recordings.
DEFAULT_MAX_QUARANTINED_SHARE = 0.1
_CHUNK = 8 << 20
_THREADS = 8


def default_registry() -> str:
    """The registry used when a command names none: $CURATE_REGISTRY, else DEFAULT_REGISTRY."""
    return os.environ.get("CURATE_REGISTRY") or os.path.expanduser(DEFAULT_REGISTRY)


class PublishError(RuntimeError):
    """A publish, resolve, diff or verify that cannot proceed; the message says why."""


class VersionConflict(PublishError):
    """The version exists (or was just created by another publisher) with different content."""


@dataclass
class PublishedVersion:
    url: str  # registry URL
    name: str
    version: str
    root: str  # URL of the files (where manifest.parquet is)
    content_checksum: str
    num_files: int
    total_bytes: int
    created: str  # ISO 8601 UTC
    contract_version: str
    episodes: Optional[int] = None
    created_now: bool = False  # False when the version already existed with this content

    @property
    def ref(self) -> str:
        return f"{self.url.rstrip('/')}/{self.name}@{self.version}"

    def to_dict(self) -> dict:
        return {**asdict(self), "ref": self.ref}


# ---------------------------------------------------------------- names, refs


def parse_semver(version: str) -> tuple:
    """Sort key of a semantic version (precedence per semver.org, build metadata ignored)."""
    m = _SEMVER_RE.match(version or "")
    if not m:
        raise PublishError(f"version {version!r} is not a semantic version X.Y.Z[-pre]")
    major, minor, patch, pre, _ = m.groups()
    if pre is None:
        pre_key: tuple = (1,)
    else:
        pre_key = (0,) + tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), pre_key)


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise PublishError(f"dataset name {name!r} is invalid: use letters, digits, '.', '_' or '-'")


def split_url_name(url_name: str) -> tuple[str, str]:
    """`URL/NAME` -> (URL, NAME); a bare `NAME` is in the default registry."""
    url_name = url_name.rstrip("/")
    if "/" in url_name and not url_name.endswith(":/"):
        base, name = url_name.rsplit("/", 1)
        base = base or "/"
        if base.endswith(":/"):  # "s3://name" has no registry part
            raise PublishError(f"{url_name!r}: expected URL/NAME, e.g. s3://bucket/datasets/NAME")
    else:
        base, name = default_registry(), url_name
    _check_name(name)
    return base, name


def parse_ref(ref: str) -> tuple[str, str, str]:
    """`URL/NAME@VERSION` or `NAME@VERSION` -> (URL, NAME, VERSION or 'latest')."""
    if "@" not in ref:
        raise PublishError(f"{ref!r} is not a version ref: expected URL/NAME@VERSION (or NAME@VERSION, @latest)")
    left, version = ref.rsplit("@", 1)
    if version != "latest":
        parse_semver(version)
    base, name = split_url_name(left)
    return base, name, version


def _fs(url: str, storage_options: Optional[dict]):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except Exception as exc:  # noqa: BLE001 - unknown protocol, missing backend
        raise PublishError(f"{url}: cannot open this URL ({type(exc).__name__}: {exc})") from exc


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _url(fs, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


# ---------------------------------------------------------------- hashing


def _sha256_local(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256_remote(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb", block_size=_CHUNK) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_checksum(files: dict[str, dict]) -> str:
    """sha256 over the sorted 'path sha256 size' lines: equal iff every file is equal."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\t{files[rel]['size']}\n".encode())
    return h.hexdigest()


def dataset_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the files to publish: everything except uncommitted
    shard temporaries (`.tmp-*`) and editor/OS litter (hidden files)."""
    root = Path(dataset_dir)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        # A symlink could make publish upload a file from anywhere (say card/x.png -> ~/.aws/credentials);
        # a device or FIFO has no content to hash. rglob does not follow symlinked directories.
        if p.is_symlink():
            raise PublishError(f"{p}: is a symbolic link (to {os.readlink(p)}); a dataset to publish holds regular files only")
        if p.is_dir():
            continue
        if not p.is_file():
            raise PublishError(f"{p}: not a regular file; a dataset to publish holds regular files only")
        out.append(rel.as_posix())
    return out


def hash_dataset(dataset_dir: str | os.PathLike, progress: bool = True) -> dict[str, dict]:
    """{relative path: {"sha256", "size"}} of every file to publish."""
    from schemas.progress import progress_bar

    root = Path(dataset_dir)
    rels = dataset_files(root)
    sizes = {rel: (root / rel).stat().st_size for rel in rels}
    files = {}
    with progress_bar(total=sum(sizes.values()), unit="B", unit_scale=True, desc="hash", disable=not progress, leave=False) as bar:
        for rel in rels:
            files[rel] = {"sha256": _sha256_local(root / rel), "size": sizes[rel]}
            bar.update(sizes[rel])
    return files


# ---------------------------------------------------------------- validation


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


# ---------------------------------------------------------------- exclusive create


def _create_exclusive(fs, path: str, data: bytes) -> None:
    """Create `path` with `data` unless it exists; FileExistsError if it does.
    Readers never see a partial file."""
    if _is_local(fs):
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
        for attempt in range(5):
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
                if attempt == 4:
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
            f"{_url(fs, path)}: this storage ({protocol}) offers no exclusive create, so an atomic, race-free publish "
            "cannot be guaranteed"
        ) from exc


def _create_exclusive_gcs(fs, path: str, data: bytes) -> None:
    """GCS: an upload with the precondition ifGenerationMatch=0 succeeds only if no object of
    that name exists (gcsfs passes `if_generation_match` through to the upload)."""
    try:
        fs.pipe_file(path, data, if_generation_match=0)
    except TypeError as exc:
        raise PublishError(f"{_url(fs, path)}: this gcsfs cannot send a generation precondition ({exc}); "
                           "an atomic, race-free publish cannot be guaranteed") from exc
    except OSError as exc:
        fs.invalidate_cache(path)
        if fs.exists(path):  # 412 Precondition Failed: another publisher created it
            raise FileExistsError(errno.EEXIST, f"{path} exists") from exc
        raise


# ---------------------------------------------------------------- index access


def _read_json(fs, path: str) -> dict:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def _read_index(fs, version_dir: str) -> Optional[dict]:
    path = posixpath.join(version_dir, INDEX)
    fs.invalidate_cache(version_dir)
    if not fs.exists(path):
        return None
    try:
        return _read_json(fs, path)
    except ValueError as exc:
        raise PublishError(f"{_url(fs, path)}: corrupt index ({exc})") from exc


def _version_from_index(url: str, fs, version_dir: str, index: dict, created_now: bool = False) -> PublishedVersion:
    return PublishedVersion(
        url=url,
        name=index["name"],
        version=index["version"],
        root=_url(fs, posixpath.join(version_dir, index["data_prefix"])),
        content_checksum=index["content_checksum"],
        num_files=len(index["files"]),
        total_bytes=sum(f["size"] for f in index["files"].values()),
        created=index["created"],
        contract_version=index.get("contract_version", ""),
        episodes=index.get("episodes"),
        created_now=created_now,
    )


# ---------------------------------------------------------------- publish


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
    _check_name(name)
    parse_semver(version)
    to_url = to_url or default_registry()
    fs, base = _fs(to_url, storage_options)  # a bad URL fails before any hashing
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

    existing = _read_index(fs, version_dir)
    if existing is not None:
        return _same_or_conflict(to_url, fs, version_dir, existing, checksum, ref)

    publish_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    staging = posixpath.join(version_dir, FILES_PREFIX + publish_id)
    _upload_all(dataset_dir, files, fs, staging, f"publish {name}@{version}", progress)
    index = _new_index(dataset_dir, name, version, publish_id, checksum, files)
    data = (json.dumps(index, indent=1) + "\n").encode()
    try:
        _create_exclusive(fs, posixpath.join(version_dir, INDEX), data)
    except FileExistsError:
        winner = _read_index(fs, version_dir)
        if winner is None:
            raise PublishError(f"{ref}: index creation reported a conflict but no index exists; retry") from None
        if winner.get("publish_id") == publish_id:
            # Our own index: a retried create whose first response was lost. The files it
            # points at are ours, so they stay.
            log.info("published %s (the index write was retried)", ref)
            return _version_from_index(to_url, fs, version_dir, winner, created_now=True)
        _remove_quietly(fs, staging)  # another publisher won; our copy is garbage
        return _same_or_conflict(to_url, fs, version_dir, winner, checksum, ref, raced=True)
    except PublishError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PublishError(f"{_url(fs, posixpath.join(version_dir, INDEX))}: index write failed ({type(exc).__name__}: {exc})") from exc
    log.info("published %s (%d files, %d bytes)", ref, len(files), sum(f["size"] for f in files.values()))
    return _version_from_index(to_url, fs, version_dir, index, created_now=True)


def _upload_all(dataset_dir: Path, files: dict[str, dict], fs, staging: str, label: str, progress: bool) -> None:
    """Copy every file to `staging`, hashing what is written; on any failure remove `staging`."""
    from schemas.progress import progress_bar

    local = _is_local(fs)

    def upload(rel: str) -> int:
        # stream and hash what is actually written: the index describes the uploaded bytes,
        # and a dataset modified since it was hashed is caught instead of published
        target = posixpath.join(staging, rel)
        if local:
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
        h = hashlib.sha256()
        with open(dataset_dir / rel, "rb") as src, fs.open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != files[rel]["sha256"]:
            raise PublishError(f"{dataset_dir / rel}: changed while being published; publish again when no job writes the dataset")
        return files[rel]["size"]

    total = sum(f["size"] for f in files.values())
    try:
        with progress_bar(total=total, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False) as bar:
            with ThreadPoolExecutor(max_workers=1 if local else _THREADS) as pool:
                for size in pool.map(upload, sorted(files)):
                    bar.update(size)
        _check_uploaded_sizes(fs, staging, files)
        if local:
            fsync_tree(staging)
            fsync_dir(posixpath.dirname(staging))  # the data is durable before the index that makes it a version
    except PublishError:
        _remove_quietly(fs, staging)
        raise
    except Exception as exc:  # noqa: BLE001 - storage errors name the URL, never credentials
        _remove_quietly(fs, staging)
        raise PublishError(f"{_url(fs, staging)}: upload failed ({type(exc).__name__}: {exc})") from exc


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
        return _version_from_index(url, fs, version_dir, existing, created_now=False)
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
        raise PublishError(f"{_url(fs, staging)}: {len(bad)} uploaded file(s) missing or of the wrong size, e.g. {bad[0]}")


def _remove_quietly(fs, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except Exception as exc:  # noqa: BLE001 - garbage left behind is invisible, only log
        log.warning("could not remove %s: %s", _url(fs, path), exc)


def _count_episodes(dataset_dir: Path) -> Optional[int]:
    try:
        import pyarrow.parquet as pq

        return int(pq.read_metadata(dataset_dir / MANIFEST).num_rows)
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- listing, resolving


def list_versions(url_name: str, storage_options: Optional[dict] = None) -> list[PublishedVersion]:
    """Published versions of `URL/NAME` (or `NAME` in the default registry), lowest first.
    Versions without an index (unfinished publishes) are not listed."""
    base_url, name = split_url_name(url_name)
    fs, base = _fs(base_url, storage_options)
    name_dir = posixpath.join(base, name)
    fs.invalidate_cache(name_dir)
    out = []
    for index_path in fs.glob(posixpath.join(name_dir, "*", INDEX)):
        version_dir = posixpath.dirname(index_path)
        try:
            parse_semver(posixpath.basename(version_dir))
            index = _read_index(fs, version_dir)
        except PublishError as exc:  # not a version directory, or a damaged index: list the rest
            log.warning("skipping %s: %s", _url(fs, version_dir), exc)
            continue
        if index is not None:
            out.append(_version_from_index(base_url, fs, version_dir, index))
    return sorted(out, key=lambda v: parse_semver(v.version))


def unfinished_publishes(url_name: str, storage_options: Optional[dict] = None) -> list[str]:
    """URLs of uploaded file prefixes that no index references (crashed or lost publishes)."""
    base_url, name = split_url_name(url_name)
    fs, base = _fs(base_url, storage_options)
    name_dir = posixpath.join(base, name)
    fs.invalidate_cache(name_dir)
    out = []
    for prefix in sorted(fs.glob(posixpath.join(name_dir, "*", FILES_PREFIX + "*"))):
        version_dir = posixpath.dirname(prefix)
        index = _read_index(fs, version_dir)
        if index is None or index.get("data_prefix") != posixpath.basename(prefix):
            out.append(_url(fs, prefix))
    return out


def _publish_time(prefix_url: str) -> Optional[_dt.datetime]:
    """Start time encoded in a `files-YYYYmmddTHHMMSSZ-xxxxxxxx` prefix."""
    stamp = posixpath.basename(prefix_url.rstrip("/"))[len(FILES_PREFIX) :].split("-")[0]
    try:
        return _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None


def remove_unfinished(url_name: str, older_than_hours: float = 24.0, storage_options: Optional[dict] = None) -> list[str]:
    """Delete unreferenced upload prefixes started more than `older_than_hours`
    ago (younger ones may belong to a publish still running). Returns their URLs."""
    base_url, _ = split_url_name(url_name)
    fs, _ = _fs(base_url, storage_options)
    now = _dt.datetime.now(_dt.timezone.utc)
    removed = []
    for url in unfinished_publishes(url_name, storage_options):
        started = _publish_time(url)
        if started is None or (now - started).total_seconds() < older_than_hours * 3600:
            continue
        _remove_quietly(fs, fs._strip_protocol(url))
        removed.append(url)
    return removed


def _resolve_index(ref: str, storage_options: Optional[dict]) -> tuple[Any, str, dict, str]:
    base_url, name, version = parse_ref(ref)
    fs, base = _fs(base_url, storage_options)
    if version == "latest":
        versions = list_versions(f"{base_url.rstrip('/')}/{name}", storage_options)
        if not versions:
            raise PublishError(f"{ref}: no published version of {name!r} at {base_url}")
        version = versions[-1].version
    version_dir = posixpath.join(base, name, version)
    index = _read_index(fs, version_dir)
    if index is None:
        staged = [p for p in fs.glob(posixpath.join(version_dir, FILES_PREFIX + "*"))] if fs.exists(version_dir) else []
        hint = f" ({len(staged)} unfinished publish attempt(s) left files there; they are not a version)" if staged else ""
        raise PublishError(f"{base_url.rstrip('/')}/{name}@{version} is not published: no {INDEX}{hint}")
    check_index_names(index, _url(fs, posixpath.join(version_dir, INDEX)))
    return fs, version_dir, index, base_url


# Names from an index are checked before any path is built from them: an index is input, and a
# `data_prefix` of "../x" or a file "a/../../b" must not reach outside the version's directory.
_PREFIX_RE = re.compile(r"^files-\d{8}T\d{6}Z-[0-9a-f]{8}$")
_PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def check_index_names(index: dict, where: str) -> None:
    """PublishError unless data_prefix and every file path of `index` match their patterns."""
    prefix = index.get("data_prefix")
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise PublishError(f"{where}: data_prefix {prefix!r} is not of the form files-<time>-<id>")
    for rel in index.get("files", {}):
        if not all(_PATH_PART_RE.match(part) for part in rel.split("/")):
            raise PublishError(f"{where}: file path {rel!r} in the index is not a plain relative path")


def resolve_files(ref: str, storage_options: Optional[dict] = None) -> tuple[Any, str, str, dict[str, dict]]:
    """As `resolve`, plus the index's file table {relative path: {size, sha256}}."""
    fs, version_dir, index, _ = _resolve_index(ref, storage_options)
    return fs, posixpath.join(version_dir, index["data_prefix"]), index["version"], index["files"]


def resolve(ref: str, storage_options: Optional[dict] = None) -> tuple[Any, str, str]:
    """`URL/NAME@V` -> (fsspec filesystem, root path of the files on it, version).
    The root holds manifest.parquet, shards/, ...; `fs.unstrip_protocol(root)`
    gives a URL for libraries that take one (zarr, pyarrow)."""
    fs, version_dir, index, _ = _resolve_index(ref, storage_options)
    return fs, posixpath.join(version_dir, index["data_prefix"]), index["version"]


def open_version(ref: str, storage_options: Optional[dict] = None) -> PublishedVersion:
    """The PublishedVersion a ref points at."""
    fs, version_dir, index, base_url = _resolve_index(ref, storage_options)
    return _version_from_index(base_url, fs, version_dir, index)


def read_index(ref: str, storage_options: Optional[dict] = None) -> dict:
    return _resolve_index(ref, storage_options)[2]


# ---------------------------------------------------------------- verify, diff


@dataclass
class VerifyResult:
    ref: str
    ok: bool
    files_checked: int
    bytes_checked: int
    mismatched: list[dict] = field(default_factory=list)  # {path, expected, actual}
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    index_checksum_ok: bool = True  # content_checksum agrees with the file list

    def to_dict(self) -> dict:
        return asdict(self)


def verify(ref: str, storage_options: Optional[dict] = None, progress: bool = True) -> VerifyResult:
    """Re-hash every file of a published version against its index."""
    from schemas.progress import progress_bar

    fs, version_dir, index, base_url = _resolve_index(ref, storage_options)
    root = posixpath.join(version_dir, index["data_prefix"])
    files = index["files"]
    fs.invalidate_cache(root)
    present = {posixpath.relpath(p, root): info.get("size") for p, info in fs.find(root, detail=True).items()} if fs.exists(root) else {}
    missing = sorted(rel for rel in files if rel not in present)
    unexpected = sorted(rel for rel in present if rel not in files)
    mismatched = []
    todo = sorted(rel for rel in files if rel in present)

    def check(rel: str) -> Optional[dict]:
        expected = files[rel]
        if present[rel] != expected["size"]:
            return {"path": rel, "expected": f"{expected['size']} bytes", "actual": f"{present[rel]} bytes"}
        digest = _sha256_remote(fs, posixpath.join(root, rel))
        if digest != expected["sha256"]:
            return {"path": rel, "expected": expected["sha256"], "actual": digest}
        return None

    total = sum(files[rel]["size"] for rel in todo)
    with progress_bar(total=total, unit="B", unit_scale=True, desc="verify", disable=not progress, leave=False) as bar:
        with ThreadPoolExecutor(max_workers=1 if _is_local(fs) else _THREADS) as pool:
            for rel, bad in zip(todo, pool.map(check, todo)):
                bar.update(files[rel]["size"])
                if bad:
                    mismatched.append(bad)
    index_ok = content_checksum(files) == index.get("content_checksum")
    full_ref = f"{base_url.rstrip('/')}/{index['name']}@{index['version']}"
    return VerifyResult(
        ref=full_ref,
        ok=not (mismatched or missing or unexpected) and index_ok,
        files_checked=len(todo),
        bytes_checked=total,
        mismatched=mismatched,
        missing=missing,
        unexpected=unexpected,
        index_checksum_ok=index_ok,
    )


def _manifest_checksums(ref: str, storage_options: Optional[dict]) -> tuple[str, dict[str, str]]:
    """{episode_id: checksum} of a published version, or of a local dataset directory."""
    import pyarrow.parquet as pq

    if "@" not in ref and Path(ref, MANIFEST).is_file():
        table = pq.read_table(Path(ref, MANIFEST), columns=["episode_id", "checksum"])
        label = str(ref)
    else:
        fs, root, version = resolve(ref, storage_options)
        path = posixpath.join(root, MANIFEST)
        if not fs.exists(path):
            raise PublishError(f"{ref}: the version has no {MANIFEST}")
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["episode_id", "checksum"])
        base_url, name, _ = parse_ref(ref)
        label = f"{base_url.rstrip('/')}/{name}@{version}"
    return label, dict(zip(table.column("episode_id").to_pylist(), table.column("checksum").to_pylist()))


def diff(ref_a: str, ref_b: str, storage_options: Optional[dict] = None) -> dict:
    """Episodes added (in b only), removed (in a only) and changed (same id,
    different checksum) from a to b. Refs are `URL/NAME@V` or local dataset dirs."""
    label_a, a = _manifest_checksums(ref_a, storage_options)
    label_b, b = _manifest_checksums(ref_b, storage_options)
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(e for e in set(a) & set(b) if a[e] != b[e])
    fa, fb = _file_hashes(ref_a, storage_options), _file_hashes(ref_b, storage_options)
    return {
        "a": label_a,
        "b": label_b,
        "episodes_a": len(a),
        "episodes_b": len(b),
        "added": added,
        "removed": removed,
        "changed": changed,
        "unchanged": len(set(a) & set(b)) - len(changed),
        # dataset-level files (card, stats, config) that differ; shard files follow the episodes
        "files_changed": sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f) and not f.startswith("shards/")),
    }


def _file_hashes(ref: str, storage_options: Optional[dict]) -> dict[str, str]:
    if "@" not in ref and Path(ref, MANIFEST).is_file():
        return {rel: f["sha256"] for rel, f in hash_dataset(ref, progress=False).items()}
    return {rel: f["sha256"] for rel, f in read_index(ref, storage_options)["files"].items()}
