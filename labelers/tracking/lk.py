"""Pyramidal Lucas-Kanade (OpenCV) with a forward-backward consistency check deciding
visibility; the CPU default tracker. Mode "chain" (default) tracks frame to frame (t -> t+1),
all anchors of a frame pair in one LK call; mode "anchor" re-solves each step against the
anchor frame, starting from the chained estimate (no drift, re-acquires after short
occlusions, but loses points whose appearance changes); "hybrid" combines both. The default
was chosen by `curate bench labels` on Meta-World ground truth."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from labelers.tracking.common import check_frames, check_queries, inside_image


class LKTracker:
    """Pyramidal Lucas-Kanade with a forward-backward check.

    win_size: LK window (pixels, odd); max_level: pyramid levels above the
    image; fb_threshold_px: a point whose forward-then-backward track misses
    its start by more than this is declared not visible; mode: "chain",
    "anchor" or "hybrid" (see module docstring; hybrid = chain steps refined
    against the anchor frame where its template still matches, within
    refine_radius_px); color: solve on the RGB frames (OpenCV LK sums the
    channels) instead of grey, which separates e.g. a red arm from a brown
    table that look alike in grey. In "chain"/"hybrid" mode a point once lost
    stays not visible for the rest of the horizon (its position keeps the last
    LK estimate); in "anchor" mode visibility is decided afresh at every step.

    Defaults (chain, 11 px window, 2 pyramid levels, colour, 2 px FB) were
    chosen on Meta-World ground truth (`curate bench labels`, 3 tasks, 128 px):
    against the first cut (15 px, 3 levels, grey, 1 px) delta_avg 0.867 ->
    0.886, AJ 0.756 -> 0.792, moving points delta_avg 0.553 -> 0.577, at less
    CPU time; "hybrid" gained < 0.015 on moving points at 3-4x the cost.
    """

    name = "lk"
    loads_model = False  # labelers.backends.loads_model: building it loads no model

    def __init__(
        self,
        win_size: int = 11,
        max_level: int = 2,
        fb_threshold_px: float = 2.0,
        mode: str = "chain",
        iterations: int = 20,
        epsilon: float = 0.01,
        min_eig_threshold: float = 1e-4,
        refine_radius_px: float = 2.0,
        color: bool = True,
    ):
        import cv2

        if mode not in ("chain", "anchor", "hybrid"):
            raise ValueError(f"LK mode must be 'chain', 'anchor' or 'hybrid', got {mode!r}")
        self.win = (int(win_size), int(win_size))
        self.max_level = int(max_level)
        self.fb_threshold_px = float(fb_threshold_px)
        self.mode = mode
        self.refine_radius_px = float(refine_radius_px)
        self.color = bool(color)
        self.min_eig = float(min_eig_threshold)
        self.criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(iterations), float(epsilon))

    # -- OpenCV plumbing: OpenCV puts pixel centres at integers, we at +0.5.

    def pyramids(self, frames: np.ndarray) -> list:
        """The per-frame inputs LK works on: grey images, or the RGB frames themselves when
        `color` (OpenCV's Python binding does not accept prebuilt pyramids, so each solve
        builds its own)."""
        from labelers.flow import to_gray

        if self.color:
            return list(frames)
        return [to_gray(f) for f in frames]

    def _lk(self, pyr0, pyr1, pts_xy: np.ndarray, guess_xy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One LK solve: M x 2 positions in frame 0 -> M x 2 in frame 1, status M bool."""
        import cv2

        p0 = (pts_xy - 0.5).astype(np.float32).reshape(-1, 1, 2)
        flags = 0
        p1 = None
        if guess_xy is not None:
            p1 = (guess_xy - 0.5).astype(np.float32).reshape(-1, 1, 2).copy()
            flags = cv2.OPTFLOW_USE_INITIAL_FLOW
        nxt, status, _ = cv2.calcOpticalFlowPyrLK(
            pyr0, pyr1, p0, p1, winSize=self.win, maxLevel=self.max_level,
            criteria=self.criteria, flags=flags, minEigThreshold=self.min_eig,
        )
        return nxt.reshape(-1, 2) + 0.5, status.reshape(-1).astype(bool)

    def _fb(self, pyr0, pyr1, pts_xy: np.ndarray, guess_xy: np.ndarray | None, h: int, w: int):
        """Forward solve plus backward check: (new positions, ok mask)."""
        fwd, st_f = self._lk(pyr0, pyr1, pts_xy, guess_xy)
        bwd, st_b = self._lk(pyr1, pyr0, fwd, pts_xy)
        err = np.sqrt(((bwd - pts_xy) ** 2).sum(-1))
        ok = st_f & st_b & (err < self.fb_threshold_px) & inside_image(fwd, h, w)
        return fwd, ok, st_f

    # -- public API

    @property
    def takes_gray_frames(self) -> bool:
        """track_anchors accepts the clip's grey frames (`pyramids=`) instead of converting again."""
        return not self.color

    def __call__(self, frames: np.ndarray, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = check_frames(frames)
        tracks, vis = self.track_anchors(frames, np.array([0]), queries_xy, horizon=frames.shape[0])
        return tracks[0], vis[0]

    def track_anchors(
        self, frames: np.ndarray, anchors: Sequence[int], queries_xy: np.ndarray, horizon: int, pyramids: list | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track the same K queries from every anchor t over steps t .. t + horizon - 1.

        Returns tracks_px N x K x horizon x 2 (NaN past the end of the clip or
        for queries outside the image) and visible N x K x horizon.
        """
        frames = check_frames(frames)
        q = check_queries(queries_xy)
        anchors = np.asarray(anchors, dtype=np.int64)
        T, H, W = frames.shape[:3]
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if anchors.size and (anchors.min() < 0 or anchors.max() >= T):
            raise ValueError(f"anchors must lie in [0, {T}), got {anchors.min()}..{anchors.max()}")
        N, K = anchors.size, q.shape[0]
        tracks = np.full((N, K, horizon, 2), np.nan, np.float32)
        visible = np.zeros((N, K, horizon), bool)
        if N == 0 or K == 0:
            return tracks, visible
        q_in = inside_image(q, H, W)
        tracks[:, q_in, 0] = q[q_in]
        visible[:, q_in, 0] = True
        pyr = pyramids if pyramids is not None else self.pyramids(frames)
        if self.mode == "chain":
            self._chain(pyr, anchors, q, q_in, horizon, T, H, W, tracks, visible)
        elif self.mode == "anchor":
            for n, a in enumerate(anchors):
                self._anchor(pyr, int(a), q[q_in], horizon, T, H, W, tracks[n], visible[n], q_in)
        else:
            for n, a in enumerate(anchors):
                self._hybrid(pyr, int(a), q[q_in], horizon, T, H, W, tracks[n], visible[n], q_in)
        return tracks, visible

    def _hybrid(self, pyr, a, q, horizon, T, H, W, tracks, visible, q_in) -> None:
        """Frame-to-frame steps (visibility from their forward-backward check, sticky),
        each refined against the anchor frame where the anchor template still matches
        (its own forward-backward check passes and it stays near the chained estimate):
        chaining follows appearance change, the anchor refinement removes drift."""
        idx = np.flatnonzero(q_in)
        prev = q.copy()
        alive = np.ones(q.shape[0], bool)
        for j in range(1, min(horizon, T - a)):
            f = a + j
            step, ok_c, st_c = self._fb(pyr[f - 1], pyr[f], prev, None, H, W)
            step = np.where(st_c[:, None], step, prev)
            ref, ok_a, _ = self._fb(pyr[a], pyr[f], q, step, H, W)
            near = np.sqrt(((ref - step) ** 2).sum(-1)) < self.refine_radius_px
            p = np.where((ok_a & near)[:, None], ref, step)
            alive &= ok_c | ok_a
            tracks[idx, j] = p
            visible[idx, j] = alive
            prev = p

    def _chain(self, pyr, anchors, q, q_in, horizon, T, H, W, tracks, visible) -> None:
        """Frame-to-frame tracking, all active anchors of a frame pair in one LK call."""
        idx = np.flatnonzero(q_in)
        cur = np.repeat(q[idx][None], len(anchors), axis=0)  # N M 2
        alive = np.ones(cur.shape[:2], bool)
        for f in range(T - 1):
            act = np.flatnonzero((anchors <= f) & (f + 1 - anchors < horizon))
            if act.size == 0:
                continue
            p0 = cur[act].reshape(-1, 2)
            p1, ok, st = self._fb(pyr[f], pyr[f + 1], p0, None, H, W)
            p1 = np.where(st[:, None], p1, p0)  # a failed solve keeps the last position
            p1 = p1.reshape(act.size, -1, 2)
            ok = ok.reshape(act.size, -1)
            for i, n in enumerate(act):
                j = f + 1 - anchors[n]
                alive[n] &= ok[i]
                cur[n] = p1[i]
                tracks[n, idx, j] = p1[i]
                visible[n, idx, j] = alive[n]

    def _anchor(self, pyr, a, q, horizon, T, H, W, tracks, visible, q_in) -> None:
        """Anchor-to-frame tracking for one anchor: each step is solved against
        the anchor frame, initialised with a frame-to-frame step from the last
        estimate (keeps LK inside its basin on fast motion, without drift)."""
        idx = np.flatnonzero(q_in)
        prev = q.copy()
        for j in range(1, min(horizon, T - a)):
            f = a + j
            guess, st_c = self._lk(pyr[f - 1], pyr[f], prev)
            guess = np.where(st_c[:, None], guess, prev)
            p, ok, st = self._fb(pyr[a], pyr[f], q, guess, H, W)
            p = np.where(st[:, None], p, guess)
            tracks[idx, j] = p
            visible[idx, j] = ok
            prev = p
