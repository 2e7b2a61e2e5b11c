"""What every tracker shares: the tracker interface, query grids, input checks, and
`track_anchors` for trackers without a batched one (see labelers/tracking/__init__.py)."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Tracker(Protocol):
    name: str

    def __call__(self, frames: np.ndarray, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def grid_queries(height: int, width: int, grid: int = 20) -> np.ndarray:
    """A grid x grid lattice of query points at cell centres, row-major: K x 2 float32 (x, y)."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    xs = (np.arange(grid, dtype=np.float64) + 0.5) * (width / grid)
    ys = (np.arange(grid, dtype=np.float64) + 0.5) * (height / grid)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.float32)


def check_frames(frames, what: str = "frames") -> np.ndarray:
    """Stack and validate a clip: T x H x W x 3 uint8, T >= 1, one size for all frames."""
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        frames = list(frames)
        shapes = {np.asarray(f).shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"{what} have different sizes: {sorted(shapes)}")
        arr = np.stack([np.asarray(f) for f in frames]) if frames else np.zeros((0,), np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} must be T x H x W x 3, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError(f"{what}: no frames")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got {arr.dtype}")
    if arr.shape[1] < 8 or arr.shape[2] < 8:
        raise ValueError(f"{what}: image {arr.shape[2]}x{arr.shape[1]} is too small to track (< 8 px)")
    return arr


def check_queries(queries_xy) -> np.ndarray:
    q = np.asarray(queries_xy, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"queries must be K x 2 (x, y), got shape {q.shape}")
    return q


def inside_image(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., 2) pixel positions -> (...) bool: finite and within [0, W) x [0, H)."""
    x, y = xy[..., 0], xy[..., 1]
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x < width) & (y >= 0) & (y < height)


def track_anchors(tracker: Tracker, frames: np.ndarray, anchors: Sequence[int], queries_xy: np.ndarray, horizon: int):
    """N x K x horizon tracks for any tracker: its own batched `track_anchors`
    when it has one, else one call per anchor on the clip frames[t : t + horizon]."""
    if hasattr(tracker, "track_anchors"):
        return tracker.track_anchors(frames, anchors, queries_xy, horizon)
    frames = check_frames(frames)
    q = check_queries(queries_xy)
    N, K = len(anchors), q.shape[0]
    tracks = np.full((N, K, horizon, 2), np.nan, np.float32)
    visible = np.zeros((N, K, horizon), bool)
    for n, a in enumerate(anchors):
        clip = frames[int(a) : int(a) + horizon]
        tr, vis = tracker(clip, q)
        tracks[n, :, : clip.shape[0]] = tr
        visible[n, :, : clip.shape[0]] = vis
    return tracks, visible
