"""`curate inspect` on the shared Bridge episodes: the numbers the issue asks for."""

from __future__ import annotations

import json

from curation.cli import main as curate


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
