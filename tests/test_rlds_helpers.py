"""Helpers for the rlds tests: small Open-X-style datasets written in the real TFDS format
through curation.sources.rlds_write (no tests here)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from curation.sources.rlds_write import write_rlds_dataset

H = W = 16


def image(shape=(H, W, 3), fmt="png"):
    return tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format=fmt)


def colour_frames(T: int, rgb=(200, 30, 10), episode: int = 0) -> np.ndarray:
    """T x H x W x 3 frames of one colour (plus a per-step ramp in the top-left pixel)."""
    f = np.empty((T, H, W, 3), np.uint8)
    f[:] = np.array(rgb, np.uint8)
    f[:, 0, 0, 0] = np.arange(T, dtype=np.uint8) + 10 * episode
    return f


def contributed_features(extra_obs=None, action=None, lang=True):
    """A contributed-style (flat action, step language) features dict."""
    obs = {"image": image(), "state": tfds.features.Tensor(shape=(3,), dtype=np.float32)}
    obs.update(extra_obs or {})
    steps = {
        "observation": tfds.features.FeaturesDict(obs),
        "action": action or tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
    }
    if lang:
        steps["language_instruction"] = tfds.features.Text()
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset(steps),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
    })


def contributed_episode(i: int, T: int = 4, actions=None, frames=None, lang: str | None = None, extra_obs=None):
    steps = {
        "observation": {"image": colour_frames(T, episode=i) if frames is None else frames,
                        "state": np.full((T, 3), i, np.float32), **(extra_obs or {})},
        "action": (np.arange(T * 4, dtype=np.float32).reshape(T, 4) + 100 * i) if actions is None else actions,
        "reward": np.zeros(T, np.float32),
        "is_first": np.arange(T) == 0,
    }
    if lang is not False:
        steps["language_instruction"] = [lang if lang is not None else f"task {i % 2}"] * T
    return {"steps": steps, "episode_metadata": {"file_path": f"/raw/ep{i}.h5"}}


def write_contributed(root: Path, name: str, n: int = 3, T: int = 4, episodes_per_shard=None, **kw) -> Path:
    return write_rlds_dataset(root, name, "0.1.0", contributed_features(),
                              {"train": [contributed_episode(i, T) for i in range(n)]},
                              episodes_per_shard=episodes_per_shard, **kw)


def zlib_floats(values) -> bytes:
    return zlib.compress(np.asarray(values, "<f4").tobytes())
