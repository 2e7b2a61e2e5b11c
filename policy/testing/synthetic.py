"""A synthetic curated dataset in memory, with the reader's interface (`shard_names`, `stats`,
`manifest`, `info`, `iter_triplets`), for tests and benchmarks when no curated dataset is at hand.

Each episode: a coloured square on a grey table moves with a constant pixel velocity chosen by
its instruction ("move the block left" ...). The motion labels (tracks, depth, camera points)
follow the square exactly, the action is that velocity (+ a gripper channel) and the proprio is
the square's position: learnable from image + language, and the motion is informative about the
action, which is what the dual-expert policy should exploit.

latent=True adds latent action tokens (what `labels.latent_checkpoint` adds to curated data): L
tokens from a codebook of LATENT_CODES, fixed by the direction word (so they carry the action),
and invalid (-1, latent_valid False) on each episode's last anchor, which has no frame t + gap.
"""

from __future__ import annotations

import dataclasses

from typing import Iterator, Optional, Sequence

import numpy as np

from schemas.triplet import ALWAYS_READ, Triplet

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
LATENT_TOKENS, LATENT_CODES, LATENT_DIM = 4, 8, 8  # L, V, c: the `small` latent action model's sizes


class SyntheticDataset:
    def __init__(self, num_shards: int = 4, episodes_per_shard: int = 2, anchors_per_episode: int = 8,
                 size: int = 32, grid: int = 6, horizon: int = 8, chunk: int = 10, action_dim: int = 4,
                 seed: int = 0, name: str = "synthetic", version: str = "0.1.0", latent: bool = False):
        self.latent = latent
        self.size, self.grid, self.horizon, self.chunk, self.action_dim = size, grid, horizon, chunk, action_dim
        self.name, self.version = name, version
        self.seed = seed
        self.shard_names = [f"shard-{i:05d}" for i in range(num_shards)]
        self._episodes = {s: [(si, e) for e in range(episodes_per_shard)] for si, s in enumerate(self.shard_names)}
        self.anchors_per_episode = anchors_per_episode
        self.info = {"name": name, "version": version}
        self._triplets = {s: list(self._make_shard(s)) for s in self.shard_names}
        self.stats = self._compute_stats()

    # ---------------------------------------------------------------- generation
    def _make_shard(self, shard: str) -> Iterator[Triplet]:
        for si, e in self._episodes[shard]:
            rng = np.random.default_rng([self.seed, si, e])
            word = list(DIRECTIONS)[int(rng.integers(4))]
            vel = np.array(DIRECTIONS[word], np.float32) * float(rng.uniform(0.5, 1.0))  # px / step
            start = rng.uniform(self.size * 0.3, self.size * 0.7, size=2).astype(np.float32)
            colour = rng.integers(60, 255, size=3).astype(np.uint8)
            eid = f"syn-{si}-{e}"
            for a in range(self.anchors_per_episode):
                tr = self._triplet(eid, a, start + vel * a, vel, colour, word)
                if self.latent:
                    tr.motion.update(latent_labels(word, last=a == self.anchors_per_episode - 1))
                yield tr

    def _triplet(self, eid: str, anchor: int, pos: np.ndarray, vel: np.ndarray, colour: np.ndarray, word: str) -> Triplet:
        S, G, T, C, A = self.size, self.grid, self.horizon, self.chunk, self.action_dim
        img = np.full((S, S, 3), 110, np.uint8)
        x0, y0 = int(np.clip(pos[0] - 3, 0, S - 6)), int(np.clip(pos[1] - 3, 0, S - 6))
        img[y0 : y0 + 6, x0 : x0 + 6] = colour
        # query grid on the anchor frame; points inside the square move with it, others stay
        q = (np.arange(G) + 0.5) * S / G
        qx, qy = np.meshgrid(q, q)
        query = np.stack([qx.ravel(), qy.ravel()], -1).astype(np.float32)  # K 2
        on = (np.abs(query[:, 0] - pos[0]) <= 4) & (np.abs(query[:, 1] - pos[1]) <= 4)
        steps = np.arange(T, dtype=np.float32)
        tracks = query[:, None, :] + on[:, None, None] * vel[None, None, :] * steps[None, :, None]  # K T 2
        depth = np.full((G * G, T), 1.0, np.float32) - on[:, None] * 0.002 * steps[None, :]
        f = S / 2.0
        pts = np.stack([(tracks[..., 0] - S / 2) / f * depth, (tracks[..., 1] - S / 2) / f * depth, depth], -1)
        visible = np.all((tracks >= 0) & (tracks < S), axis=-1)
        action = np.zeros((C, A), np.float32)
        action[:, :2] = vel
        action[:, A - 1] = 1.0 if word in ("up", "down") else -1.0
        proprio = np.array([pos[0] / S, pos[1] / S, 0.0, 1.0], np.float32)
        return Triplet(
            episode_id=eid, anchor=anchor, images={"image": img}, proprio=proprio,
            language=f"move the block {word}",
            motion={"tracks_px": tracks.astype(np.float32), "visible": visible, "in_range": np.ones(T, bool),
                    "depth_track_m": depth, "points_cam_m": pts.astype(np.float32), "valid_3d": visible.copy()},
            action_chunk=action, action_chunk_valid=np.ones(C, bool),
            intrinsics=np.array([f, f, S / 2, S / 2], np.float32), meta={"primary_camera": "image"},
        )

    def latent_codebook(self) -> np.ndarray:
        return synthetic_codebook()

    def _compute_stats(self) -> dict:
        from policy.normalize import stats_from_arrays

        trs = [t for s in self.shard_names for t in self._triplets[s]]
        acts = np.stack([t.action_chunk for t in trs]).reshape(-1, self.action_dim)
        prop = np.stack([t.proprio for t in trs])
        px = np.concatenate([(t.motion["tracks_px"][:, 1:] - t.motion["tracks_px"][:, :1]).reshape(-1, 2) for t in trs])
        p3 = np.concatenate([(t.motion["points_cam_m"][:, 1:] - t.motion["points_cam_m"][:, :1]).reshape(-1, 3) for t in trs])
        entry = {"actions": stats_from_arrays(acts), "proprio": stats_from_arrays(prop),
                 "motion/tracks_px_delta": stats_from_arrays(px), "motion/points_cam_m_delta": stats_from_arrays(p3)}
        return {"datasets": {self.name: entry}}

    # ---------------------------------------------------------------- reader interface
    @property
    def manifest(self):
        import pyarrow as pa

        rows = [{"episode_id": f"syn-{si}-{e}", "dataset": self.name, "version": self.version, "shard": s}
                for s in self.shard_names for si, e in self._episodes[s]]
        return pa.Table.from_pylist(rows)

    def episodes_of(self, shard: str) -> list[str]:
        return [f"syn-{si}-{e}" for si, e in self._episodes[shard]]

    def iter_triplets(self, shards: Optional[Sequence[str]] = None, chunk: int = 10,
                      motion_only: bool = False, episodes: Optional[Sequence[str]] = None,
                      cameras=None, labels: Optional[Sequence[str]] = None) -> Iterator[Triplet]:
        """The triplets of `shards` (default all) in order, or of `episodes` (ids) in that order;
        `labels` (anchor arrays, as the curated reader's) limits the motion; one camera only, so
        `cameras` changes nothing."""
        if episodes is not None:
            by_episode: dict[str, list[Triplet]] = {}
            for s in self.shard_names:
                for tr in self._triplets[s]:
                    by_episode.setdefault(tr.episode_id, []).append(tr)
            triplets = (tr for eid in episodes for tr in by_episode[eid])
        else:
            triplets = (tr for s in (self.shard_names if shards is None else shards) for tr in self._triplets[s])
        for tr in triplets:
            if labels is not None:
                tr = dataclasses.replace(tr, motion={k: v for k, v in tr.motion.items() if k in labels or k in ALWAYS_READ})
            # motion_only: as the curated reader does, no actions and no proprio
            yield (dataclasses.replace(tr, action_chunk=np.zeros((chunk, 0), np.float32), proprio=np.zeros(0, np.float32),
                                       action_chunk_valid=np.zeros(chunk, bool)) if motion_only else tr)

    def __len__(self) -> int:
        return sum(len(v) for v in self._triplets.values())


def latent_labels(word: str, last: bool) -> dict[str, np.ndarray]:
    """latent_tokens L int16 (codes fixed by the direction; -1 when `last`) and latent_valid () bool."""
    d = list(DIRECTIONS).index(word)
    tokens = np.array([(2 * d + i) % LATENT_CODES for i in range(LATENT_TOKENS)], np.int16)
    return {"latent_tokens": np.full(LATENT_TOKENS, -1, np.int16) if last else tokens, "latent_valid": np.asarray(not last)}


def synthetic_codebook(seed: int = 0) -> np.ndarray:
    """A V x c codebook of unit vectors, as the `small` latent action model's are."""
    cb = np.random.default_rng(seed).standard_normal((LATENT_CODES, LATENT_DIM)).astype(np.float32)
    return cb / np.linalg.norm(cb, axis=1, keepdims=True)
