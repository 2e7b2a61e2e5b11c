"""The dataset card: Hugging Face front matter, the numbers read back from the
dataset, filter drops, label accuracy, and real PNG pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from curation.describe.card import write_card
from test_curation_helpers import make_episode, make_labels, write_dataset


@pytest.fixture(scope="module")
def card_dataset(tmp_path_factory):
    pairs = []
    for i in range(3):
        ep = make_episode(i, T=12, dataset="bridge_dataset" if i < 2 else "metaworld_sim", language=f"task {i % 2}")
        pairs.append((ep, make_labels(ep, speed_px=1.5, seed=i)))
    filtered = [
        {"episode_id": "e1", "dataset": "bridge_dataset", "split": "train", "episode_index": 7, "reason": "static", "detail": ""},
        {"episode_id": "e1", "dataset": "bridge_dataset", "split": "train", "episode_index": 7, "reason": "no_language", "detail": ""},
        {"episode_id": "e2", "dataset": "bridge_dataset", "split": "val", "episode_index": 0, "reason": "duplicate", "detail": "exact"},
    ]
    root = write_dataset(tmp_path_factory.mktemp("card") / "my_triplets", pairs, filtered=filtered)
    accuracy = {"tracks": {"lk": {"delta_avg": 0.8125, "AJ": 0.5}}, "depth": {"abs_rel": 0.07}}
    out = write_card(root, accuracy=accuracy)
    return root, pairs, out


def test_front_matter_and_numbers(card_dataset):
    root, pairs, out = card_dataset
    text = (root / "README.md").read_text()
    assert out["readme"] == str(root / "README.md")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "other"
    assert front["task_categories"] == ["robotics"]
    assert front["size_categories"] == ["n<1K"]
    assert "bridge-dataset" in front["tags"] and "scene-flow" in front["tags"]
    assert front["source_datasets"] == ["bridge_dataset/1.0.0", "metaworld_sim/1.0.0"]
    anchors = sum(lab.num_anchors for _, lab in pairs)
    assert f"**3 episodes**, **{anchors} triplets**" in text
    assert "| bridge_dataset | 1.0.0 | train | 2 | 24 |" in text  # sources table: episodes and frames
    # filters: 2 episodes dropped, reasons counted
    assert "2 episode(s) dropped" in text
    assert "| static | 1 |" in text and "| no_language | 1 |" in text and "| duplicate | 1 |" in text
    # label accuracy passed in appears with its value
    assert "| tracks.lk.delta_avg | 0.8125 |" in text and "| depth.abs_rel | 0.07 |" in text
    # statistics table: the first action dimension's mean, as stats.json has it
    stats = json.loads((root / "stats.json").read_text())
    mean0 = stats["datasets"]["bridge_dataset"]["actions"]["mean"][0]
    assert f"| bridge_dataset | 0 | {mean0:.4g} |" in text
    assert "```json" in text and '"min_steps": 8' in text  # config used


def test_pictures_are_real_pngs(card_dataset):
    root, _, out = card_dataset
    names = sorted(p.split("/")[-1] for p in out["pictures"])
    assert names == ["action_histograms.png", "motion_images.png", "sample_tracks.png"]
    text = (root / "README.md").read_text()
    for p in out["pictures"]:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape[0] > 100 and img.shape[1] > 200
        assert img.std() > 10  # not a blank canvas
        assert f"(card/{p.split('/')[-1]})" in text


def test_accuracy_from_a_bench_labels_result(card_dataset, tmp_path):
    """The format `curate bench labels` writes: per label, rows per backend and task."""
    import shutil

    root, _, _ = card_dataset
    ds = tmp_path / "copy"
    shutil.copytree(root, ds)
    bench = {
        "bench": "labels",
        "seconds": 123.0,
        "tracks": [{"backend": "synthetic (grid)", "task": "all", "delta_avg": 0.8125, "aj": 0.61},
                   {"backend": "synthetic (grid)", "task": "pick-place-v3", "delta_avg": 0.5, "aj": 0.4},
                   {"backend": "cotracker3", "task": "all", "delta_avg": 0.9, "aj": 0.7}],
        "depth": [{"backend": "dataset (metric)", "task": "all", "abs_rel": 0.0, "coverage": 1.0}],
    }
    write_card(ds, accuracy=bench)
    text = (ds / "README.md").read_text()
    assert "| synthetic (grid) | yes | 0.8125 | 0.61 |" in text  # pooled row, used by this dataset
    assert "| cotracker3 |  | 0.9 | 0.7 |" in text  # measured but not used here
    assert "seconds" not in text and "0.5 |" not in text.split("### Measured accuracy")[1].split("## Statistics")[0]  # per-task rows left out


def test_accuracy_never_from_the_working_directory(card_dataset, tmp_path, monkeypatch):
    """A bench-results/labels.json where the card is written (a checkout after some bench run)
    does not decide the card: only the table shipped with the package does."""
    import shutil

    from curation.describe import card

    root, _, _ = card_dataset
    ds = tmp_path / "copy"
    shutil.copytree(root, ds)
    (tmp_path / "bench-results").mkdir()
    bench = {"tracks": [{"backend": "stray-bench-backend", "task": "all", "delta_avg": 0.123}]}
    (tmp_path / "bench-results" / "labels.json").write_text(json.dumps(bench))
    monkeypatch.chdir(tmp_path)
    shipped, source = card._load_accuracy(None)
    write_card(ds)
    text = (ds / "README.md").read_text()
    assert "stray-bench-backend" not in text
    if shipped is None:  # no table committed yet: the card says so
        assert source == "" and "Not measured for this dataset" in text
    else:
        assert source == "curation/describe/label_accuracy.json"


def test_card_writers_replace_planted_symlinks_never_write_through_them(card_dataset, tmp_path):
    import shutil

    root, _, _ = card_dataset
    ds = tmp_path / "copy"
    shutil.copytree(root, ds)
    secret = tmp_path / "credentials"
    secret.write_text("[default]\naws_secret_access_key = do-not-touch\n")
    for planted in (ds / "README.md", ds / "card" / "sample_tracks.png"):
        planted.unlink()
        planted.symlink_to(secret)
    out = write_card(ds, accuracy={"depth": {"abs_rel": 0.07}})
    assert secret.read_text() == "[default]\naws_secret_access_key = do-not-touch\n"
    assert not (ds / "README.md").is_symlink() and (ds / "README.md").read_text().startswith("---\n")
    tracks = ds / "card" / "sample_tracks.png"
    assert str(tracks) in out["pictures"] and not tracks.is_symlink()
    assert Image.open(tracks).format == "PNG"
    assert not [p.name for p in ds.rglob(".tmp-*")]  # no temporaries left beside the card files

    # A card directory that is itself a link elsewhere is refused.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(ds / "card")
    (ds / "card").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="symlink"):
        write_card(ds, accuracy={"depth": {"abs_rel": 0.07}})
    assert list(elsewhere.iterdir()) == []
