"""`curate inspect` on the shared Bridge episodes: the numbers the issue asks for."""

from __future__ import annotations

import json

from cli.main import main as curate


def test_inspect_bridge_json(bridge_dir, capsys):
    assert curate(["inspect", str(bridge_dir), "--split", "train", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["dataset"] == "bridge_dataset" and r["version"] == "1.0.0" and r["registered"]
    assert r["episodes"] == 25 and r["steps"] == 250 and r["bad_episodes"] == []
    cams = {c["name"]: c for c in r["cameras"]}
    assert sorted(cams) == ["image_0", "image_1", "image_2", "image_3"]
    assert [n for n, c in cams.items() if not c["blank"]] == ["image_0", "image_1", "image_2"]
    assert cams["image_3"]["blank"] and cams["image_3"]["blank_episodes"] == 25
    assert all(c["shape"] == [64, 64, 3] for c in cams.values())
    assert r["num_instructions"] == 4 and len(r["instructions"]) == 4
    assert r["depth"] == [] and r["action_dim"] == 7 and r["control_hz"] == 5.0


def test_inspect_bridge_text_and_val_split(bridge_dir, capsys):
    assert curate(["inspect", str(bridge_dir), "--split", "val", "--max-episodes", "5"]) == 0
    out = capsys.readouterr().out
    assert "episodes: 5 read of 25" in out and "steps: 50" in out
    assert "image_3" in out and "BLANK" in out and "control rate: 5 Hz" in out


def test_inspect_unreachable_path_is_an_error(tmp_path, capsys):
    assert curate(["inspect", str(tmp_path / "missing")]) == 1
    assert "cannot open RLDS dataset directory" in capsys.readouterr().err


def test_simulated_dataset_reads_through_the_same_reader(sim_dataset_dir, capsys):
    """The simulator's dataset, read like any Open-X dataset: ground truth arrives intact."""
    import numpy as np

    from curation.sources.rlds import RLDSSource

    src = RLDSSource(str(sim_dataset_dir))
    assert src.name == "metaworld_sim" and not src.config.inferred
    eps = list(src.read())
    assert len(eps) == 4
    for e in eps:
        gt = e.ground_truth
        d = e.depth_m["image"]
        assert gt is not None and gt.segmentation.shape == d.shape == e.frames["image"].shape[:3]
        assert np.array_equal(np.isnan(d), gt.segmentation < 0)  # background <-> no depth
        assert np.isfinite(gt.body_pos).all() and np.isfinite(gt.body_quat).all()
        np.testing.assert_allclose(np.linalg.norm(gt.body_quat, axis=-1), 1.0, atol=1e-5)
        assert gt.segmentation.max() < gt.body_pos.shape[1]  # every labelled body has a pose
        R = e.extrinsics["image"][:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)
        k = e.intrinsics["image"]
        assert not k.estimated and (k.cx, k.cy) == (32.0, 32.0)
        assert np.abs(e.actions).max() <= 1.0 and e.proprio.shape == (e.num_steps, 4)
    assert curate(["inspect", str(sim_dataset_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["episodes"] == 4 and r["control_hz"] == 80.0 and r["num_instructions"] == 2
    assert r["depth"][0]["key"] == "observation/depth" and 0.0 < r["depth"][0]["valid_fraction"] <= 1.0
    assert r["success_rate"] is not None
