"""Contract 2: every camera has its own image size (taco_play: rgb_static 150x200, rgb_gripper
84x84); the manifest lists them; datasets of the old contract are refused with a clear message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.store.validate import check_episode_arrays, validate_dataset
from schemas.dataset import CONTRACT_VERSION, MANIFEST_SCHEMA
from test_pipeline_helpers import cached_run


def _arrays(sizes: dict[str, tuple[int, int]], depth: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    F, N, K, H = 6, 2, 3, 4
    inr = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    tracks = np.full((N, K, H, 2), np.nan, np.float32)
    tracks[np.broadcast_to(inr[:, None, :], (N, K, H))] = 1.0
    out = {f"frames/{c}": np.zeros((F, h, w, 3), np.uint8) for c, (h, w) in sizes.items()}
    out.update({f"depth_m/{c}": np.ones((F, h, w), np.float32) for c, (h, w) in depth.items()})
    out.update(actions=np.zeros((F, 2), np.float32), anchor_step=np.array([0, 4], np.int32), tracks_px=tracks,
               visible=np.zeros((N, K, H), bool), in_range=inr)
    return out


def test_cameras_of_different_sizes_are_valid_but_depth_must_match_its_camera():
    taco = {"rgb_static": (150, 200), "rgb_gripper": (84, 84)}
    assert check_episode_arrays(_arrays(taco, depth=taco)) == []
    problems = check_episode_arrays(_arrays(taco, depth={"rgb_static": (84, 84)}))
    assert len(problems) == 2 and all("frames/rgb_static: axis" in p and "other rgb_static arrays have 84" in p for p in problems)


@pytest.fixture()
def bridge_copy(bridge_dir, tmp_path):
    out, _ = cached_run("bridge-local", bridge_dir)
    shutil.copytree(out, tmp_path / "ds")
    return tmp_path / "ds"


def test_manifest_lists_every_cameras_size_and_the_validator_checks_it(bridge_copy):
    table = pq.read_table(bridge_copy / "manifest.parquet")
    rows = table.to_pylist()
    assert all(r["camera_sizes"] == [[64, 64]] * len(r["cameras"]) for r in rows)
    assert all(r["language_informative"] is True for r in rows)
    rows[0]["camera_sizes"] = [[64, 32]] + rows[0]["camera_sizes"][1:]
    rows[1]["camera_sizes"] = rows[1]["camera_sizes"][:1]
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), bridge_copy / "manifest.parquet")
    messages = [str(v) for v in validate_dataset(bridge_copy, checksums=False)]
    assert len(messages) == 2
    assert any(f"episode {rows[0]['episode_id']}: manifest camera_sizes says {rows[0]['cameras'][0]} is 64x32, "
               f"frames are 64x64" in m for m in messages)
    assert any(f"episode {rows[1]['episode_id']}: camera_sizes" in m and "one [H, W] per camera" in m for m in messages)


def test_a_dataset_of_the_old_contract_is_refused_clearly(bridge_copy, capsys):
    from cli.main import main as curate
    from curation import open_dataset

    assert CONTRACT_VERSION.startswith("3.")
    info = json.loads((bridge_copy / "dataset.json").read_text())
    info["contract_version"] = "1.0.0"
    (bridge_copy / "dataset.json").write_text(json.dumps(info))
    (v,) = [v for v in validate_dataset(bridge_copy, checksums=False) if v.where == "dataset.json"]
    assert "written under data contract 1.0.0, this code reads contracts 2.x and 3.x (current 3.1.0" in v.message
    assert "curate run ... --overwrite" in v.message
    with pytest.raises(ValueError, match=r"ds: written under data contract 1\.0\.0, this code reads contracts 2\.x and 3\.x"):
        open_dataset(str(bridge_copy))
    assert curate(["validate", str(bridge_copy)]) == 1
    assert "data contract 1.0.0" in capsys.readouterr().out
