"""Variants of the trainer: the parts a variant adds beside the VL encoder and the two experts.

`LaMPConfig.variant` names one. "lamp" adds nothing (the wrapper, the trainer and the loader run
exactly as without this module). Any other name maps to a `VariantParts` module that the wrapper
holds as `policy.extra` and calls at these hooks, each a no-op by default:

    wrapper    phases                               pretraining phases of its own ("prior", ...)
               phase_loss(policy, batch, gen)       the loss of such a phase
               trainable(policy, phase)             which parts the phase trains (after the base's)
               context_tokens(policy, batch, vl,    extra tokens for the Action Expert (B X D),
                              vl_pad, gen)          from the batch and the VL tokens B N D;
                                                    used when acting too
               aux_loss(policy, batch, vl, pad, gen) extra loss terms of phase "action" (not run
                                                    when acting)
               observe(policy, observation, batch)  what acting needs from a raw observation
               executed(policy, action)             an action the policy has just executed
               reset()                              start of an episode
    trainer    at_step(step, total)                 before each optimisation step (schedules)

The loader's side is two plain functions of the config (no modules, no random draws):
`sample_fields(cfg, transform, triplet)` (extra training targets of one sample) and
`action_history_length(cfg)` (past actions the stream attaches to each triplet first, 0 = none).

Parts are built after every base module, so the base modules' initial weights (and the random
stream that draws them) are the same whichever variant is chosen.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from policy.config import LaMPConfig
from policy.lafp import LAFPParts, latent_sample_fields
from policy.variant_parts import VariantParts

__all__ = ["VariantParts", "action_history_length", "build_variant_parts", "sample_fields"]


def build_variant_parts(cfg: LaMPConfig) -> Optional[VariantParts]:
    """The parts of cfg.variant, or None for "lamp" (nothing beside the two experts)."""
    if cfg.variant == "lamp":
        return None
    if cfg.variant == "lafp":
        return LAFPParts(cfg)
    raise ValueError(f"unknown variant {cfg.variant!r}")


def sample_fields(cfg: LaMPConfig, transform, triplet) -> dict[str, np.ndarray]:
    """Extra fields of one training sample for cfg.variant (none for "lamp"). `transform` is the
    loader's TripletTransform (its normalisation arrays), `triplet` the reader's Triplet."""
    if cfg.variant == "lafp":
        return latent_sample_fields(triplet)
    return {}


def action_history_length(cfg: LaMPConfig) -> int:
    """Past actions per triplet the loader attaches for cfg.variant (0: none)."""
    return 0
