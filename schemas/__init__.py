"""The data contract: typed records every stage reads and writes (see CONTRACT.md)."""

from schemas.dataset import CONTRACT_VERSION, MANIFEST_SCHEMA, QUARANTINE_SCHEMA, SHARD_ARRAYS, ArraySpec
from schemas.episode import CameraIntrinsics, Episode, EpisodeError, Provenance, SimGroundTruth
from schemas.triplet import EpisodeLabels, Triplet, anchor_steps

__all__ = [
    "CONTRACT_VERSION", "MANIFEST_SCHEMA", "QUARANTINE_SCHEMA", "SHARD_ARRAYS", "ArraySpec",
    "CameraIntrinsics", "Episode", "EpisodeError", "Provenance", "SimGroundTruth",
    "EpisodeLabels", "Triplet", "anchor_steps",
]
