"""The base of a variant's parts (policy/variants.py describes the hooks): every hook does
nothing. Its own module so that a variant's parts (policy/lafp.py, ...) can build on it while
policy/variants.py picks among them, without an import cycle."""

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
