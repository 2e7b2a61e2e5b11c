"""Labels of an episode and the observation-language-motion triplet.

An *anchor* is a step t of an episode (every `stride` steps). For each anchor
the labelers produce the motion of K query points (a grid on frame t) over a
horizon of T steps: index j of the horizon is step t + j, so j = 0 is the
query frame itself. Steps past the end of the episode are padded (NaN for
floats, False for masks) and marked out of range: never faked.

Frames are stored once per episode; a triplet refers to its anchor frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

DEFAULT_GRID = 20  # 20 x 20 query grid -> K = 400
DEFAULT_HORIZON = 32  # T
DEFAULT_STRIDE = 4
DEFAULT_FLOW_GAP = 1
DEFAULT_CHUNK = 10  # action chunk length
# A reader's `cameras` that means each episode's primary camera (its manifest's primary_camera).
PRIMARY_CAMERA = "primary"
# The anchor arrays a reader puts in every triplet whatever `labels` it is asked for: which steps
# the anchors are, and the point tracks the contract requires.
ALWAYS_READ = ("anchor_step", "tracks_px", "visible", "in_range")
LATENT_PAD_TOKEN = -1  # token value for steps with no frame t + gap (mask False)
MOTION_IMAGE_SCALE = 64.0  # s of the invertible sqrt encoding (LangToMo)


@dataclass
class EpisodeLabels:
    """Every label of one episode, stacked over its N anchors.

    Shapes (N anchors, K points, T horizon, L latent tokens, H x W image):
      anchors         N          int32   step index t of each anchor
      tracks_px       N K T 2    float32 pixel (x, y), pixel centres at +0.5; NaN out of range
      visible         N K T      bool    tracker says the point is visible
      in_range        N T        bool    step t + j exists in the episode
      depth_m         N K T      float32 metres along the optical axis at the track; NaN if unknown
      points_cam_m    N K T 3    float32 camera-frame 3D (OpenCV axes, metres); NaN if unknown
      valid_3d        N K T      bool    visible & in range & inside image & valid depth
      motion_image    N H W 3    uint8   flow t -> t + gap, invertible encoding (labelers.flow)
      flow_valid      N          bool    False where t + gap is past the end
      latent_tokens   N L        int16   codebook indices; LATENT_PAD_TOKEN where masked
      latent_valid    N          bool
    """

    anchors: np.ndarray
    tracks_px: np.ndarray
    visible: np.ndarray
    in_range: np.ndarray
    depth_m: Optional[np.ndarray] = None  # None when the episode has no depth at all
    points_cam_m: Optional[np.ndarray] = None
    valid_3d: Optional[np.ndarray] = None
    motion_image: Optional[np.ndarray] = None
    flow_valid: Optional[np.ndarray] = None
    latent_tokens: Optional[np.ndarray] = None
    latent_valid: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None  # [fx, fy, cx, cy] float32
    intrinsics_estimated: bool = True
    depth_kind: str = "missing"  # "metric" (dataset/sim), "fitted" (relative model fitted to anchors), "metric-model", "missing"
    flow_gap: int = DEFAULT_FLOW_GAP
    backends: dict[str, str] = field(default_factory=dict)  # label -> backend name, e.g. {"tracks": "lk"}

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])

    def uvd(self) -> np.ndarray:
        """The (u, v, depth) form LaMP trains on: N K T 3 (pixels, pixels, metres)."""
        depth = self.depth_m if self.depth_m is not None else np.full(self.tracks_px.shape[:3], np.nan, np.float32)
        return np.concatenate([self.tracks_px, depth[..., None]], axis=-1)


def anchor_steps(num_steps: int, stride: int) -> np.ndarray:
    """Anchor steps 0, stride, 2*stride, ... < num_steps."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return np.arange(0, num_steps, stride, dtype=np.int32)


@dataclass
class Triplet:
    """One training example as the trainer-facing reader yields it.

    images: camera -> H x W x 3 uint8 at the anchor step
    proprio: P float32 at the anchor step (empty when the dataset has none)
    language: instruction string
    motion: the anchor's slice of EpisodeLabels (K T ... arrays) as a dict
    action_chunk: C x A float32 from the anchor step; action_chunk_valid: C bool
    """

    episode_id: str
    anchor: int
    images: dict[str, np.ndarray]
    proprio: np.ndarray
    language: str
    motion: dict[str, np.ndarray]
    action_chunk: np.ndarray
    action_chunk_valid: np.ndarray
    intrinsics: np.ndarray
    meta: dict = field(default_factory=dict)
