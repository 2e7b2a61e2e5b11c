"""Names and refs of published dataset versions (the layout: curation.registry.publish).

    URL/NAME@VERSION   a version in the registry at URL (a local directory, s3://, gs://, ...)
    NAME@VERSION       a version in the default registry ($CURATE_REGISTRY, else DEFAULT_REGISTRY)
    VERSION            X.Y.Z[-pre] (semver.org precedence), or `latest`: the highest published

Also the registry's errors and PublishedVersion, what every registry operation returns.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Optional


INDEX = "index.json"
INDEX_FORMAT = "triplet-curator-version/1"
FILES_PREFIX = "files-"
DEFAULT_REGISTRY = "~/.local/share/triplet-curator/registry"  # overridden by $CURATE_REGISTRY
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEMVER_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")


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


def check_name(name: str) -> None:
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
    check_name(name)
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
