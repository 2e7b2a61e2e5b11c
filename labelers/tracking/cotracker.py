"""CoTracker3 behind the tracker interface of labelers/tracking/common.py.

    tracker = CoTrackerTracker(repo="/path/to/co-tracker", checkpoint="/path/scaled_offline.pth")
    tracks_px, visible = tracker(frames, queries_xy)       # K x T x 2, K x T

Loading: `torch.hub.load(repo, "cotracker3_offline" | "cotracker3_online",
source="local" | "github", pretrained=False)` builds the predictor, then the
local checkpoint's state dict is loaded into `predictor.model` (nothing is
downloaded; the code is CC-BY-NC and is never vendored here).

The documented predictor call (facebookresearch/co-tracker, predictor.py):
- offline: predictor(video B T 3 H W float 0..255, queries=B N 3 float (t, x, y),
  backward_tracking=bool) -> (tracks B T N 2, visibility B T N bool)
- online: predictor(video_chunk=..., is_first_step=True, queries=...) once,
  then predictor(video_chunk=video[:, i : i + 2 * step]) for i = 0, step, ...;
  each call returns the tracks of every frame seen so far.
CoTracker puts pixel centres at integer coordinates (its rescaling is
align_corners=True), we at +0.5: we subtract 0.5 going in and add it back.
Queries must be float (integer queries give wrong results). Queries not on
frame 0 need backward_tracking=True with the offline model.

`predictor` injects any callable with that signature (tests use a fake).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from labelers.tracking.common import check_frames, check_queries, inside_image


class CoTrackerTracker:
    name = "cotracker"
    loads_model = True  # building it loads the network: config checks read its signature instead

    def __init__(
        self,
        repo: Optional[str] = None,
        checkpoint: Optional[str] = None,
        variant: str = "offline",
        source: str = "local",
        device: str = "cpu",
        online_checkpoint: Optional[str] = None,
        online_above_frames: int = 0,
        predictor=None,
    ):
        """variant: "offline" or "online" (`checkpoint` is that variant's weights, e.g.
        scaled_offline.pth / scaled_online.pth). With `online_checkpoint` and
        online_above_frames > 0, clips longer than that run through the online model
        (the offline model holds the whole clip in memory and runs out on long episodes)."""
        if variant not in ("offline", "online"):
            raise ValueError(f"CoTracker variant must be 'offline' or 'online', got {variant!r}")
        if online_above_frames > 0 and variant == "offline" and online_checkpoint is None and predictor is None:
            raise ValueError("online_above_frames needs online_checkpoint (the online model's weights)")
        self.variant = variant
        self.device = device
        self.online_above_frames = int(online_above_frames)
        self._repo, self._checkpoint, self._source = repo, checkpoint, source
        self._online_checkpoint = online_checkpoint if variant == "offline" else checkpoint
        self._predictors: dict[str, object] = {}
        if predictor is not None:
            self._predictors[variant] = predictor
        elif repo is None or checkpoint is None:
            raise ValueError("CoTracker needs `repo` (a local clone or 'facebookresearch/co-tracker') and `checkpoint` (a local .pth)")
        else:
            self._predictor(variant)  # load now: fail early, load once

    def _predictor(self, variant: str):
        if variant in self._predictors:
            return self._predictors[variant]
        import torch

        if self._repo is None or self._checkpoint is None:
            raise ValueError(f"CoTracker {variant} model requested but no repo/checkpoint configured")
        entry = "cotracker3_offline" if variant == "offline" else "cotracker3_online"
        ckpt = self._checkpoint if variant == self.variant else self._online_checkpoint
        if ckpt is None:
            raise ValueError(f"CoTracker {variant} model requested but no checkpoint for it is configured")
        pred = torch.hub.load(self._repo, entry, source=self._source, pretrained=False)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors only: never unpickle code
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        pred.model.load_state_dict(state)
        pred = pred.to(self.device).eval()
        self._predictors[variant] = pred
        return pred

    def __call__(self, frames: np.ndarray, queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = check_queries(queries_xy)
        txy = np.concatenate([np.zeros((q.shape[0], 1), np.float32), q], axis=1)
        return self.track(frames, txy)

    def track(self, frames: np.ndarray, queries_txy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Queries (t, x, y) on any frame t: K x 3 -> tracks K x T x 2, visible K x T."""
        import torch

        frames = check_frames(frames)
        T, H, W = frames.shape[:3]
        q = np.asarray(queries_txy, np.float32)
        if q.ndim != 2 or q.shape[1] != 3:
            raise ValueError(f"CoTracker queries must be K x 3 (t, x, y), got {q.shape}")
        K = q.shape[0]
        tracks = np.full((K, T, 2), np.nan, np.float32)
        visible = np.zeros((K, T), bool)
        t_idx = np.rint(q[:, 0]).astype(np.int64)
        ok = inside_image(q[:, 1:], H, W) & (t_idx >= 0) & (t_idx < T)
        if not ok.any():
            return tracks, visible
        qq = q[ok].copy()
        qq[:, 0] = t_idx[ok]
        qq[:, 1:] -= 0.5  # to CoTracker's integer-centred pixels
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().to(self.device)  # 1 T 3 H W
        queries = torch.from_numpy(qq)[None].float().to(self.device)  # 1 N 3
        online = self.variant == "online" or (self.online_above_frames and T > self.online_above_frames)
        with torch.no_grad():
            if online:
                tr, vis = self._run_online(video, queries)
            else:
                tr, vis = self._predictor("offline")(video, queries=queries, backward_tracking=bool((qq[:, 0] > 0).any()))
        tr = tr[0].float().cpu().numpy()  # T N 2
        vis = vis[0].cpu().numpy().astype(bool)  # T N
        if tr.shape != (T, qq.shape[0], 2) or vis.shape != (T, qq.shape[0]):
            raise RuntimeError(f"CoTracker returned tracks {tr.shape} / visibility {vis.shape}, expected ({T}, {qq.shape[0]}, 2)")
        tracks[ok] = tr.transpose(1, 0, 2) + 0.5
        visible[ok] = vis.T & inside_image(tracks[ok], H, W)
        return tracks, visible

    def _run_online(self, video, queries):
        import torch

        pred = self._predictor("online")
        T = video.shape[1]
        step = int(getattr(pred, "step", 8))
        pred(video_chunk=video[:, : 2 * step], is_first_step=True, queries=queries)
        tr = vis = None
        for i in range(0, max(T - step, 1), step):
            tr, vis = pred(video_chunk=video[:, i : i + 2 * step])
        # The online model reports the frames seen so far; pad a short tail with the last estimate.
        if tr.shape[1] < T:
            pad = T - tr.shape[1]
            tr = torch.cat([tr, tr[:, -1:].expand(-1, pad, -1, -1)], 1)
            vis = torch.cat([vis, torch.zeros_like(vis[:, -1:]).expand(-1, pad, -1)], 1)
        return tr[:, :T], vis[:, :T]
