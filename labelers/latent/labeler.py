"""Latent action labeler: a trained LAPA-style model turns each anchor step into L tokens.

    labeler = LatentActionLabeler.from_checkpoint("runs/lam")      # dir or .safetensors file
    tokens, valid = labeler(frames, anchors, gap=4)                 # T H W 3 uint8, N int

tokens: N x L int16 codebook indices (0 .. V-1) of the motion from frame t to frame t+gap;
valid:  N bool. An anchor t with no frame t+gap (t + gap >= T) gets
        schemas.triplet.LATENT_PAD_TOKEN (-1) in every position and valid False: never a
        token computed from a made-up frame.

Frames are centre-cropped to a square and resized to the model's image size. Pure: arrays
in, arrays out; the checkpoint is read once, in `from_checkpoint` (safetensors, no pickle).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from schemas.triplet import LATENT_PAD_TOKEN


class LatentActionLabeler:
    def __init__(self, model, gap: Optional[int] = None, batch_size: int = 64):
        """model: a labelers.latent.model.LatentActionModel; gap: the gap it was trained with
        (used when a call gives none)."""
        self.model = model.eval()
        self.config = model.config
        self.trained_gap = gap
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, batch_size: int = 64) -> "LatentActionLabeler":
        from labelers.latent.checkpoint import load_weights
        from labelers.latent.model import LatentActionModel

        config, state, extra = load_weights(path)
        model = LatentActionModel(config)
        model.load_state_dict(state)
        return cls(model, gap=extra.get("gap"), batch_size=batch_size)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def __call__(self, frames: np.ndarray, anchors: np.ndarray, gap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from labelers.latent.data import square_resize

        gap = self.trained_gap if gap is None else int(gap)
        if gap is None or gap < 1:
            raise ValueError(f"latent labeler: gap must be >= 1, got {gap}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"latent labeler: frames must be T x H x W x 3 uint8, got {frames.shape} {frames.dtype}")
        anchors = np.asarray(anchors)
        if anchors.ndim != 1 or not np.issubdtype(anchors.dtype, np.integer):
            raise ValueError(f"latent labeler: anchors must be a 1-d integer array, got {anchors.shape} {anchors.dtype}")
        T = frames.shape[0]
        if anchors.size and (anchors.min() < 0 or anchors.max() >= T):
            raise ValueError(f"latent labeler: anchors must lie in [0, {T}), got {anchors.min()}..{anchors.max()}")
        N, L = anchors.shape[0], self.num_tokens
        tokens = np.full((N, L), LATENT_PAD_TOKEN, np.int16)
        valid = anchors + gap < T
        todo = anchors[valid]
        if todo.size:
            needed = np.unique(np.concatenate([todo, todo + gap]))
            small = square_resize(frames[needed], self.config.image_size)  # only the frames we use
            where = {int(f): i for i, f in enumerate(needed)}
            x = torch.from_numpy(small).permute(0, 3, 1, 2).float().div_(255.0)  # F 3 S S
            i0 = torch.tensor([where[int(t)] for t in todo])
            i1 = torch.tensor([where[int(t) + gap] for t in todo])
            out = []
            with torch.no_grad():
                for s in range(0, len(todo), self.batch_size):
                    out.append(self.model.tokens(x[i0[s:s + self.batch_size]], x[i1[s:s + self.batch_size]]))
            tokens[valid] = torch.cat(out).numpy().astype(np.int16)
        return tokens, valid
