"""The variants of the trainer (LaMPConfig.variant): which parts each builds, and what each
needs from the loader. The hooks themselves are documented in policy/variant_parts.py.

    lamp          nothing beside the two experts (scratch, none, lamp, lamp_gt, lamp_2d)
    motion_image  policy/motion_image_head.py: a motion-image head trained beside the Action Expert
    action_prior  policy/action_prior.py: action-only pretraining (phase prior) + history token + KD
    lafp          policy/lafp.py: a flow policy over the VQ latent actions (phase latent) + their decoder
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from policy.action_prior import ActionPriorParts, action_prior_fields
from policy.config import LaMPConfig
from policy.lafp import LAFPParts, latent_sample_fields
from policy.motion_image_head import MotionImageParts, motion_image_fields
from policy.variant_parts import VariantParts

PARTS = {"motion_image": MotionImageParts, "action_prior": ActionPriorParts, "lafp": LAFPParts}


def build_variant_parts(cfg: LaMPConfig) -> Optional[VariantParts]:
    """The parts of cfg.variant, or None for "lamp" (nothing beside the two experts)."""
    if cfg.variant == "lamp":
        return None
    if cfg.variant in PARTS:
        return PARTS[cfg.variant](cfg)
    raise ValueError(f"unknown variant {cfg.variant!r}")


def sample_fields(cfg: LaMPConfig, transform, triplet) -> dict[str, np.ndarray]:
    """Extra fields of one training sample for cfg.variant (none for "lamp"). `transform` is the
    loader's TripletTransform (its normalisation arrays), `triplet` the reader's Triplet."""
    if cfg.variant == "motion_image":
        return motion_image_fields(cfg, transform, triplet)
    if cfg.variant == "action_prior" and not transform.motion_only:
        return action_prior_fields(cfg, transform, triplet)
    if cfg.variant == "lafp":
        return latent_sample_fields(triplet)
    return {}


# The anchor arrays each variant's sample_fields read beside the motion (the loader's labels_read).
VARIANT_LABELS = {"motion_image": ("motion_image", "flow_valid"), "lafp": ("latent_tokens", "latent_valid")}


def variant_labels(cfg: LaMPConfig) -> tuple[str, ...]:
    return VARIANT_LABELS.get(cfg.variant, ())


def action_history_length(cfg: LaMPConfig) -> int:
    """Past actions per triplet the loader attaches for cfg.variant (0: none)."""
    return cfg.prior_history if cfg.variant == "action_prior" else 0
