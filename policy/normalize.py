"""Normalisation of actions, proprio and motion with a dataset's statistics.

Two modes (LaMPConfig.normalization):
  mean_std:  y = (x - mean) / std
  quantile:  y = (x - (q01 + q99) / 2) / ((q99 - q01) / 2)   maps [q01, q99] to [-1, 1] (pi0/openpi style)
Dimensions with (near) zero spread are centred but not scaled (scale 1), so a constant
dimension (e.g. an unused gripper) never blows up.

Works on numpy arrays and torch tensors alike (plain arithmetic on broadcastable arrays).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

EPS = 1e-6


def center_scale(stat: Mapping[str, Any], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) float32 arrays from one stats entry {mean, std, q01, q99, ...}."""
    if mode == "mean_std":
        center = np.asarray(stat["mean"], np.float32)
        scale = np.asarray(stat["std"], np.float32)
    elif mode == "quantile":
        lo = np.asarray(stat.get("q01", stat.get("min")), np.float32)
        hi = np.asarray(stat.get("q99", stat.get("max")), np.float32)
        center, scale = (lo + hi) / 2.0, (hi - lo) / 2.0
    else:
        raise ValueError(f"unknown normalization {mode!r}")
    scale = np.where(np.abs(scale) < EPS, 1.0, scale).astype(np.float32)
    return center.astype(np.float32), scale


def normalize(x, center, scale):
    return (x - center) / scale


def unnormalize(y, center, scale):
    return y * scale + center


def stats_from_arrays(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics over all leading axes of x (... D), NaN ignored; same keys as stats.json."""
    flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    out = {}
    with np.errstate(all="ignore"):
        for key, fn in (("mean", np.nanmean), ("std", np.nanstd), ("min", np.nanmin), ("max", np.nanmax)):
            out[key] = [float(v) for v in np.nan_to_num(fn(flat, axis=0))]
        for key, q in (("q01", 1.0), ("q99", 99.0)):
            out[key] = [float(v) for v in np.nan_to_num(np.nanpercentile(flat, q, axis=0))]
    return out
