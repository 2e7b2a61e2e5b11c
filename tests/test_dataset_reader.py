"""The trainer-facing reader: triplets carry exactly the source episode's frames and
actions at the anchor, the labels' motion slices, padded action chunks with their
mask; it opens a directory, a file:// URL and a published NAME@VERSION."""

from __future__ import annotations

import numpy as np

from test_pipeline_helpers import cached_run


def test_triplets_match_the_source_episodes(bridge_dir):
    from curation.store.reader import open_dataset
    from curation.sources.rlds import RLDSSource

    out, _ = cached_run("bridge-local", bridge_dir)
    ds = open_dataset(str(out))
    assert len(ds) == len(ds.episode_ids) == ds.info["counts"]["written"]
    assert ds.stats is not None and ds.shard_names[0] == "shard-00000"
    triplets = list(ds.iter_triplets(chunk=6))
    assert len(triplets) == ds.num_triplets() == 3 * len(ds)
    src = {ep.episode_id: ep for ep in RLDSSource(str(bridge_dir), "train").read(0, 6)}
    seen = 0
    for tr in triplets:
        ep = src.get(tr.episode_id)
        if ep is None:
            continue
        seen += 1
        t = tr.anchor
        np.testing.assert_array_equal(tr.images["image_0"], ep.frames["image_0"][t])
        assert sorted(tr.images) == ["image_0", "image_1", "image_2"]
        n = min(6, ep.num_steps - t)
        np.testing.assert_array_equal(tr.action_chunk[:n], ep.actions[t:t + n])
        assert tr.action_chunk_valid.tolist() == [True] * n + [False] * (6 - n)
        assert not tr.action_chunk[n:].any()
        np.testing.assert_array_equal(tr.proprio, ep.proprio[t])
        assert tr.language == ep.language
        K, T = 36, 6  # grid 6 x 6, horizon 6 (the test config)
        assert tr.motion["tracks_px"].shape == (K, T, 2) and tr.motion["visible"].shape == (K, T)
        assert tr.motion["in_range"].tolist() == [t + j < ep.num_steps for j in range(T)]
        # the query frame: points start on the grid, visible
        assert np.isfinite(tr.motion["tracks_px"][:, 0]).all() and tr.motion["visible"][:, 0].all()
        assert tr.motion["motion_image"].shape == (64, 64, 3)
        assert tr.intrinsics.shape == (4,) and tr.meta["backends"]["tracks"] == "lk"
    assert seen == 18  # 6 episodes x 3 anchors


def test_open_by_url_shard_subset_and_published_version(bridge_dir, tmp_path, monkeypatch):
    from curation.registry import publish as P
    from curation.store.reader import open_dataset

    out, _ = cached_run("bridge-local", bridge_dir)
    ds = open_dataset(f"file://{out}")
    sub = list(ds.iter_triplets(shards=["shard-00001"]))
    assert {t.meta["shard"] for t in sub} == {"shard-00001"} and len(sub) == ds.num_triplets(["shard-00001"]) == 9
    P.publish(str(out), "bridge", "0.1.0", to_url=str(tmp_path / "reg"))
    pub = open_dataset(f"{tmp_path / 'reg'}/bridge@0.1.0")
    assert pub.version == "0.1.0" and pub.episode_ids == ds.episode_ids
    a, b = next(pub.iter_triplets()), next(ds.iter_triplets())
    np.testing.assert_array_equal(a.motion["tracks_px"], b.motion["tracks_px"])
