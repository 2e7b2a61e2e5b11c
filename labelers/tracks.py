"""Point tracking: queries on the anchor frame, tracks and visibility over a horizon.

The tracker interface (every backend, `get_tracker(name, **params)`):

    tracker(frames, queries_xy) -> (tracks_px, visible)

    frames      T x H x W x 3 uint8 RGB; frame 0 is the query (anchor) frame
    queries_xy  K x 2 float pixels (x, y) on frame 0, pixel centres at (j + 0.5, i + 0.5)
    tracks_px   K x T x 2 float32 pixels, same convention (the schema's N K T 2 order)
    visible     K x T bool: the tracker's own verdict (occluded, lost or outside -> False)

Queries outside the image get NaN tracks and visible False (a masked result,
not an error). Backends may also offer `track_anchors(frames, anchors,
queries_xy, horizon)`, the same for many anchors of one episode at once
(N x K x horizon x 2, N x K x horizon; steps past the end NaN / False), which
the episode labeler prefers because it shares image pyramids between anchors.

Backends
- "lk": pyramidal Lucas-Kanade (OpenCV) with a forward-backward consistency
  check deciding visibility; the CPU default (in mode "chain" with the static-point
  test and re-solves of labelers/lk_refined.py). Mode "chain" (default) tracks
  frame to frame (t -> t+1), all anchors of a frame pair in one LK call;
  mode "anchor" re-solves each step against the anchor frame, starting from
  the chained estimate (no drift, re-acquires after short occlusions, but
  loses points whose appearance changes); "hybrid" combines both. The
  default was chosen by `curate bench labels` on Meta-World ground truth.
- "flow": integrates dense optical flow (DIS) frame to frame with a
  forward-backward flow check; its cost does not grow with points or anchors.
- "cotracker": CoTracker3 through torch.hub (labelers/cotracker.py).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

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


def bilinear_sample(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample an H x W x C field at pixel positions (M, 2) (centres at +0.5), bilinear,
    clamped at the border: M x C float32."""
    H, W = field.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0.0, W - 1.0)
    y = np.clip(xy[:, 1] - 0.5, 0.0, H - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2 if W > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2 if H > 1 else 0)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x1 = np.minimum(x0 + 1, W - 1)
    y1 = np.minimum(y0 + 1, H - 1)
    return ((field[y0, x0] * (1 - fx) + field[y0, x1] * fx) * (1 - fy) + (field[y1, x0] * (1 - fx) + field[y1, x1] * fx) * fy).astype(np.float32)


class FlowTracker:
    """Tracks by integrating dense optical flow frame to frame (default DIS medium), with a
    forward-backward flow check for visibility. The flow of each frame pair is computed once
    per clip and shared by every anchor and point, so the cost does not grow with K or N."""

    name = "flow"

    def __init__(self, flow: str = "dis", fb_threshold_px: float = 1.0, sticky: bool = True, **flow_params):
        from labelers.flow import get_flow_backend

        self.flow = get_flow_backend(flow, **flow_params)
        self.fb_threshold_px = float(fb_threshold_px)
        self.sticky = bool(sticky)

    def __call__(self, frames: np.ndarray, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = check_frames(frames)
        tracks, vis = self.track_anchors(frames, np.array([0]), queries_xy, horizon=frames.shape[0])
        return tracks[0], vis[0]

    def track_anchors(self, frames, anchors, queries_xy, horizon, pyramids=None):
        from labelers.flow import to_gray

        frames = check_frames(frames)
        q = check_queries(queries_xy)
        anchors = np.asarray(anchors, dtype=np.int64)
        T, H, W = frames.shape[:3]
        N, K = anchors.size, q.shape[0]
        tracks = np.full((N, K, horizon, 2), np.nan, np.float32)
        visible = np.zeros((N, K, horizon), bool)
        if N == 0 or K == 0:
            return tracks, visible
        grays = pyramids if pyramids is not None else [to_gray(f) for f in frames]
        last = int(min(T - 1, anchors.max() + horizon - 1))
        fwd = [self.flow.flow_gray(grays[f], grays[f + 1]) for f in range(last)]
        bwd = [self.flow.flow_gray(grays[f + 1], grays[f]) for f in range(last)]
        q_in = inside_image(q, H, W)
        idx = np.flatnonzero(q_in)
        tracks[:, idx, 0] = q[idx]
        visible[:, idx, 0] = True
        cur = np.repeat(q[idx][None], N, axis=0)  # N M 2
        alive = np.ones(cur.shape[:2], bool)
        for f in range(last):
            act = np.flatnonzero((anchors <= f) & (f + 1 - anchors < horizon))
            if act.size == 0:
                continue
            p0 = cur[act].reshape(-1, 2)
            p1 = p0 + bilinear_sample(fwd[f], p0)
            back = p1 + bilinear_sample(bwd[f], p1)
            ok = (np.sqrt(((back - p0) ** 2).sum(-1)) < self.fb_threshold_px) & inside_image(p1, H, W)
            p1 = p1.reshape(act.size, -1, 2)
            ok = ok.reshape(act.size, -1)
            for i, n in enumerate(act):
                j = f + 1 - anchors[n]
                alive[n] = (alive[n] & ok[i]) if self.sticky else ok[i]
                cur[n] = p1[i]
                tracks[n, idx, j] = p1[i]
                visible[n, idx, j] = alive[n]
        return tracks, visible



TRACKERS: dict[str, Callable[..., Tracker]] = {"lk": LKTracker, "flow": FlowTracker}


def get_tracker(name: str, **params) -> Tracker:
    """The tracker registered under `name` ("lk", "flow", "cotracker"), built with `params`.
    "lk" is labelers/lk_refined.RefinedLKTracker (LK plus a static-point test and re-solves
    against older frames) in mode "chain", the plain LKTracker in the other modes."""
    if name == "lk" and params.get("mode", "chain") == "chain":
        from labelers.lk_refined import RefinedLKTracker

        return RefinedLKTracker(**params)
    if name == "cotracker":
        from labelers.cotracker import CoTrackerTracker

        return CoTrackerTracker(**params)
    try:
        factory = TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose one of {sorted([*TRACKERS, 'cotracker'])}") from None
    return factory(**params)


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

