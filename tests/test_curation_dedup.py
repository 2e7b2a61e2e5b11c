"""Near-duplicate detection: exact and perceptual pairs, no false pairs, order
independence, and the real Bridge fixture whose train and val splits hold the
same 25 episodes."""

from __future__ import annotations

import dataclasses
import pickle
import random
import time

import numpy as np
import pytest

from curation.selection.dedup import DedupConfig, Fingerprint, find_duplicates, fingerprint, normalise_language
from test_curation_helpers import make_episode


def _copy(ep, split="val", index=None, language=None, noise=0, seed=0):
    prov = dataclasses.replace(ep.provenance, split=split, episode_index=ep.provenance.episode_index if index is None else index)
    frames = {k: v.copy() for k, v in ep.frames.items()}
    if noise:
        rng = np.random.default_rng(seed)
        frames = {k: np.clip(v.astype(int) + rng.integers(-noise, noise + 1, v.shape), 0, 255).astype(np.uint8) for k, v in frames.items()}
    return dataclasses.replace(ep, provenance=prov, frames=frames, language=ep.language if language is None else language)


def _fps(eps):
    return {e.episode_id: fingerprint(e) for e in eps}


def test_fingerprint_is_small_and_picklable():
    fp = fingerprint(make_episode(0, T=16))
    assert len(fp.phashes) == 3 and all(0 <= h < 2**64 for h in fp.phashes)
    assert len(pickle.dumps(fp)) < 600
    assert pickle.loads(pickle.dumps(fp)) == fp
    assert normalise_language("  Put the CUP, in the sink! ") == "put the cup in the sink"


def test_exact_duplicate_keeps_smallest_key():
    a = make_episode(3)
    b = _copy(a, split="val", language="Put the red block in the bowl.")  # same start frames, same normalised language
    pairs = find_duplicates(_fps([b, a]))
    assert pairs == [pairs[0]] and pairs[0].kind == "exact" and pairs[0].distance == 0
    assert (pairs[0].kept, pairs[0].dropped) == (a.episode_id, b.episode_id)  # "train" < "val"


def test_same_frames_other_language_is_perceptual_not_exact():
    a = make_episode(3)
    b = _copy(a, language="open the drawer")
    pairs = find_duplicates(_fps([a, b]))
    assert [(p.kind, p.distance) for p in pairs] == [("perceptual", 0)]
    assert find_duplicates(_fps([a, b]), DedupConfig(perceptual_same_language=True)) == []
    assert find_duplicates(_fps([a, b]), DedupConfig(perceptual=False)) == []


def test_perceptual_duplicate_under_pixel_noise():
    a = make_episode(5)
    b = _copy(a, noise=4, seed=1)  # re-encoded copy: no byte equality
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa.start_hash != fb.start_hash
    pairs = find_duplicates({a.episode_id: fa, b.episode_id: fb}, DedupConfig(max_hamming=10))
    assert len(pairs) == 1 and pairs[0].kind == "perceptual" and pairs[0].distance <= 10
    assert pairs[0].kept == a.episode_id
    assert find_duplicates({a.episode_id: fa, b.episode_id: fb}, DedupConfig(enabled=False)) == []


def test_look_alike_scene_with_other_actions_is_not_a_duplicate():
    """Distinct demos of one task in a look-alike scene (simulation, a fixed lab set-up) share
    perceptual hashes but not their action trajectories: they are kept."""
    a = make_episode(5)
    other = np.random.default_rng(99).normal(0, 0.1, size=a.actions.shape).astype(np.float32)
    b = dataclasses.replace(_copy(a, noise=2, seed=1), actions=other)
    assert find_duplicates(_fps([a, b])) == []
    assert [p.kind for p in find_duplicates(_fps([a, b]), DedupConfig(max_action_distance=None))] == ["perceptual"]
    # a copy whose actions went through a lossy round trip is still a duplicate
    c = dataclasses.replace(_copy(a, noise=2, seed=2), actions=a.actions.astype(np.float16).astype(np.float32))
    assert [p.kind for p in find_duplicates(_fps([a, c]))] == ["perceptual"]
    # other action dimension: never the same recording
    d = dataclasses.replace(_copy(a, noise=2, seed=3), actions=a.actions[:, :4].copy())
    assert find_duplicates(_fps([a, d])) == []


def test_distinct_episodes_are_not_duplicates():
    eps = [make_episode(i, T=12, language="same task for all") for i in range(12)]
    assert find_duplicates(_fps(eps)) == []


def test_order_independent_and_groups_keep_one():
    base = [make_episode(i, T=12) for i in range(6)]
    copies = [_copy(base[1], split="val"), _copy(base[1], split="zz"), _copy(base[4], split="val", noise=3)]
    fps = _fps(base + copies)
    expected = find_duplicates(fps)
    assert len(expected) == 3
    assert {p.kept for p in expected} == {base[1].episode_id, base[4].episode_id}
    items = list(fps.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert find_duplicates(dict(items)) == expected


def test_scales_to_many_fingerprints():
    """50k fingerprints with random hashes and 40 planted near duplicates
    (<= 6 flipped bits): the banded search finds exactly the planted pairs."""
    rng = np.random.default_rng(0)
    n = 50_000
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64)
    fps = {}
    for i in range(n):
        fps[f"e{i:06d}"] = Fingerprint(f"e{i:06d}", ("d", "1", "train", i), f"task {i}", f"s{i}", tuple(int(h) for h in hashes[i]), 10)
    planted = set()
    for j, i in enumerate(rng.choice(n, 40, replace=False)):
        h = list(fps[f"e{i:06d}"].phashes)
        for bit in rng.choice(192, int(rng.integers(1, 7)), replace=False):
            h[bit // 64] ^= 1 << int(bit % 64)
        fps[f"x{j:03d}"] = Fingerprint(f"x{j:03d}", ("d", "1", "val", j), "other", f"t{j}", tuple(h), 10)
        planted.add((f"e{i:06d}", f"x{j:03d}"))
    t0 = time.perf_counter()
    pairs = find_duplicates(fps, DedupConfig(max_hamming=10))
    seconds = time.perf_counter() - t0
    assert {(p.kept, p.dropped) for p in pairs} == planted
    assert all(p.kind == "perceptual" and 1 <= p.distance <= 6 for p in pairs)
    assert seconds < 60, f"{seconds:.1f} s for {len(fps)} fingerprints"


@pytest.fixture(scope="module")
def bridge_fingerprints(bridge_dir):
    from curation.sources.rlds import read_episodes

    fps = {}
    for split in ("train", "val"):
        for ep in read_episodes(str(bridge_dir), split=split):
            fps[ep.episode_id] = fingerprint(ep)
    return fps


def test_bridge_train_and_val_hold_the_same_25_episodes(bridge_fingerprints):
    fps = bridge_fingerprints
    assert len(fps) == 50
    pairs = find_duplicates(fps)
    assert len(pairs) == 25
    assert all(p.kind == "exact" for p in pairs)
    assert {fps[p.kept].key[2] for p in pairs} == {"train"}
    assert {fps[p.dropped].key[2] for p in pairs} == {"val"}
    assert len({p.kept for p in pairs}) == 25
    train_only = {k: v for k, v in fps.items() if v.key[2] == "train"}
    assert find_duplicates(train_only) == []  # 25 distinct episodes: no false pairs
