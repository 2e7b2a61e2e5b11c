"""The parts a variant of the trainer adds beside the VL encoder and the two experts.

`LaMPConfig.variant` names one (policy/variants.py builds it). "lamp" adds nothing (the wrapper, the trainer and the loader run
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

The loader's side is two plain functions of the config in policy/variants.py (no modules, no
random draws), beside the table that builds the parts.

Parts are built after every base module, so the base modules' initial weights (and the random
stream that draws them) are the same whichever variant is chosen.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

class VariantParts(nn.Module):
    """Base of a variant's parts: every hook does nothing."""

    phases: tuple[str, ...] = ()

    def phase_loss(self, policy, batch: Mapping[str, Any], generator: Optional[torch.Generator]) -> tuple[Tensor, dict]:
        raise ValueError(f"variant {policy.config.variant} has no phase {policy.phase!r}")

    def trainable(self, policy, phase: str) -> None:
        """Switch on requires_grad of what `phase` trains among this variant's parts."""

    def context_tokens(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                       generator: Optional[torch.Generator]) -> Optional[Tensor]:
        return None

    def aux_loss(self, policy, batch: Mapping[str, Any], vl: Tensor, vl_pad: Optional[Tensor],
                 generator: Optional[torch.Generator]) -> tuple[Optional[Tensor], dict]:
        return None, {}

    def observe(self, policy, observation: Mapping[str, Any], batch: dict[str, Any]) -> None:
        """Add to `batch` (a prepared observation) what context_tokens needs when acting."""

    def executed(self, policy, action: np.ndarray) -> None:
        """The policy has just executed `action` (A, dataset units)."""

    def reset(self) -> None:
        """A new episode starts."""

    def at_step(self, step: int, total: int) -> None:
        """Training is about to run step `step` of `total`."""
