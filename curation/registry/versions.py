"""Published versions read back: a version's index, listing a dataset's versions, and resolving
a ref (`URL/NAME@VERSION`, `@latest`) to the files it names. A version exists iff its index does;
the names in an index are checked before any path is built from them."""

from __future__ import annotations

import json
import logging
import posixpath
import re
from typing import Any, Optional

from curation.registry.refs import INDEX, FILES_PREFIX, PublishError, PublishedVersion, parse_ref, parse_semver, split_url_name
from curation.registry.storage import open_fs, url_of

log = logging.getLogger(__name__)


def read_json(fs, path: str) -> dict:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def index_at(fs, version_dir: str) -> Optional[dict]:
    path = posixpath.join(version_dir, INDEX)
    fs.invalidate_cache(version_dir)
    if not fs.exists(path):
        return None
    try:
        return read_json(fs, path)
    except ValueError as exc:
        raise PublishError(f"{url_of(fs, path)}: corrupt index ({exc})") from exc


def version_from_index(url: str, fs, version_dir: str, index: dict, created_now: bool = False) -> PublishedVersion:
    return PublishedVersion(
        url=url,
        name=index["name"],
        version=index["version"],
        root=url_of(fs, posixpath.join(version_dir, index["data_prefix"])),
        content_checksum=index["content_checksum"],
        num_files=len(index["files"]),
        total_bytes=sum(f["size"] for f in index["files"].values()),
        created=index["created"],
        contract_version=index.get("contract_version", ""),
        episodes=index.get("episodes"),
        created_now=created_now,
    )


def list_versions(url_name: str, storage_options: Optional[dict] = None) -> list[PublishedVersion]:
    """Published versions of `URL/NAME` (or `NAME` in the default registry), lowest first.
    Versions without an index (unfinished publishes) are not listed."""
    base_url, name = split_url_name(url_name)
    fs, base = open_fs(base_url, storage_options)
    name_dir = posixpath.join(base, name)
    fs.invalidate_cache(name_dir)
    out = []
    for index_path in fs.glob(posixpath.join(name_dir, "*", INDEX)):
        version_dir = posixpath.dirname(index_path)
        try:
            parse_semver(posixpath.basename(version_dir))
            index = index_at(fs, version_dir)
        except PublishError as exc:  # not a version directory, or a damaged index: list the rest
            log.warning("skipping %s: %s", url_of(fs, version_dir), exc)
            continue
        if index is not None:
            out.append(version_from_index(base_url, fs, version_dir, index))
    return sorted(out, key=lambda v: parse_semver(v.version))


def resolve_index(ref: str, storage_options: Optional[dict]) -> tuple[Any, str, dict, str]:
    base_url, name, version = parse_ref(ref)
    fs, base = open_fs(base_url, storage_options)
    if version == "latest":
        versions = list_versions(f"{base_url.rstrip('/')}/{name}", storage_options)
        if not versions:
            raise PublishError(f"{ref}: no published version of {name!r} at {base_url}")
        version = versions[-1].version
    version_dir = posixpath.join(base, name, version)
    index = index_at(fs, version_dir)
    if index is None:
        staged = [p for p in fs.glob(posixpath.join(version_dir, FILES_PREFIX + "*"))] if fs.exists(version_dir) else []
        hint = f" ({len(staged)} unfinished publish attempt(s) left files there; they are not a version)" if staged else ""
        raise PublishError(f"{base_url.rstrip('/')}/{name}@{version} is not published: no {INDEX}{hint}")
    check_index_names(index, url_of(fs, posixpath.join(version_dir, INDEX)))
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
    fs, version_dir, index, _ = resolve_index(ref, storage_options)
    return fs, posixpath.join(version_dir, index["data_prefix"]), index["version"], index["files"]


def resolve(ref: str, storage_options: Optional[dict] = None) -> tuple[Any, str, str]:
    """`URL/NAME@V` -> (fsspec filesystem, root path of the files on it, version).
    The root holds manifest.parquet, shards/, ...; `fs.unstrip_protocol(root)`
    gives a URL for libraries that take one (zarr, pyarrow)."""
    fs, version_dir, index, _ = resolve_index(ref, storage_options)
    return fs, posixpath.join(version_dir, index["data_prefix"]), index["version"]


def open_version(ref: str, storage_options: Optional[dict] = None) -> PublishedVersion:
    """The PublishedVersion a ref points at."""
    fs, version_dir, index, base_url = resolve_index(ref, storage_options)
    return version_from_index(base_url, fs, version_dir, index)


def read_index(ref: str, storage_options: Optional[dict] = None) -> dict:
    return resolve_index(ref, storage_options)[2]
