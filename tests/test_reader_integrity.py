"""Reads that verify themselves: a flipped byte anywhere in a published version, a missing or
damaged chunk file, and names from an index or manifest that would build paths outside the
dataset are errors naming the file (or shard and episode), never silently read values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_pipeline_helpers import as_contract_3_0, cached_run


def _published(bridge_dir, tmp_path) -> tuple[str, Path]:
    from curation.registry.publish import publish

    out, _ = cached_run("bridge-local", bridge_dir)
    pv = publish(out, "bridge", "1.0.0", to_url=str(tmp_path / "reg"), progress=False)
    return pv.ref, Path(pv.root)


def _read_all(ds) -> int:
    return sum(1 for _ in ds.iter_triplets())


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "shards").rglob("*") if p.is_file() and p.name != "zarr.json")


def test_flipped_byte_in_a_published_shard_names_the_file(bridge_dir, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    ref, root = _published(bridge_dir, tmp_path)
    assert _read_all(open_dataset(ref)) > 0
    victim = _chunk_files(root)[3]
    _flip(victim, 7)
    ds = open_dataset(ref)  # sizes still match: caught when the shard is read
    rel = victim.relative_to(root).as_posix()
    with pytest.raises(DatasetIntegrityError, match=f"{rel}: sha256 does not match index.json"):
        _read_all(ds)


def test_damaged_card_or_manifest_is_caught_on_open(bridge_dir, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    ref, root = _published(bridge_dir, tmp_path)
    _flip(root / "README.md", 10)
    with pytest.raises(DatasetIntegrityError, match="README.md: sha256 does not match"):
        open_dataset(ref)
    _flip(root / "README.md", 10)  # restored
    assert len(open_dataset(ref)) > 0
    (root / "stats.json").unlink()
    with pytest.raises(DatasetIntegrityError, match="stats.json is missing"):
        open_dataset(ref)


def test_missing_chunk_of_a_dataset_directory_is_an_error_not_fill_values(bridge_dir, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    out, _ = cached_run("bridge-local", bridge_dir)
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    victim = next(p for p in _chunk_files(copy) if "actions" in p.as_posix())
    shard = victim.relative_to(copy / "shards").parts[0]
    victim.unlink()
    with pytest.raises(DatasetIntegrityError, match=f"in shard {shard}: shards/{shard}/actions cannot be read: "
                                                    f"MissingChunkError: actions/0.0: shard file missing"):
        _read_all(open_dataset(str(copy)))
    ds = open_dataset(str(copy), verify=False)
    assert _read_all(ds) > 0  # verify=False reads what is there (here: fill values)
    as_contract_3_0(copy)  # a contract-3.0 dataset: no chunk checksums, the episode's sha256 catches it
    with pytest.raises(DatasetIntegrityError, match=f"in shard {shard}: its arrays do not match the manifest checksum"):
        _read_all(open_dataset(str(copy)))


def test_index_names_are_checked_before_paths_are_built(bridge_dir, tmp_path):
    from curation import open_dataset
    from curation.registry.refs import PublishError

    ref, root = _published(bridge_dir, tmp_path)
    index_path = root.parent / "index.json"
    index = json.loads(index_path.read_text())
    for field, value in (("data_prefix", "../../elsewhere"), ("files", {"../x": {"size": 1, "sha256": "0"}})):
        bad = {**index, field: value}
        index_path.write_text(json.dumps(bad))
        with pytest.raises(PublishError, match="is not (of the form|a plain relative path)"):
            open_dataset(ref)


def test_declared_shape_shorter_than_the_manifest_says_is_refused(bridge_dir, tmp_path):
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    out, _ = cached_run("bridge-local", bridge_dir)
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    meta = copy / "shards" / "shard-00000" / "actions" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] -= 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(DatasetIntegrityError, match=r"shard-00000/actions: declared shape .* is shorter than the \d+ frames"):
        open_dataset(str(copy)).read_shard("shard-00000")


def test_array_metadata_is_checked_against_the_contract_before_a_read(bridge_dir, tmp_path):
    """Contract 3.1: chunk checksums cover the stored bytes, not zarr.json, so the reader checks each
    array's codecs when it opens a shard: a changed fixed-point scale (which would decode wrong values
    whose crc32c still match) or a removed crc32c codec is refused, naming shard and array."""
    from curation import open_dataset
    from curation.store.reader import DatasetIntegrityError

    out, _ = cached_run("bridge-local", bridge_dir)
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    meta = copy / "shards" / "shard-00000" / "tracks_px" / "zarr.json"
    original = meta.read_text()
    for edit, expect in ((lambda codecs: codecs[0]["configuration"].update(scale=33.0), "at scale 32.0"),
                         (lambda codecs: codecs.pop(), r"inner codecs \[.*\] do not end in crc32c")):
        doc = json.loads(original)
        edit(doc["codecs"][0]["configuration"]["codecs"])
        meta.write_text(json.dumps(doc))
        with pytest.raises(DatasetIntegrityError, match=f"shards/shard-00000/tracks_px: its zarr.json does not match "
                                                        f"the contract: .*{expect}"):
            _read_all(open_dataset(str(copy)))
    meta.write_text(original)
    assert _read_all(open_dataset(str(copy))) > 0
