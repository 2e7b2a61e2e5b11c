"""Action Expert: a flow-matching transformer over an action chunk (pi0 convention:
t = 1 is noise, t = 0 is the actions).

    noisy chunk x_t B C A ─┐
    sin(t) B D ────────────┼─► concat per step ─► Linear ─► + step pos ─► action tokens B C D
    state B P ─────────────┘                                                    │
    guided VL tokens B N D ─────────────────────────► [VL; action] ─► TransformerStack
                                                                                │
                                            velocity head on action tokens ─► B C A

Training: t ~ Beta(1.5, 1) * 0.999 + 0.001, x_t = t noise + (1 - t) a, target noise - a,
masked MSE over valid chunk steps. Sampling: 10 Euler steps from t = 1 to t = 0.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from policy import flow_matching as fm
from policy.config import LaMPConfig
from policy.layers import TransformerStack


class ActionExpert(nn.Module):
    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        d = cfg.d_model
        self.C, self.A, self.P = cfg.chunk_size, cfg.action_dim, cfg.state_dim
        self.d_model = d
        self.num_steps = cfg.num_inference_steps
        # each action token = Linear(noisy action ++ sinusoidal time embedding ++ state)
        self.in_proj = nn.Linear(self.A + d + self.P, d)
        self.step_pos = nn.Parameter(torch.randn(1, self.C, d) * 0.02)
        self.blocks = TransformerStack(cfg.action_layers, d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
        self.out_proj = nn.Linear(d, self.A)

    def forward(self, x_t: Tensor, t: Tensor, state: Tensor, vl_tokens: Tensor,
                vl_pad: Optional[Tensor] = None) -> Tensor:
        """x_t B C A, t B, state B P, vl_tokens B N D -> velocity B C A."""
        B, C, _ = x_t.shape
        temb = fm.sinusoidal_embedding(t, self.d_model)[:, None, :].expand(B, C, self.d_model)  # B C D
        parts = [x_t, temb.to(x_t.dtype)]
        if self.P:
            parts.append(state[:, None, :].expand(B, C, self.P))
        tok = self.in_proj(torch.cat(parts, dim=-1)) + self.step_pos  # B C D
        N = vl_tokens.shape[1]
        pad = None
        if vl_pad is not None:
            pad = torch.cat([vl_pad, torch.zeros(B, C, dtype=torch.bool, device=vl_pad.device)], dim=1)
        h = self.blocks(torch.cat([vl_tokens, tok], dim=1), pad)[:, N:]  # B C D
        return self.out_proj(h)  # B C A

    def loss(self, actions: Tensor, valid: Tensor, state: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict]:
        """actions B C A (normalised), valid B C bool."""
        B = actions.shape[0]
        a = torch.where(valid[..., None], actions, torch.zeros((), dtype=actions.dtype))
        noise = torch.randn(a.shape, generator=generator, dtype=a.dtype)
        t = fm.sample_beta_time(B, generator=generator)
        x_t = fm.interpolate(a, noise, t, noise_at=1.0)
        v = self(x_t, t, state, vl_tokens, vl_pad)
        loss = fm.masked_mse(v, fm.target_velocity(a, noise, noise_at=1.0), valid[..., None])
        return loss, {"action_loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, state: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None,
               num_steps: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Euler integration from noise at t = 1 to actions at t = 0: B C A (normalised)."""
        B = vl_tokens.shape[0]
        x1 = torch.randn(B, self.C, self.A, generator=generator, dtype=vl_tokens.dtype)
        steps = num_steps or self.num_steps
        return fm.euler_integrate(lambda x, t: self(x, t, state, vl_tokens, vl_pad), x1, 1.0, 0.0, steps)
