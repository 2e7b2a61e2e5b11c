"""stats.json values equal numpy on the arrays that were written; partial
statistics merge exactly; quantiles are within the documented sketch accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.describe.stats import QUANTILE_ALPHA, RunningStats, compute_stats
from curation.store.writer import stored_values
from test_curation_helpers import make_episode, make_labels, write_dataset


@pytest.fixture(scope="module")
def two_source_dataset(tmp_path_factory):
    """5 episodes of source A (7-d actions) and 3 of source B (4-d actions), 3 episodes a shard."""
    pairs = []
    for i in range(5):
        ep = make_episode(i, T=10 + i, dataset="source_a", language=["pick up the cup", "open the drawer"][i % 2])
        ep.actions = (ep.actions * (i + 1) + i).astype(np.float32)  # a spread of scales and offsets
        pairs.append((ep, make_labels(ep, speed_px=0.5 + i, seed=i)))
    for i in range(3):
        ep = make_episode(100 + i, T=12, dataset="source_b", action_dim=4, language="push the button")
        pairs.append((ep, make_labels(ep, speed_px=2.0, visibility=0.7, seed=10 + i)))
    root = write_dataset(tmp_path_factory.mktemp("stats") / "ds", pairs, episodes_per_shard=3)
    return root, pairs


def _quantile_ok(value: float, data: np.ndarray, q: float) -> bool:
    """The sketch returns the sample of rank floor(q * (n - 1)) within relative alpha."""
    exact = np.quantile(data, q, method="lower")
    return abs(value - exact) <= QUANTILE_ALPHA * abs(exact) + 1e-9


def test_action_and_proprio_stats_equal_numpy(two_source_dataset):
    root, pairs = two_source_dataset
    stats = compute_stats(str(root), progress=False)
    for source in ("source_a", "source_b"):
        eps = [ep for ep, _ in pairs if ep.provenance.dataset == source]
        for array, values in (("actions", np.concatenate([e.actions for e in eps])), ("proprio", np.concatenate([e.proprio for e in eps]))):
            st = stats["datasets"][source][array]
            v = values.astype(np.float64)
            assert st["dim"] == v.shape[1]
            assert st["count"] == [v.shape[0]] * v.shape[1]
            np.testing.assert_allclose(st["mean"], v.mean(0), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(st["std"], v.std(0), rtol=1e-9, atol=1e-12)
            np.testing.assert_array_equal(st["min"], v.min(0))
            np.testing.assert_array_equal(st["max"], v.max(0))
            for d in range(v.shape[1]):
                assert _quantile_ok(st["q01"][d], v[:, d], 0.01), (source, array, d)
                assert _quantile_ok(st["q99"][d], v[:, d], 0.99), (source, array, d)


def test_motion_stats_equal_numpy(two_source_dataset):
    root, pairs = two_source_dataset
    stats = compute_stats(str(root), progress=False)
    labs = [lab for ep, lab in pairs if ep.provenance.dataset == "source_a"]
    deltas, d3, depth = [], [], []
    for lab in labs:  # the values as stored (fixed point, schemas/dataset.py): what the statistics read
        tracks, points = stored_values("tracks_px", lab.tracks_px), stored_values("points_cam_m", lab.points_cam_m)
        ok = lab.visible & lab.in_range[:, None, :]
        both = ok[:, :, 1:] & ok[:, :, :1]
        deltas.append((tracks[:, :, 1:] - tracks[:, :, :1])[both])
        v3 = lab.valid_3d
        d3.append((points[:, :, 1:] - points[:, :, :1])[v3[:, :, 1:] & v3[:, :, :1]])
        depth.append(stored_values("depth_track_m", lab.depth_m)[v3])
    for name, values in (("motion/tracks_px_delta", np.concatenate(deltas)), ("motion/points_cam_m_delta", np.concatenate(d3)),
                         ("motion/depth_track_m", np.concatenate(depth)[:, None])):
        st = stats["datasets"]["source_a"][name]
        v = values.astype(np.float64)
        assert st["count"] == [len(v)] * v.shape[1], name
        np.testing.assert_allclose(st["mean"], v.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st["std"], v.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st["max"], v.max(0), rtol=1e-7)
    # tracks move along +x only: y displacement is exactly zero
    st = stats["datasets"]["source_a"]["motion/tracks_px_delta"]
    assert st["min"][1] == st["max"][1] == 0.0
    assert st["max"][0] > 0


def test_counts_and_written_file(two_source_dataset):
    root, pairs = two_source_dataset
    stats = compute_stats(str(root), progress=False)
    c = stats["counts"]
    assert c["episodes"] == 8
    assert c["frames"] == sum(ep.num_steps for ep, _ in pairs)
    assert c["anchors"] == sum(lab.num_anchors for _, lab in pairs)
    assert c["per_dataset"] == {"source_a": 5, "source_b": 3}
    assert c["per_instruction"] == {"pick up the cup": 3, "push the button": 3, "open the drawer": 2}
    assert stats["datasets"]["source_b"]["actions"]["dim"] == 4
    assert stats["datasets"]["source_a"]["splits"] == {"train": 5}
    on_disk = json.loads((root / "stats.json").read_text())
    assert on_disk["counts"] == c
    assert on_disk["datasets"]["source_a"]["actions"]["mean"] == pytest.approx(stats["datasets"]["source_a"]["actions"]["mean"])


def test_partial_statistics_merge_exactly():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(5000, 3)) * np.array([1.0, 100.0, 1e-3])
    data[::7, 1] = np.nan  # ignored per element
    whole = RunningStats(3)
    whole.update(data)
    merged = RunningStats(3)
    for part in np.array_split(data, 7):
        p = RunningStats(3)
        p.update(part)
        merged.merge(p)
    a, b = whole.to_dict(), merged.to_dict()
    finite = [data[np.isfinite(data[:, d]), d] for d in range(3)]
    assert a["count"] == b["count"] == [len(f) for f in finite]
    np.testing.assert_allclose(b["mean"], [f.mean() for f in finite], rtol=1e-12)
    np.testing.assert_allclose(b["std"], [f.std() for f in finite], rtol=1e-10)
    assert a["q01"] == b["q01"] and a["q99"] == b["q99"]  # the sketch merges exactly too
    for d in range(3):
        assert _quantile_ok(b["q01"][d], finite[d], 0.01)
        assert _quantile_ok(b["q99"][d], finite[d], 0.99)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        compute_stats(str(tmp_path), progress=False)
