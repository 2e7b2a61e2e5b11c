"""Frames for the latent action model: episodes -> one uint8 frame store + (t, t+gap) pairs.

Everything here is in memory and knows nothing about where episodes came from; the CLI
reads them with the project's RLDS reader (curation.sources.rlds.read_episodes) and hands them over.
Frames are centre-cropped to a square and resized to the model's image size (INTER_AREA).

`moving_squares` makes episodes whose motion is a known latent: one square moving by a
per-step action (dx, dy) in pixels on a static textured background. Used by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from schemas.episode import Episode, EpisodeError, Provenance


def square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """T H W 3 uint8 -> T size size 3 uint8: centre crop to a square, then area resize."""
    import cv2

    T, H, W, _ = frames.shape
    s = min(H, W)
    y0, x0 = (H - s) // 2, (W - s) // 2
    frames = frames[:, y0:y0 + s, x0:x0 + s]
    if s == size:
        return np.ascontiguousarray(frames)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


@dataclass
class FrameStore:
    """Episodes' frames concatenated: frames F size size 3 uint8, starts[e] = first frame of
    episode e, lengths[e] its step count; actions[e] T x A float32 (for probes)."""

    frames: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    actions: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # provenance of each episode, for messages

    @property
    def num_episodes(self) -> int:
        return int(self.lengths.shape[0])

    def episode_frames(self, e: int) -> np.ndarray:
        return self.frames[self.starts[e]:self.starts[e] + self.lengths[e]]

    def pairs(self, gap: int, episodes: Iterable[int] | None = None) -> np.ndarray:
        """M x 3 int64 rows (episode, t, global frame index of t) for every t with t + gap < T."""
        if gap < 1:
            raise ValueError(f"gap must be >= 1, got {gap}")
        rows = []
        for e in range(self.num_episodes) if episodes is None else episodes:
            t = np.arange(max(int(self.lengths[e]) - gap, 0))
            rows.append(np.stack([np.full_like(t, e), t, self.starts[e] + t], 1))
        return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)

    def subset(self, episodes: Iterable[int]) -> "FrameStore":
        eps = list(episodes)
        return FrameStore.from_arrays(
            [self.episode_frames(e) for e in eps], [self.actions[e] for e in eps], [self.names[e] for e in eps]
        )

    @classmethod
    def from_arrays(cls, frames: list[np.ndarray], actions: list[np.ndarray], names: list[str]) -> "FrameStore":
        lengths = np.array([len(f) for f in frames], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        store = np.concatenate(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
        return cls(store, starts, lengths, list(actions), list(names))


def concat_stores(stores: Iterable[FrameStore]) -> FrameStore:
    """One store holding the episodes of all `stores`, in order (e.g. several tasks)."""
    frames, actions, names = [], [], []
    for st in stores:
        for e in range(st.num_episodes):
            frames.append(st.episode_frames(e))
            actions.append(st.actions[e])
            names.append(st.names[e])
    return FrameStore.from_arrays(frames, actions, names)


def episode_frames(episode: Episode, size: int, camera: str | None = None) -> np.ndarray:
    """The episode's frames of `camera` (default: primary) as T size size 3 uint8."""
    cam = camera or episode.primary_camera
    where = episode.provenance.describe()
    if cam not in episode.frames:
        raise EpisodeError(where, f"camera {cam!r} not in episode (has {sorted(episode.frames)})", stage="latent")
    if cam in episode.blank_cameras:
        raise EpisodeError(where, f"camera {cam!r} is blank in this episode", stage="latent")
    fr = episode.frames[cam]
    if fr.dtype != np.uint8 or fr.ndim != 4 or fr.shape[-1] != 3:
        raise EpisodeError(where, f"camera {cam!r}: expected T x H x W x 3 uint8, got {fr.shape} {fr.dtype}", stage="latent")
    return square_resize(fr, size)


def store_from_episodes(episodes: Iterable[Episode], size: int, camera: str | None = None, min_steps: int = 2) -> FrameStore:
    frames, actions, names = [], [], []
    for ep in episodes:
        if ep.num_steps < min_steps:
            continue  # no (t, t+gap) pair: contributes nothing
        frames.append(episode_frames(ep, size, camera))
        actions.append(np.asarray(ep.actions, np.float32))
        names.append(ep.provenance.describe())
    return FrameStore.from_arrays(frames, actions, names)


def moving_squares(
    num_episodes: int, steps: int = 24, size: int = 32, square: int = 6, max_speed: int = 2,
    num_squares: int = 3, seed: int = 0,
) -> list[Episode]:
    """Episodes of coloured squares over a fixed random-texture background, all pushed by
    the same action: the action at step t is the displacement (dx, dy) in pixels from frame t
    to t + 1, drawn uniformly from {-max_speed..max_speed}^2 and held for 2-5 steps.

    Several squares sharing one action make the motion, not any square's position, the
    cheapest thing for a bottleneck to describe. The squares wrap around the image edges
    (torus), so every recorded action is exactly the displacement that happened."""
    rng = np.random.default_rng(seed)
    background = (rng.random((size, size, 3)) * 60 + 40).astype(np.uint8)
    colours = np.array([[230, 60, 40], [40, 200, 70], [60, 90, 240], [240, 220, 50]], np.uint8)
    episodes = []
    for e in range(num_episodes):
        pos = rng.integers(0, size, size=(num_squares, 2))
        frames = np.zeros((steps, size, size, 3), np.uint8)
        actions = np.zeros((steps, 2), np.float32)
        vel, hold = np.zeros(2, np.int64), 0
        for t in range(steps):
            img = background.copy()
            for k, (x, y) in enumerate(pos):
                rows, cols = (np.arange(square) + y) % size, (np.arange(square) + x) % size
                img[np.ix_(rows, cols)] = colours[k % len(colours)]
            frames[t] = img
            if hold == 0:
                vel, hold = rng.integers(-max_speed, max_speed + 1, size=2), int(rng.integers(2, 6))
            hold -= 1
            actions[t] = vel
            pos = (pos + vel) % size
        prov = Provenance("moving_squares", "0.0.0", "train", e, file=f"seed={seed}")
        episodes.append(Episode(prov, "move the squares", {"image": frames}, actions, "square_delta_px", 10.0, "image"))
    return episodes
