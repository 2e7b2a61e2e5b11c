"""Action-prior pretraining (variant `action_prior`), after "Learning Action Priors for
Cross-embodiment Robot Manipulation": the action module learns motion from action trajectories
alone before it meets vision and language.

    stage 1, phase "prior" (no image, no instruction):
      past actions B H A ─► History Encoder ─► z B D ─┐
                                                      ▼ (one condition token)
      state, noisy chunk ─► Action Expert = the flow-matching decoder ─► velocity B C A

    stage 2, phase "action" (--init from stage 1; the decoder is the action head):
      image, instruction ─► VL encoder ─► VL tokens B N D ─► [VL; z] ─► Action Expert ─► B C A
      past actions ─► History Encoder ─► z B 1 D (one context token: the history compressor)
      VL tokens ─► masked mean ─► latent head ─► z_vl B D
      loss = action loss + prior_distill_weight * KD(z_vl, sg(z))  for the first
             prior_distill_frac of the steps, then the action loss alone

    History Encoder: Linear(A) + step position per past action, a learned summary token in
    front, TransformerStack with the invalid steps padded out; z = Linear(summary's last hidden).

KD is the paper's KL(p_VLM(z | o, l) || p_prior(z | past actions)) with both distributions
Gaussians of one fixed unit variance, where it is half the squared distance of the means (per
latent dimension here); the prior's side is the teacher (no gradient).

Stage 1 reads the same chunk, validity and proprio as stage 2; images and instructions are
ignored. The Action Expert's state input is the robot's proprioception, part of the paper's
"state-action history", not vision. Acting keeps the actions the policy executed as the history.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from policy.action_history import PAST_ACTIONS, PAST_ACTIONS_VALID
from policy.config import LaMPConfig
from policy.layers import TransformerStack
from policy.variant_parts import VariantParts


def action_prior_fields(cfg: LaMPConfig, transform, tr) -> dict[str, np.ndarray]:
    """past_actions H A (normalised like the chunk, 0 where invalid) and past_actions_valid H of one
    triplet, from what policy.action_history attached."""
    if PAST_ACTIONS not in tr.meta:
        raise ValueError(f"episode {tr.episode_id} anchor {tr.anchor}: no past actions attached "
                         "(the stream reads them only outside the motion phase)")
    A = cfg.action_dim
    past = np.asarray(tr.meta[PAST_ACTIONS], np.float32)[:, :A]  # H A
    valid = np.asarray(tr.meta[PAST_ACTIONS_VALID], bool)  # H
    norm = (past - transform.action_center[:A]) / transform.action_scale[:A]
    return {"past_actions": np.where(valid[:, None], norm, 0.0).astype(np.float32), "past_actions_valid": valid}


class HistoryEncoder(nn.Module):
    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        d = cfg.d_model
        self.in_proj = nn.Linear(cfg.action_dim, d)
        self.step_pos = nn.Parameter(torch.randn(1, cfg.prior_history, d) * 0.02)
        self.summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.blocks = TransformerStack(cfg.prior_layers, d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)
        self.out_proj = nn.Linear(d, d)

    def forward(self, past: Tensor, valid: Tensor) -> Tensor:
        """past B H A (normalised), valid B H bool -> z B D. The summary token is never padded, so
        a history with no valid step (an episode's first anchor) still has a key to attend to."""
        B = past.shape[0]
        past = torch.where(valid[..., None], past, torch.zeros((), dtype=past.dtype))
        tok = torch.cat([self.summary.expand(B, -1, -1), self.in_proj(past) + self.step_pos], dim=1)  # B 1+H D
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=valid.device), ~valid], dim=1)  # B 1+H
        return self.out_proj(self.blocks(tok, pad)[:, 0])  # B D


class ActionPriorParts(VariantParts):
    """History Encoder + the VL latent head, the prior phase and the distillation schedule."""

    phases = ("prior",)

    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        d = cfg.d_model
        self.encoder = HistoryEncoder(cfg)
        self.latent_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.H, self.A = cfg.prior_history, cfg.action_dim
        self.distill_weight, self.distill_frac = cfg.prior_distill_weight, cfg.prior_distill_frac
        self.distilling = True  # set by at_step
        self._history: deque = deque(maxlen=self.H)  # executed actions A (dataset units), newest last

    # ---------------------------------------------------------------- training
    def trainable(self, policy, phase: str) -> None:
        if phase == "prior":
            policy.action_expert.requires_grad_(True)
            self.encoder.requires_grad_(True)
        elif phase == "action":
            self.encoder.requires_grad_(True)
            self.latent_head.requires_grad_(True)

    def at_step(self, step: int, total: int) -> None:
        self.distilling = step < self.distill_frac * total

    def history_latent(self, batch: Mapping[str, Any]) -> Tensor:
        return self.encoder(batch["past_actions"].to(torch.float32), batch["past_actions_valid"].to(torch.bool))  # B D

    def phase_loss(self, policy, batch: Mapping[str, Any], generator: Optional[torch.Generator]) -> tuple[Tensor, dict]:
        """Stage 1: the decoder's flow-matching loss on the chunk, conditioned on z alone."""
        z = self.history_latent(batch)[:, None, :]  # B 1 D
        return policy.action_expert.loss(batch["action"], batch["action_valid"].to(torch.bool), policy._state(batch),
                                         z, None, generator)

    def context_tokens(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                       generator: Optional[torch.Generator]) -> Optional[Tensor]:
        return self.history_latent(batch)[:, None, :]  # B 1 D

    def aux_loss(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                 generator: Optional[torch.Generator]) -> tuple[Optional[Tensor], dict]:
        if not self.distilling:
            return None, {"distill_weight": 0.0}
        keep = (~vl_pad).to(vl.dtype)[..., None] if vl_pad is not None else torch.ones_like(vl[..., :1])  # B N 1
        pooled = (vl * keep).sum(1) / keep.sum(1).clamp_min(1.0)  # B D
        z_vl = self.latent_head(pooled)  # B D
        with torch.no_grad():
            z = self.history_latent(batch)  # B D, the teacher
        kd = 0.5 * ((z_vl - z) ** 2).mean()
        return self.distill_weight * kd, {"distill_loss": float(kd.detach()), "distill_weight": self.distill_weight}

    # ---------------------------------------------------------------- acting
    def reset(self) -> None:
        self._history.clear()

    def executed(self, policy, action: np.ndarray) -> None:
        self._history.append(np.asarray(action, np.float32)[: self.A])

    def observe(self, policy, observation: Mapping[str, Any], batch: dict[str, Any]) -> None:
        """The last H executed actions, normalised, oldest first; the steps not yet taken invalid."""
        B = batch["image"].shape[0]
        past = torch.zeros(self.H, self.A)
        valid = torch.zeros(self.H, dtype=torch.bool)
        n = len(self._history)
        if n:
            acts = torch.as_tensor(np.stack(list(self._history)))  # n A
            past[self.H - n:] = (acts - policy.action_center) / policy.action_scale
            valid[self.H - n:] = True
        batch["past_actions"] = past.expand(B, -1, -1)
        batch["past_actions_valid"] = valid.expand(B, -1)
