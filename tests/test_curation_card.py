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


def _bench_result() -> dict:
    """A `curate bench labels` result: per label, rows per backend and task, and what each row
    was labelled with (cli/bench/labels.py: TRACKERS_SCORED, FLOW_SCORED)."""
    lk = {"backend": "lk", "params": {}, "frame_step": 1}
    hybrid = {"backend": "lk", "params": {"mode": "hybrid"}, "frame_step": 1}
    dataset_depth = {"backend": "dataset", "params": {}}
    return {
        "bench": "labels",
        "seconds": 123.0,
        "tracks": [{"backend": "lk (default: refined)", "task": "all", "delta_avg": 0.8125, "aj": 0.61},
                   {"backend": "lk (default: refined)", "task": "pick-place-v3", "delta_avg": 0.5, "aj": 0.4},
                   {"backend": "lk (default: refined) [gap 4]", "task": "all", "delta_avg": 0.7, "aj": 0.5},
                   {"backend": "lk (hybrid)", "task": "all", "delta_avg": 0.75, "aj": 0.55},
                   {"backend": "cotracker", "task": "all", "delta_avg": 0.9, "aj": 0.7}],
        "flow": [{"backend": "dis (fine)", "task": "all", "epe_px": 0.125},
                 {"backend": "dis (medium)", "task": "all", "epe_px": 0.25},
                 {"backend": "dis (fast)", "task": "all", "epe_px": 0.5},
                 {"backend": "dis (fast) [gap 4]", "task": "all", "epe_px": 1.5}],
        "sceneflow": [{"backend": "lk (default: refined) + dataset depth", "task": "all", "median_epe3d_mm": 3.5},
                      {"backend": "true tracks + dataset depth", "task": "all", "median_epe3d_mm": 1.25}],
        "depth": [{"backend": "dataset (metric)", "task": "all", "abs_rel": 0.0, "coverage": 1.0}],
        "labelled_with": {
            "tracks": {"lk (default: refined)": {"tracker": lk},
                       "lk (default: refined) [gap 4]": {"tracker": {**lk, "frame_step": 4}},
                       "lk (hybrid)": {"tracker": hybrid},
                       "cotracker": {"tracker": {"backend": "cotracker", "params": {"repo": "/r", "checkpoint": "/c"}, "frame_step": 1}}},
            "flow": {"dis (fine)": {"flow": {"backend": "dis", "params": {"preset": "fine"}, "gap": 1}},
                     "dis (medium)": {"flow": {"backend": "dis", "params": {"preset": "medium"}, "gap": 1}},
                     "dis (fast)": {"flow": {"backend": "dis", "params": {"preset": "fast"}, "gap": 1}},
                     "dis (fast) [gap 4]": {"flow": {"backend": "dis", "params": {"preset": "fast"}, "gap": 4}}},
            "sceneflow": {"lk (default: refined) + dataset depth": {"tracker": lk, "depth": dataset_depth}},
            "depth": {"dataset (metric)": {"depth": dataset_depth}},
        },
    }


def _labelled_dataset(root, labels: dict, depth: bool = True):
    """A dataset whose dataset.json records `labels` (LabelConfig fields) and whose manifest
    records the backends an EpisodeLabeler with them names."""
    from labelers.episode_labeler import LabelConfig

    c = LabelConfig.from_dict(labels)
    pairs = []
    for i in range(2):
        ep = make_episode(i, T=12)
        lab = make_labels(ep, seed=i)
        lab.backends = {"tracks": c.tracker, "flow": c.flow, **({"depth": c.depth} if depth else {})}
        pairs.append((ep, lab))
    root = write_dataset(root, pairs)
    info = json.loads((root / "dataset.json").read_text())
    info["config"] = {"labels": c.to_dict()}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def _used_rows(text: str) -> set[str]:
    """The backends of the accuracy rows marked used."""
    section = text.split("### Measured accuracy")[1].split("## Statistics")[0]
    return {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("|") and "| yes |" in line}


def test_accuracy_rows_marked_by_backend_and_parameters(tmp_path):
    """Two datasets labelled differently mark exactly their own rows: backend, parameters (the
    constructor's defaults filled in, so {} and {"preset": "fine"} are the same DIS), the flow gap
    and the frame rate tracked at; a backend the manifest does not record is not marked."""
    bench = _bench_result()
    a = _labelled_dataset(tmp_path / "a", {"tracker": "lk", "flow": "dis"})
    b = _labelled_dataset(tmp_path / "b", {"tracker": "lk", "tracker_params": {"mode": "hybrid"}, "flow": "dis",
                                            "flow_params": {"preset": "fast"}, "flow_gap": 4}, depth=False)
    write_card(a, accuracy=bench)
    write_card(b, accuracy=bench)
    text_a, text_b = (a / "README.md").read_text(), (b / "README.md").read_text()
    assert _used_rows(text_a) == {"lk (default: refined)", "dis (fine)", "lk (default: refined) + dataset depth", "dataset (metric)"}
    assert _used_rows(text_b) == {"lk (hybrid)", "dis (fast) [gap 4]"}
    assert "| lk (default: refined) | yes | 0.8125 | 0.61 |" in text_a  # pooled row, used by this dataset
    assert "| cotracker |  | 0.9 | 0.7 |" in text_a  # measured but not used here
    assert "seconds" not in text_a and "0.5 |" not in text_a.split("### Measured accuracy")[1].split("## Statistics")[0].split("**flow**")[0]  # per-task rows left out


def test_ground_truth_labels_mark_no_labeler_row(tmp_path):
    bench = _bench_result()
    root = _labelled_dataset(tmp_path / "gt", {"motion_source": "ground_truth", "flow": ""})
    manifest_backends = {"tracks": "ground_truth", "depth": "ground_truth", "points_3d": "ground_truth"}
    import pyarrow.parquet as pq

    table = pq.read_table(root / "manifest.parquet")
    rows = table.to_pylist()
    for r in rows:
        r["backends"] = json.dumps(manifest_backends)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), root / "manifest.parquet")
    write_card(root, accuracy=bench)
    assert _used_rows((root / "README.md").read_text()) == set()


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
