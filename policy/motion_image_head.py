"""Motion-image head (variant `motion_image`): a parallel head that predicts the anchor's optical
flow from the shared VL tokens, trained jointly with the Action Expert and never run when acting
(after "Robotic VLA Benefits from Joint Learning with Motion Image Diffusion", whose DiT motion head
denoises motion images from the VLM's tokens beside the action head).

    motion_image H W 3 uint8 ─► decode (flow px, the contract's sqrt encoding) ─► area-pool G x G
        ─► / MOTION_IMAGE_FLOW_SCALE_PX ─► target flow x1 B G G 2 (valid: flow_valid of the anchor)

    noisy flow x_t B G*G 2 ─► Linear ─► + cell position + time MLP(sin(t)) ─► flow tokens B G*G D
    VL tokens B N D (before fusion) ──► [VL; flow tokens] ─► TransformerStack (joint attention)
                                                                  │
                                         velocity head ─► B G*G 2 ┘

Loss (phase "action"): action loss + motion_image_weight * masked flow-matching MSE of the head,
pi0's time convention (t = 1 noise, t = 0 data) as the Action Expert. Gradients of the head reach
the VL encoder: that shared representation is what the head is for. The head adds no token to
what the Action Expert sees, so acting is the base policy's path exactly.

The pooled grid stands in for the paper's frozen-VAE latent: at our image sizes G = 8 cells
(96 px / 12 px patches, one cell per image token) keep the flow of the arm and the object.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from policy import flow_matching as fm
from policy.config import LaMPConfig
from policy.layers import TransformerStack
from policy.variant_parts import VariantParts
from schemas.triplet import MOTION_IMAGE_SCALE

# Quantisation levels per sign of the stored channel (schemas/dataset.py motion_image: "flow, sqrt
# encoding s=64"; q = 128 + round(127 c), c = sign(f) sqrt(|f| / s)).
_Q = 127.0
# Divides the pooled flow (pixels per flow_gap step) so the head's targets are of order one: the
# 8 x 8-pooled flow of the motion-prior experiment's 5-demonstration data (300 anchors, 96 px,
# gap 1) has an RMS of 0.11 px (99th percentile 0.56 px; most cells are static background).
MOTION_IMAGE_FLOW_SCALE_PX = 0.1


def decode_flow(motion_image: np.ndarray) -> np.ndarray:
    """H W 3 uint8 motion image -> H W 2 float32 flow (dx, dy) pixels: the inverse of the
    contract's encoding (first two channels; the third is their mean)."""
    img = np.asarray(motion_image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"motion image must be H x W x 3 uint8, got {img.shape} {img.dtype}")
    c = np.clip((img[..., :2].astype(np.float32) - 128.0) / _Q, -1.0, 1.0)
    return (np.sign(c) * c * c * np.float32(MOTION_IMAGE_SCALE)).astype(np.float32)


def pool_flow(flow: np.ndarray, grid: int) -> np.ndarray:
    """H W 2 flow -> grid grid 2, the mean flow of each cell (area interpolation)."""
    import cv2

    return cv2.resize(flow, (grid, grid), interpolation=cv2.INTER_AREA).reshape(grid, grid, 2).astype(np.float32)


def motion_image_fields(cfg: LaMPConfig, transform, tr) -> dict[str, np.ndarray]:
    """The head's target of one triplet: motion_image G G 2 (normalised flow, 0 where invalid)
    and motion_image_valid G G 2 bool (all False when the anchor has no flow: t + gap past the end)."""
    m = tr.motion
    if "motion_image" not in m:
        raise ValueError(f"variant motion_image needs the motion_image label; episode {tr.episode_id} "
                         f"(anchor {tr.anchor}) has none (labels.motion_image off when it was curated?)")
    G = cfg.motion_image_grid
    ok = bool(np.asarray(m.get("flow_valid", True)))
    flow = pool_flow(decode_flow(m["motion_image"]), G) / MOTION_IMAGE_FLOW_SCALE_PX  # G G 2
    valid = np.full((G, G, 2), ok)
    return {"motion_image": np.where(valid, flow, 0.0).astype(np.float32), "motion_image_valid": valid}


class MotionImageHead(nn.Module):
    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        d = self.d_model = cfg.d_model
        self.G = cfg.motion_image_grid
        self.in_proj = nn.Linear(2, d)
        self.cell_pos = nn.Parameter(torch.randn(1, self.G * self.G, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = TransformerStack(cfg.motion_image_layers, d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
        self.out_proj = nn.Linear(d, 2)

    def forward(self, x_t: Tensor, t: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None) -> Tensor:
        """x_t B G*G 2, t B, vl_tokens B N D -> velocity B G*G 2."""
        B, L, _ = x_t.shape
        temb = self.time_mlp(fm.sinusoidal_embedding(t, self.d_model))  # B D
        tok = self.in_proj(x_t) + self.cell_pos + temb[:, None, :]  # B L D
        N = vl_tokens.shape[1]
        pad = None
        if vl_pad is not None:
            pad = torch.cat([vl_pad, torch.zeros(B, L, dtype=torch.bool, device=vl_pad.device)], dim=1)
        h = self.blocks(torch.cat([vl_tokens, tok], dim=1), pad)[:, N:]  # B L D
        return self.out_proj(h)  # B L 2

    def loss(self, flow: Tensor, valid: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None) -> Tensor:
        """Flow matching on flow B G G 2 (normalised) where valid (B G G 2 bool); invalid entries are
        zeroed first, so their values never reach the loss."""
        B = flow.shape[0]
        x1 = torch.where(valid, flow, torch.zeros((), dtype=flow.dtype)).reshape(B, -1, 2)  # B G*G 2
        mask = valid.reshape(B, -1, 2)
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        t = fm.sample_beta_time(B, generator=generator)
        v = self(fm.interpolate(x1, noise, t, noise_at=1.0), t, vl_tokens, vl_pad)
        return fm.masked_mse(v, fm.target_velocity(x1, noise, noise_at=1.0), mask)

    @torch.no_grad()
    def sample(self, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None, num_steps: int = 10,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """The predicted flow B G G 2 (normalised), for looking at what the head learned."""
        B = vl_tokens.shape[0]
        x = torch.randn(B, self.G * self.G, 2, generator=generator, dtype=vl_tokens.dtype)
        x = fm.euler_integrate(lambda x, t: self(x, t, vl_tokens, vl_pad), x, 1.0, 0.0, num_steps)
        return x.reshape(B, self.G, self.G, 2)


class MotionImageParts(VariantParts):
    """The head and its hooks: trained in phase "action" beside the Action Expert, silent when acting."""

    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        self.head = MotionImageHead(cfg)
        self.weight = cfg.motion_image_weight

    def trainable(self, policy, phase: str) -> None:
        self.head.requires_grad_(phase == "action")

    def aux_loss(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                 generator: Optional[torch.Generator]) -> tuple[Optional[Tensor], dict]:
        loss = self.head.loss(batch["motion_image"].to(torch.float32), batch["motion_image_valid"].to(torch.bool),
                              vl, vl_pad, generator)
        return self.weight * loss, {"motion_image_loss": float(loss.detach())}
