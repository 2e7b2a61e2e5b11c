"""Motion Expert: a flow-matching transformer over the anchor's future motion.

Tokenised per point: each of the K query points is one token carrying its whole
T x M trajectory (normalised motion relative to the anchor; M = 3 for 3D scene flow, 2 for
the 2D-track prior), so attention cost is K^2 rather than (K T)^2.
Time convention (LaMP stage 1): t = 0 is noise, t = 1 is data.

    x_t  B K T M ─► flatten T*M ─► Linear ─┐
    anchor (u0, v0) of each point ─► MLP ──┼─► + time MLP(sin(t)) ─► motion tokens B K D
                                           │
    VL tokens B N D ───────────────────────┴─► [VL; motion] ─► TransformerStack (joint attention)
                                                                     │
                       hidden (last layer, motion tokens) B K D ◄────┤
                       velocity head ─► B K T M ◄────────────────────┘

Training: x_t = (1 - t) noise + t x1, loss = masked MSE(v, x1 - noise) over valid entries.
Partial denoising (stage 2): x_0 = noise, x_tau = x_0 + tau * v(x_0, 0), then one more forward
at tau; its last-layer hidden states of the motion tokens are the motion features.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from policy import flow_matching as fm
from policy.config import LaMPConfig
from policy.layers import TransformerStack


class MotionExpert(nn.Module):
    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        d = cfg.d_model
        self.K, self.T, self.M = cfg.motion_points, cfg.motion_horizon, cfg.motion_channels
        self.tau = cfg.motion_tau
        self.time_beta = cfg.motion_time_beta
        self.in_proj = nn.Linear(self.T * self.M, d)
        self.anchor_mlp = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.d_model = d
        self.blocks = TransformerStack(cfg.motion_layers, d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
        self.out_proj = nn.Linear(d, self.T * self.M)

    def forward(self, x_t: Tensor, t: Tensor, anchor_uv: Tensor, vl_tokens: Tensor,
                vl_pad: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x_t B K T M, t B, anchor_uv B K 2 in [-1, 1], vl_tokens B N D ->
        (velocity B K T M, hidden B K D)."""
        B, K, T, M = x_t.shape
        temb = self.time_mlp(fm.sinusoidal_embedding(t, self.d_model))  # B D
        tok = self.in_proj(x_t.reshape(B, K, T * M)) + self.anchor_mlp(anchor_uv) + temb[:, None, :]  # B K D
        N = vl_tokens.shape[1]
        seq = torch.cat([vl_tokens, tok], dim=1)  # B N+K D
        pad = None
        if vl_pad is not None:
            pad = torch.cat([vl_pad, torch.zeros(B, K, dtype=torch.bool, device=vl_pad.device)], dim=1)
        h = self.blocks(seq, pad)[:, N:]  # B K D
        v = self.out_proj(h).reshape(B, K, T, M)  # B K T M
        return v, h

    def loss(self, motion: Tensor, mask: Tensor, anchor_uv: Tensor, vl_tokens: Tensor,
             vl_pad: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict]:
        """Flow-matching loss on normalised motion B K T M where mask (B K T M bool) is True.
        Invalid entries are zeroed before use, so their values (even NaN) never reach the loss."""
        B = motion.shape[0]
        x1 = torch.where(mask, motion, torch.zeros((), dtype=motion.dtype))  # B K T M
        noise = torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
        if self.time_beta:  # mirror pi0's sampler: dense near the noise end (t = 0 here)
            t = 1.0 - fm.sample_beta_time(B, generator=generator)
        else:
            t = fm.sample_uniform_time(B, generator=generator)
        x_t = fm.interpolate(x1, noise, t, noise_at=0.0)
        v, _ = self(x_t, t, anchor_uv, vl_tokens, vl_pad)
        target = fm.target_velocity(x1, noise, noise_at=0.0)
        loss = fm.masked_mse(v, target, mask)
        return loss, {"motion_loss": float(loss.detach()), "motion_valid_frac": float(mask.float().mean())}

    def partial_denoise(self, anchor_uv: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None,
                        tau: Optional[float] = None, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """LaMP's one-step partial denoising -> (motion features B K D, x_tau B K T M)."""
        tau = self.tau if tau is None else tau
        B = vl_tokens.shape[0]
        x0 = torch.randn(B, self.K, self.T, self.M, generator=generator, dtype=vl_tokens.dtype)  # t = 0: noise
        t0 = torch.zeros(B, dtype=vl_tokens.dtype)
        v0, _ = self(x0, t0, anchor_uv, vl_tokens, vl_pad)
        x_tau = x0 + tau * v0  # one Euler step 0 -> tau
        _, h = self(x_tau, torch.full_like(t0, tau), anchor_uv, vl_tokens, vl_pad)
        return h, x_tau

    @torch.no_grad()
    def sample(self, anchor_uv: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None, num_steps: int = 10,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Full generation of the motion (for visualisation / evaluation of stage 1): B K T M."""
        B = vl_tokens.shape[0]
        x0 = torch.randn(B, self.K, self.T, self.M, generator=generator, dtype=vl_tokens.dtype)
        return fm.euler_integrate(lambda x, t: self(x, t, anchor_uv, vl_tokens, vl_pad)[0], x0, 0.0, 1.0, num_steps)
