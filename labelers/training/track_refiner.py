"""Training the track refiner (labelers/tracking/refiner.py) on simulator ground truth.

Samples come from simulated episodes with ground truth (any camera and task): for every
anchor (every `stride` steps) a query grid, jittered per anchor so that the refiner does not
learn the grid's positions, is tracked by the default LK tracker (the refiner's input at
labelling time) and by the simulator (labelers/eval/ground_truth.true_tracks). A sample is
one solved step (labelers/tracking/learned.solved_steps) of a query with known true motion:
(anchor frame, target frame, query, LK estimate, true position, true visibility).

A training step draws `pairs` (anchor, target) frame pairs and `per_pair` samples of each,
half of the estimates perturbed by Gaussian noise (sigma up to `jitter_px`) so that the
refiner also learns to pull in starts LK did not give it; the loss is the Huber distance to
the true position after each refinement iteration, on truly visible points, plus a small
visibility term. Moving points (labelers/eval/motion) are drawn `moving_weight` times as
often as the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1500
    seed: int = 0
    lr: float = 1e-3
    lr_final: float = 3e-4  # from 3/4 of the steps on
    pairs: int = 6
    per_pair: int = 48
    jitter_px: float = 2.0
    moving_weight: float = 3.0
    stride: int = 8
    horizon: int = 32
    grid: int = 20
    threads: int = 1


@dataclass
class Samples:
    """Flat sample arrays (S = samples) and the frames they index. frames: E episodes' T 3 H W
    float tensors; episode, anchor_frame, target_frame: S int; query, estimate, truth: S 2;
    visible, moving: S bool."""

    frames: list
    episode: np.ndarray
    anchor_frame: np.ndarray
    target_frame: np.ndarray
    query: np.ndarray
    estimate: np.ndarray
    truth: np.ndarray
    visible: np.ndarray
    moving: np.ndarray

    def __len__(self) -> int:
        return int(self.episode.size)

    def pairs(self) -> list[np.ndarray]:
        """Sample indices grouped by (episode, anchor frame, target frame)."""
        from labelers.tracking.learned import group_by

        return group_by(self.episode, self.anchor_frame, self.target_frame)


def episode_samples(ep, index: int, settings: TrainSettings, rng: np.random.Generator) -> dict:
    """The samples of one episode (see module docstring) as arrays."""
    from labelers.eval import ground_truth as gt
    from labelers.eval import motion as motion_eval
    from labelers.tracking.common import grid_queries, track_anchors
    from labelers.tracking.learned import solved_steps
    from labelers.tracking.lk_refined import RefinedLKTracker

    frames = ep.frames[ep.primary_camera]
    n_frames, H, W = frames.shape[:3]
    anchors = np.arange(0, n_frames - 1, settings.stride)
    q = grid_queries(H, W, settings.grid)
    cell = W / settings.grid
    q = np.clip(q + rng.uniform(-cell / 2, cell / 2, q.shape), 0.5, [W - 0.5, H - 0.5]).astype(np.float32)
    tracks, _ = track_anchors(RefinedLKTracker(), frames, anchors, q, settings.horizon)
    truth = [gt.true_tracks(ep, int(a), q, settings.horizon) for a in anchors]
    gt_tracks = np.stack([t[0] for t in truth])  # N K T 2
    gt_vis = np.stack([t[1] for t in truth])  # N K T
    in_range = np.stack([t[2] for t in truth])  # N T
    moving = motion_eval.motion_classes(gt_tracks, in_range)["moving_2d"]  # N K
    use = solved_steps(tracks, q) & in_range[:, None, :] & np.isfinite(gt_tracks).all(-1)
    n, k, j = np.nonzero(use)
    return {"episode": np.full(n.size, index), "anchor_frame": anchors[n], "target_frame": anchors[n] + j,
            "query": q[k], "estimate": tracks[n, k, j], "truth": gt_tracks[n, k, j].astype(np.float32),
            "visible": gt_vis[n, k, j], "moving": moving[n, k]}


def build_samples(episodes: Sequence, settings: TrainSettings) -> Samples:
    from labelers.tracking.refiner import frames_input

    rng = np.random.default_rng(settings.seed)
    parts, frames = [], []
    for i, ep in enumerate(episodes):
        if ep.ground_truth is None:
            raise ValueError(f"{ep.provenance.describe()}: no simulator ground truth to train the track refiner on")
        parts.append(episode_samples(ep, i, settings, rng))
        frames.append(frames_input(ep.frames[ep.primary_camera]))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return Samples(frames=frames, **cat)


def _pair_weights(samples: Samples, pairs: list[np.ndarray], moving_weight: float) -> np.ndarray:
    w = np.array([1.0 + (moving_weight - 1.0) * samples.moving[p].mean() for p in pairs])
    return w / w.sum()


def train_refiner(samples: Samples, settings: TrainSettings, config=None, progress_every_s: float = 10.0):
    """A TrackRefiner trained on `samples`; returns (model, record of the run)."""
    import torch

    from labelers.tracking.refiner import RefinerConfig, TrackRefiner

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    model = TrackRefiner(config or RefinerConfig())
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    pairs = samples.pairs()
    weights = _pair_weights(samples, pairs, settings.moving_weight)
    t0 = last = time.monotonic()
    losses = []
    for it in range(settings.steps):
        if it == int(0.75 * settings.steps):
            for group in opt.param_groups:
                group["lr"] = settings.lr_final
        chosen = [rng.choice(pairs[g], settings.per_pair) for g in rng.choice(len(pairs), settings.pairs, p=weights)]
        loss = _batch_loss(model, samples, chosen, settings)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if time.monotonic() - last > progress_every_s or it == settings.steps - 1:
            last = time.monotonic()
            log.info("track refiner step %d/%d loss %.3f (%.0f s)", it + 1, settings.steps,
                     np.mean(losses[-100:]), last - t0)
    model.eval()
    record = {"settings": asdict(settings), "samples": len(samples), "pairs": len(pairs),
              "final_loss": float(np.mean(losses[-100:])), "train_s": round(time.monotonic() - t0, 1)}
    return model, record


def _batch_loss(model, samples: Samples, chosen: list[np.ndarray], settings: TrainSettings):
    """Mean over the chosen pairs of the loss of the module docstring."""
    import torch
    import torch.nn.functional as F

    P = len(chosen)
    firsts = [c[0] for c in chosen]
    imgs = torch.stack([samples.frames[samples.episode[i]][samples.anchor_frame[i]] for i in firsts]
                       + [samples.frames[samples.episode[i]][samples.target_frame[i]] for i in firsts])
    feats = model.features(imgs)  # 2P C H W
    total = torch.zeros(())
    for b, idx in enumerate(chosen):
        q = torch.from_numpy(samples.query[idx]).float()
        p = torch.from_numpy(samples.estimate[idx]).float()
        truth = torch.from_numpy(samples.truth[idx]).float()
        vis = torch.from_numpy(samples.visible[idx]).float()
        noisy = (torch.rand(len(idx), 1) < 0.5).float() * torch.rand(len(idx), 1) * settings.jitter_px
        p = p + torch.randn_like(p) * noisy
        for _ in range(model.config.iterations):
            delta, logit = model.step(feats[b], feats[P + b], q, p)
            p = p + delta
            err = F.huber_loss(p, truth, reduction="none", delta=1.0).sum(-1)
            total = total + (err * vis).sum() / vis.sum().clamp(min=1.0)
            p = p.detach()
        total = total + 0.1 * F.binary_cross_entropy_with_logits(logit, vis)
    return total / P
