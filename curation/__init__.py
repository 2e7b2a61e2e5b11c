"""Curation: sources, selection, the shard store, description and versions of curated datasets.

    sources/     episodes in: the Open-X RLDS reader and writer, the Open-X registry, Meta-World
    selection/   which episodes stay: filters, near-duplicate removal
    store/       the sharded Zarr dataset: writer, reader, validator
    describe/    training statistics and the dataset card
    registry/    immutable published versions: publish, resolve, verify, diff

`open_dataset(ref)` is the front door for trainers: a dataset directory, an fsspec URL of one, or a
published version `URL/NAME@VERSION`.
"""

from __future__ import annotations

from typing import Optional


def open_dataset(ref: str, storage_options: Optional[dict] = None, verify: bool = True):
    """The curated dataset (curation.store.reader.CuratedDataset) at a directory, an fsspec URL,
    or a published version `URL/NAME@V` (`@latest` for the newest). Reads verify themselves
    (sizes and sha256 against the version's index.json, every episode against its manifest
    checksum); verify=False skips that (see curation.store.reader)."""
    from curation.store.reader import CuratedDataset, open_directory

    ref = str(ref)
    if "@" not in ref.rstrip("/").rsplit("/", 1)[-1]:
        return open_directory(ref, storage_options, verify=verify)
    from curation.registry.versions import resolve_files

    fs, root, version, files = resolve_files(ref, storage_options)
    return CuratedDataset(fs, root, ref, version, storage_options, files=files, verify=verify)
