"""The normalised in-memory episode record every source produces.

Data flows one way: source -> Episode -> labelers -> triplets -> shard writer.
Every reader (Open-X RLDS, the Meta-World simulator, any RLDS directory) turns
its native layout into this one record, so nothing downstream knows where an
episode came from.

Units and frames
- images: uint8 RGB, T x H x W x 3 (channel order fixed to RGB by the reader,
  BGR datasets are flipped there).
- depth: float32 metres along the optical axis, T x H x W; NaN where unknown.
- intrinsics: pinhole in pixels, pixel centres at (j + 0.5, i + 0.5).
- extrinsics: camera-to-world 4 x 4, OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Provenance:
    """Where an episode came from; the episode id is derived from it, so a
    rerun of a job over the same input produces the same ids."""

    dataset: str  # dataset name, e.g. "bridge_dataset"
    version: str  # dataset version, e.g. "1.0.0"
    split: str  # TFDS split, e.g. "train"
    episode_index: int  # index of the episode within the split
    file: str = ""  # tfrecord shard (or other file) holding it
    source_url: str = ""  # dataset directory or bucket URL it was read from

    @property
    def episode_id(self) -> str:
        key = f"{self.dataset}/{self.version}/{self.split}/{self.episode_index}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def describe(self) -> str:
        where = f" ({self.file})" if self.file else ""
        return f"{self.dataset}/{self.version} split={self.split} episode={self.episode_index}{where}"


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels for an image of width x height."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    estimated: bool = False  # True when derived from an assumed field of view

    def matrix(self) -> np.ndarray:
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def as_array(self) -> np.ndarray:
        """[fx, fy, cx, cy] float32, the form stored in shards and manifests."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float32)

    @classmethod
    def from_fov(cls, width: int, height: int, fovy_deg: float, estimated: bool = True) -> "CameraIntrinsics":
        """Square pixels, principal point at the centre, vertical field of view fovy."""
        fy = (height / 2.0) / np.tan(np.deg2rad(fovy_deg) / 2.0)
        return cls(float(fy), float(fy), width / 2.0, height / 2.0, int(width), int(height), estimated)


@dataclass
class SimGroundTruth:
    """What the simulator knows and a real dataset does not; enough to compute
    the true motion of any pixel (see labelers/ground_truth.py).

    segmentation: T x H x W int32 body id per pixel for the primary camera, -1 background.
    body_pos: T x B x 3 float64 world positions of every MuJoCo body.
    body_quat: T x B x 4 float64 world orientations (w, x, y, z) of every body.
    cam_to_world: 4 x 4 float64, OpenCV axes (the camera is fixed).
    """

    segmentation: np.ndarray
    body_pos: np.ndarray
    body_quat: np.ndarray
    cam_to_world: np.ndarray
    camera: str = "image"  # which camera of the episode this describes
    body_names: tuple[str, ...] = ()  # MuJoCo body names by id ("hand", "obj", ...); () when unknown


@dataclass(frozen=True)
class EncodedFrames:
    """A camera's frames as the source stored them, one encoded image per step ("jpeg" or
    "png"), kept so the shard writer can store the source's own bytes instead of re-encoding
    (curation/store/encodings.py). Only set when they decode to exactly `Episode.frames`."""

    format: str
    blobs: tuple[bytes, ...]


@dataclass
class Episode:
    """One episode, normalised. See module docstring for units."""

    provenance: Provenance
    language: str  # the instruction; "" when the dataset has none or it is uninformative
    frames: dict[str, np.ndarray]  # camera -> T x H x W x 3 uint8 RGB
    actions: np.ndarray  # T x A float32
    action_encoding: str  # e.g. "eef_delta_xyz_rpy_gripper"
    control_hz: float
    primary_camera: str
    depth_m: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> T x H x W float32 metres
    proprio: Optional[np.ndarray] = None  # T x P float32
    proprio_encoding: str = ""
    intrinsics: dict[str, CameraIntrinsics] = field(default_factory=dict)
    extrinsics: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> 4x4 or T x 4 x 4
    success: Optional[bool] = None
    language_informative: bool = True  # False for datasets known to carry placeholder language
    blank_cameras: tuple[str, ...] = ()  # cameras that are all zeros (absent) in this episode
    ground_truth: Optional[SimGroundTruth] = None
    encoded_frames: dict[str, EncodedFrames] = field(default_factory=dict)  # camera -> the source's bytes

    @property
    def episode_id(self) -> str:
        return self.provenance.episode_id

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def cameras(self) -> list[str]:
        return list(self.frames)

    def check(self) -> None:
        """Raise EpisodeError naming the episode when the record breaks the contract."""
        where = self.provenance.describe()
        T = self.num_steps
        if T == 0:
            raise EpisodeError(where, "empty episode (0 steps)")
        if self.actions.ndim != 2:
            raise EpisodeError(where, f"actions must be T x A, got shape {self.actions.shape}")
        if not np.all(np.isfinite(self.actions)):
            bad = np.argwhere(~np.isfinite(self.actions))[0]
            raise EpisodeError(where, f"non-finite action at step {bad[0]} dim {bad[1]}")
        if self.primary_camera not in self.frames:
            raise EpisodeError(where, f"primary camera {self.primary_camera!r} missing")
        for cam, fr in self.frames.items():
            if fr.dtype != np.uint8 or fr.ndim != 4 or fr.shape[-1] != 3 or fr.shape[0] != T:
                raise EpisodeError(where, f"camera {cam!r}: expected {T} x H x W x 3 uint8, got {fr.shape} {fr.dtype}")
        for cam, d in self.depth_m.items():
            if d.dtype != np.float32 or d.shape != self.frames[cam].shape[:3]:
                raise EpisodeError(where, f"depth {cam!r}: expected float32 {self.frames[cam].shape[:3]}, got {d.shape} {d.dtype}")
        if self.proprio is not None and self.proprio.shape[0] != T:
            raise EpisodeError(where, f"proprio has {self.proprio.shape[0]} steps, actions {T}")


class EpisodeError(ValueError):
    """A bad episode: the message names the file, episode and reason."""

    def __init__(self, where: str, reason: str, stage: str = "read", provenance: Optional[Provenance] = None):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason
        self.stage = stage
        self.provenance = provenance  # set by readers for errors that belong to one episode

    def __reduce__(self):  # keep every field across process boundaries (Beam, Ray)
        return (EpisodeError, (self.where, self.reason, self.stage, self.provenance))
