"""The "learned" tracker: the default LK tracker, then every solved step re-estimated by the
track refiner (labelers/tracking/refiner.py) against the anchor frame.

LK supplies a close start and the visibility verdict; the refiner removes the drift of the
chain, since each step is compared with the query's own appearance in the anchor frame rather
than with the previous step. Points the static test placed exactly at their query (nothing
moved there: labelers/tracking/lk_refined.py) are left as they are, so the refiner spends its
time on the part of the frame that moves. A correction shorter than `gate_px` is dropped: below
that the refiner is less precise than LK's sub-pixel solve (held out, 128 px: ungated the share
of moving points within 0.5 px falls from 0.239 to 0.184). Weights: a save_refiner file
(`weights=`, default the shipped DEFAULT_WEIGHTS), trained with `curate tracker train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from labelers.tracking.common import check_frames, check_queries
from labelers.tracking.lk_refined import RefinedLKTracker

# Frames whose features are computed in one forward pass (bounds the peak memory:
# 16 frames x C x H x W float32).
FEATURE_BATCH = 16
# Trained by `curate tracker train --out labelers/tracking/weights/refiner-128.safetensors` (15
# tasks, none of the bench's held-out ones, from three cameras at 128 px; the command and data are
# in the file's metadata).
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "refiner-128.safetensors"


def solved_steps(tracks: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """N K T bool: the steps after the query frame whose position LK solved (finite and not
    exactly the query, where the static test puts a point nothing moved at)."""
    at_query = (tracks == queries[None, :, None, :]).all(-1)
    solved = np.isfinite(tracks).all(-1) & ~at_query
    solved[..., 0] = False
    return solved


def group_by(*keys: np.ndarray) -> list[np.ndarray]:
    """Indices of equal key tuples (keys: S int arrays each), groups in lexicographic key order,
    indices ascending within a group."""
    order = np.lexsort(keys[::-1])  # stable; the first key is the primary one
    stacked = np.stack([k[order] for k in keys])
    cuts = np.flatnonzero((np.diff(stacked, axis=1) != 0).any(0)) + 1
    return np.split(order, cuts)


class LearnedTracker:
    """RefinedLKTracker + TrackRefiner. weights: path of the refiner's safetensors file;
    gate_px: corrections shorter than this are not applied (module docstring); lk_params:
    passed to the LK tracker (its defaults otherwise); threads: torch's intra-op threads
    (None: leave torch's setting)."""

    name = "learned"
    loads_model = True

    def __init__(self, weights: str | None = None, gate_px: float = 2.0, threads: int | None = None, **lk_params):
        from labelers.tracking.refiner import load_refiner

        if gate_px < 0:
            raise ValueError(f"gate_px must be >= 0, got {gate_px}")
        self.weights = str(weights or DEFAULT_WEIGHTS)
        self.gate_px = float(gate_px)
        self.model, self.record = load_refiner(self.weights)
        self.lk = RefinedLKTracker(**lk_params)
        self.threads = threads

    def __call__(self, frames: np.ndarray, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = check_frames(frames)
        tracks, vis = self.track_anchors(frames, np.array([0]), queries_xy, horizon=frames.shape[0])
        return tracks[0], vis[0]

    def track_anchors(self, frames: np.ndarray, anchors: Sequence[int], queries_xy: np.ndarray,
                      horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """As LKTracker.track_anchors (N K horizon 2 tracks, N K horizon visible), refined."""
        frames = check_frames(frames)
        q = check_queries(queries_xy)
        anchors = np.asarray(anchors, np.int64)
        tracks, visible = self.lk.track_anchors(frames, anchors, q, horizon)
        solved = solved_steps(tracks, q)
        if solved.any():
            tracks = self._refine(frames, anchors, q, tracks, solved)
        return tracks, visible

    def _refine(self, frames: np.ndarray, anchors: np.ndarray, q: np.ndarray, tracks: np.ndarray,
                solved: np.ndarray) -> np.ndarray:
        """Refine tracks[solved] (N K T 2) in one batch per (anchor, step) frame pair."""
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        n, k, j = np.nonzero(solved)
        fa, ft = anchors[n], anchors[n] + j
        needed = np.unique(np.concatenate([fa, ft]))
        out = tracks.copy()
        with torch.no_grad():
            feats = self._features(frames, needed)
            qt = torch.from_numpy(q).float()
            for m in group_by(fa, ft):
                a, t = int(fa[m[0]]), int(ft[m[0]])
                p = torch.from_numpy(tracks[n[m], k[m], j[m]]).float()
                refined, _ = self.model.refine(feats[a], feats[t], qt[k[m]], p)
                keep = (refined - p).norm(dim=-1) > self.gate_px
                out[n[m], k[m], j[m]] = torch.where(keep[:, None], refined, p).numpy()
        return out

    def _features(self, frames: np.ndarray, needed: np.ndarray) -> dict:
        """{frame index: C H W features} of the `needed` frames."""
        from labelers.tracking.refiner import frames_input

        feats = {}
        for i in range(0, needed.size, FEATURE_BATCH):
            idx = needed[i:i + FEATURE_BATCH]
            for f, fm in zip(idx, self.model.features(frames_input(frames[idx]))):  # B C H W
                feats[int(f)] = fm
        return feats
