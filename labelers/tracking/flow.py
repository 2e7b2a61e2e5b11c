"""A tracker that integrates dense optical flow (DIS) frame to frame, with a forward-backward
flow check; its cost does not grow with points or anchors."""

from __future__ import annotations

import numpy as np

from labelers.tracking.common import check_frames, check_queries, inside_image


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
    """Tracks by integrating dense optical flow frame to frame (DIS at its default preset unless
    told), with a forward-backward flow check for visibility. The flow of each frame pair is computed once
    per clip and shared by every anchor and point, so the cost does not grow with K or N."""

    name = "flow"
    loads_model = False  # labelers.backends.loads_model: building it loads no model
    takes_gray_frames = True  # track_anchors accepts the clip's grey frames (`pyramids=`)

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
