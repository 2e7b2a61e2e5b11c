"""LAFP, the latent action flow policy (variant `lafp`; `lafp_no_interp` = interpolation strength 0).

A latent policy generates the anchor's VQ latent action (policy/latent_expert.py) by flow
matching from the VL tokens; the Action Expert, given that latent as L extra context tokens, is
the latent-to-action decoder. The wrapper is LaMPPolicy with fusion "none"; these parts plug in
through policy/variants.py.

    image, instruction ─► VL encoder ─► VL tokens B N D ─────────────────────────────┐
                                          │                                           │
                                          ▼                                           │
                     Latent Expert: noise B L c ─4 Euler steps─→ sampled latent ẑ     │
                                                                      │               │
                (phase action, training only)  demo latent z* ─► ẑ + s (z* - ẑ)      │
                                                                      ▼               ▼
                                              Linear + position ─► latent tokens B L D ─► [VL; latent]
                                                                                          │
                             state, noisy chunk ─► Action Expert (the decoder) ─► action chunk C x A

Phases:
  latent  (stage 1, the action-free corpus): VL encoder + Latent Expert, flow matching on the
          latents our latent action model labelled (`curate run --set labels.latent_checkpoint=`).
          Reads no actions.
  action  (stage 2, the labelled demonstrations): Latent Expert frozen; trains the latent
          projection, the Action Expert and (train_vl_in_action_phase) the VL encoder. The
          decoder's input is the policy's own sample, moved towards the demonstration's latent by
          the strength s = LaMPConfig.lafp_interp (`align_latent`).
Acting: ẑ is sampled and decoded; s plays no part (no demonstration latent exists then).

Why the interpolation (LAFP): the decoder is trained on the few demonstrations, and at test time
its input is a latent SAMPLED by the stochastic flow policy. Trained on the policy's samples
alone (s = 0), the decoder is taught to map a latent to an action it need not correspond to (a
sample from another mode than the one the demonstration took): latent and physical actions drift
apart. Trained on the demonstration's own latent alone (s = 1), it never sees the policy's
outputs. In between, the policy's inference on the demonstration is moved towards the
demonstration's latent:  z_in = ẑ + s (z* - ẑ)  where z* is valid, ẑ elsewhere. The seed text
(../shared/seeds/lafp.txt) names the mechanism, not its formula: this linear form is ours.

Batches carry, besides the base keys, latent_tokens B L (int64, -1 where invalid) and
latent_valid B (bool), from `latent_sample_fields`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from policy.config import LaMPConfig
from policy.latent_expert import LatentExpert
from policy.variant_parts import VariantParts

LATENT_PHASE = "latent"


def align_latent(z_sampled: Tensor, z_demo: Tensor, demo_valid: Tensor, strength: float) -> Tensor:
    """The decoder's training input: z_sampled B L c moved by `strength` towards z_demo B L c
    where demo_valid (B bool); z_sampled unchanged elsewhere."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"interpolation strength must be in [0, 1], got {strength}")
    w = strength * demo_valid.to(z_sampled.dtype)[:, None, None]  # B 1 1
    return z_sampled + w * (torch.nan_to_num(z_demo) - z_sampled)


class LAFPParts(VariantParts):
    phases = (LATENT_PHASE,)

    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        if cfg.latent_codes < 2:
            raise ValueError("variant lafp needs the latent action model's codebook (LaMPConfig.latent_codebook; "
                             "`curate policy train --latent-checkpoint RUN` fills it)")
        if cfg.fusion != "none":
            raise ValueError(f"variant lafp conditions the Action Expert on latents, not motion: fusion must be none, "
                             f"got {cfg.fusion!r}")
        self.strength = cfg.lafp_interp
        self.latent_expert = LatentExpert(cfg)
        self.latent_in = nn.Linear(cfg.latent_dim, cfg.d_model)
        self.latent_pos = nn.Parameter(torch.randn(1, cfg.latent_tokens, cfg.d_model) * 0.02)
        self.last_latent: Optional[Tensor] = None  # B L c: the decoder's input of the latest call (inspection)

    def trainable(self, policy, phase: str) -> None:
        if phase == LATENT_PHASE:
            policy.vl_encoder.requires_grad_(True)
            self.latent_expert.requires_grad_(True)
        elif phase == "action":  # the Latent Expert stays frozen: stage 2 decodes what stage 1 learned
            self.latent_in.requires_grad_(True)
            self.latent_pos.requires_grad_(True)

    def phase_loss(self, policy, batch: Mapping[str, Any], generator: Optional[torch.Generator]) -> tuple[Tensor, dict]:
        vl, vl_pad = policy.encode(batch)  # B N D, B N
        return self.latent_expert.loss(batch["latent_tokens"], batch["latent_valid"], vl, vl_pad, generator)

    def context_tokens(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                       generator: Optional[torch.Generator]) -> Tensor:
        """The decoder's latent tokens B L D: a sampled latent, aligned with the demonstration's
        latent when training the decoder."""
        z = self.latent_expert.sample(vl.detach(), vl_pad, generator=generator)  # B L c
        if policy.training and policy.phase == "action" and self.strength > 0:
            z_demo, usable = self.latent_expert.latents(batch["latent_tokens"], batch["latent_valid"])  # B L c, B
            z = align_latent(z, z_demo, usable, self.strength)
        self.last_latent = z
        return self.latent_in(z) + self.latent_pos  # B L D


def latent_sample_fields(triplet) -> dict[str, np.ndarray]:
    """A sample's latent action: tokens L int64 (-1 where invalid) and valid () bool, from the
    triplet's `latent_tokens` / `latent_valid` labels. A dataset curated without a latent action
    model has none: that is an error naming the episode, not a silent all-invalid sample."""
    m = triplet.motion
    if "latent_tokens" not in m:
        raise ValueError(f"episode {triplet.episode_id}: no latent action tokens; variant lafp trains on data "
                         "curated with `--set labels.latent_checkpoint=RUN` (curate latent train)")
    tokens = np.asarray(m["latent_tokens"]).astype(np.int64).reshape(-1)  # L
    valid = bool(np.asarray(m.get("latent_valid", True))) and bool((tokens >= 0).all())
    return {"latent_tokens": np.where(valid, tokens, -1), "latent_valid": np.asarray(valid)}
