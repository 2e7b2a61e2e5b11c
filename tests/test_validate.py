"""The validator catches every kind of contract violation (a written dataset,
corrupted in several ways), lists all of them, and `curate validate` exits 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from test_pipeline_helpers import cached_run


@pytest.fixture()
def ds(bridge_dir, tmp_path):
    out, _ = cached_run("bridge-local", bridge_dir)
    copy = tmp_path / "ds"
    shutil.copytree(out, copy)
    return copy


def _rewrite(ds, shard, name, data):
    """Replace one array of a shard with `data` (same chunking rules as the writer)."""
    from curation.store.writer import _write_array

    g = zarr.open_group(str(ds / "shards" / shard), mode="a")
    del g[name]
    _write_array(g, name, data, 16, "none")


def _kinds(ds):
    from curation.store.validate import validate_dataset

    return {(v.kind, v.where.split(" ")[0]) for v in validate_dataset(ds)}, validate_dataset(ds)


def test_clean_dataset_is_valid_and_cli_exit_0(ds, capsys):
    from cli.main import main

    assert main(["validate", str(ds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(ds), "valid": True, "violations": []}


def test_every_kind_of_violation_is_listed(ds, capsys):
    from cli.main import main

    s0, s1, s2 = "shard-00000", "shard-00001", "shard-00002"
    g0 = zarr.open_group(str(ds / "shards" / s0), mode="r")
    # 1. checksum: flip one pixel of one episode
    frames = g0["frames/image_0"][...]
    frames[3, 5, 5, 0] ^= 0xFF
    _rewrite(ds, s0, "frames/image_0", frames)
    # 2. dtype: actions stored as float64
    _rewrite(ds, s0, "actions", g0["actions"][...].astype(np.float64))
    # 3. NaN where the contract allows none (actions), in another shard
    g1 = zarr.open_group(str(ds / "shards" / s1), mode="r")
    acts = g1["actions"][...]
    acts[2, 1] = np.nan
    _rewrite(ds, s1, "actions", acts)
    # 4. mask: a point visible at an out-of-range step; and a missing required array
    g2 = zarr.open_group(str(ds / "shards" / s2), mode="r")
    vis, inr = g2["visible"][...], g2["in_range"][...]
    a, t = np.argwhere(~inr)[0]
    vis[a, 0, t] = True
    _rewrite(ds, s2, "visible", vis)
    del zarr.open_group(str(ds / "shards" / s2), mode="a")["tracks_px"]
    # 5. shape: wrong point count in another shard's visible mask
    g3 = zarr.open_group(str(ds / "shards" / "shard-00003"), mode="r")
    _rewrite(ds, "shard-00003", "visible", g3["visible"][...][:, :5])
    # 6. offsets out of range + 7. a manifest column of the wrong type
    t = pq.read_table(ds / "manifest.parquet")
    fs = t.column("frame_start").to_pylist()
    fs[-1] = 10_000
    t = t.set_column(t.schema.get_field_index("frame_start"), "frame_start", pa.array(fs, pa.int64()))
    t = t.set_column(t.schema.get_field_index("height"), "height", t.column("height").cast(pa.int64()))
    pq.write_table(t, ds / "manifest.parquet")
    # 8. a temporary shard left behind
    (ds / "shards" / ".tmp-shard-00099-abc").mkdir()

    kinds, violations = _kinds(ds)
    expect = {
        ("checksum", f"shards/{s0}"), ("dtype", f"shards/{s0}/actions"), ("nan", f"shards/{s1}"),
        ("mask", f"shards/{s2}"), ("missing_array", f"shards/{s2}/tracks_px"), ("shape", "shards/shard-00003/visible"),
        ("offsets", "shards/shard-00008"), ("schema", "manifest.parquet"), ("stale_tmp", "shards/.tmp-shard-00099-abc"),
    }
    assert expect <= kinds, expect - kinds
    msgs = "\n".join(map(str, violations))
    assert "visible at out-of-range steps" in msgs and "float64" in msgs and "'height'" in msgs
    assert main(["validate", str(ds), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and len(out["violations"]) == len(violations) >= 9


def test_missing_manifest_and_wrong_ids(ds):
    from curation.store.validate import validate_dataset

    t = pq.read_table(ds / "manifest.parquet")
    ids = t.column("episode_id").to_pylist()
    ids[1] = ids[0]
    pq.write_table(t.set_column(0, "episode_id", pa.array(ids, pa.string())), ds / "manifest.parquet")
    kinds = {v.kind for v in validate_dataset(ds)}
    assert {"duplicate_episode", "schema", "checksum"} <= kinds or {"duplicate_episode", "schema"} <= kinds
    (ds / "manifest.parquet").unlink()
    assert [v.kind for v in validate_dataset(ds)] == ["missing_file"]


def test_check_episode_arrays_flags_faked_tracks():
    from curation.store.validate import check_episode_arrays

    N, K, T = 2, 3, 4
    arrays = {
        "frames/cam": np.zeros((6, 8, 8, 3), np.uint8), "actions": np.zeros((6, 2), np.float32),
        "anchor_step": np.array([0, 4], np.int32), "tracks_px": np.full((N, K, T, 2), np.nan, np.float32),
        "visible": np.zeros((N, K, T), bool), "in_range": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool),
    }
    arrays["tracks_px"][np.broadcast_to(arrays["in_range"][:, None, :], (N, K, T))] = 1.0
    assert check_episode_arrays(arrays) == []
    arrays["tracks_px"][1, :, 3] = 2.0
    (msg,) = check_episode_arrays(arrays)
    assert "finite track positions at out-of-range steps" in msg
    arrays["tracks_px"][1, :, 3] = np.nan
    arrays["in_range"][1, 2] = True
    assert any("in_range disagrees" in m for m in check_episode_arrays(arrays))
