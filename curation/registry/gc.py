"""Unfinished publishes: uploaded file prefixes no index references (a publish that crashed or
lost the race), listed and, once old enough that no publish can still be running, removed."""

from __future__ import annotations

import datetime as _dt
import posixpath
from typing import Optional

from curation.registry.refs import FILES_PREFIX, split_url_name
from curation.registry.storage import open_fs, remove_quietly, url_of
from curation.registry.versions import index_at


def unfinished_publishes(url_name: str, storage_options: Optional[dict] = None) -> list[str]:
    """URLs of uploaded file prefixes that no index references (crashed or lost publishes)."""
    base_url, name = split_url_name(url_name)
    fs, base = open_fs(base_url, storage_options)
    name_dir = posixpath.join(base, name)
    fs.invalidate_cache(name_dir)
    out = []
    for prefix in sorted(fs.glob(posixpath.join(name_dir, "*", FILES_PREFIX + "*"))):
        version_dir = posixpath.dirname(prefix)
        index = index_at(fs, version_dir)
        if index is None or index.get("data_prefix") != posixpath.basename(prefix):
            out.append(url_of(fs, prefix))
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
    fs, _ = open_fs(base_url, storage_options)
    now = _dt.datetime.now(_dt.timezone.utc)
    removed = []
    for url in unfinished_publishes(url_name, storage_options):
        started = _publish_time(url)
        if started is None or (now - started).total_seconds() < older_than_hours * 3600:
            continue
        remove_quietly(fs, fs._strip_protocol(url))
        removed.append(url)
    return removed
