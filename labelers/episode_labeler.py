"""The label stage: one Episode in, its EpisodeLabels out.

    episode --frames of one camera--> depth backend ---------------------> depth T H W (metres) | missing
                                   \\-> tracker (grid queries, every anchor) -> tracks N K T 2, visible
                                   \\-> flow backend (t -> t + gap) -------> motion images N H W 3
                                   \\-> latent action labeler (optional) ---> tokens N L
            tracks + depth + intrinsics (or a field-of-view estimate) --> points_cam_m N K T 3, valid_3d

`EpisodeLabeler(config)` is a callable class: it builds its backends (and
loads any model) once, then labels episodes; runners (local, Beam, Ray) call
it and know nothing else about labeling. Nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from schemas.episode import Episode, EpisodeError
from schemas.triplet import (
    DEFAULT_FLOW_GAP,
    DEFAULT_GRID,
    DEFAULT_HORIZON,
    DEFAULT_STRIDE,
    LATENT_PAD_TOKEN,
    EpisodeLabels,
    anchor_steps,
)

# A frame whose grey values span fewer levels than this carries no texture to
# measure motion on (all black, all white, a blank camera).
MIN_TEXTURE_LEVELS = 4

# Where tracks, visibility and 3D points come from: our labelers, or the simulator's ground truth
# (an episode with SimGroundTruth only; the label-quality ablation trains on it).
MOTION_SOURCES = ("labelers", "ground_truth")


@dataclass
class LabelConfig:
    """Backends and parameters of every labeler (serialised into dataset.json)."""

    depth: str = "dataset"  # "dataset" | "depth-anything"
    depth_params: dict = field(default_factory=dict)
    motion_source: str = "labelers"  # "labelers" (tracker + depth) | "ground_truth" (simulator oracle, labelers/ground_truth.py)
    tracker: str = "lk"  # "lk" | "cotracker"
    tracker_params: dict = field(default_factory=dict)
    grid: int = DEFAULT_GRID  # queries: grid x grid cell centres of the anchor frame
    horizon: int = DEFAULT_HORIZON  # T: steps t .. t + T - 1
    stride: int = DEFAULT_STRIDE  # anchors every `stride` steps
    flow: str = "dis"  # "dis" | "farneback" | "" (no motion images)
    flow_params: dict = field(default_factory=dict)
    flow_gap: int = DEFAULT_FLOW_GAP
    fov_deg: float = 55.0  # assumed vertical field of view when the episode has no intrinsics
    edge_rel: float = 0.05  # depth sampling: relative jump treated as an occlusion edge
    max_depth_jump_rel: float = 0.2  # mask a 3D track from a relative depth jump this large on (0 = off)
    outlier_removal: bool = False  # open3d statistical outlier removal (16 neighbours, 3 std) on each anchor's 3D points
    camera: str = ""  # "" = the episode's primary camera
    latent_checkpoint: Optional[str] = None  # LAM checkpoint; None = no latent action tokens
    latent_gap: Optional[int] = None  # None = the checkpoint's own gap

    def __post_init__(self):
        for name in ("grid", "horizon", "stride", "flow_gap"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LabelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.motion_source not in MOTION_SOURCES:
            raise ValueError(f"LabelConfig.motion_source must be one of {MOTION_SOURCES}, got {self.motion_source!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown label config key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()})


class EpisodeLabeler:
    """`labeler(episode) -> EpisodeLabels` for every anchor of the episode."""

    def __init__(self, config: Optional[LabelConfig] = None, tracker=None, depth_backend=None, flow_backend=None, latent=None):
        """Backends come from the config; pass built ones to override (tests, shared models)."""
        from labelers.depth import get_depth_backend
        from labelers.flow import get_flow_backend
        from labelers.tracks import get_tracker

        self.config = config or LabelConfig()
        c = self.config
        self.depth = depth_backend or get_depth_backend(c.depth, **c.depth_params)
        self.tracker = tracker or get_tracker(c.tracker, **c.tracker_params)
        self.flow = flow_backend or (get_flow_backend(c.flow, **c.flow_params) if c.flow else None)
        self.latent = latent
        if self.latent is None and c.latent_checkpoint:
            from labelers.latent_action import LatentActionLabeler

            self.latent = LatentActionLabeler.from_checkpoint(c.latent_checkpoint)

    @property
    def backends(self) -> dict[str, str]:
        if self.config.motion_source == "ground_truth":
            out = {"depth": "ground_truth", "tracks": "ground_truth", "points_3d": "ground_truth"}
        else:
            out = {"depth": self.depth.name, "tracks": self.tracker.name}
        if self.flow is not None:
            out["flow"] = self.flow.name
        if self.latent is not None:
            out["latent"] = "lam"
        return out

    def __call__(self, episode: Episode) -> EpisodeLabels:
        where = episode.provenance.describe()
        try:
            episode.check()
            return self._label(episode)
        except EpisodeError:
            raise
        except (ValueError, RuntimeError) as e:
            raise EpisodeError(where, f"labeling failed: {e}", stage="label") from e

    # -- the work

    def _label(self, episode: Episode) -> EpisodeLabels:
        from labelers.flow import to_gray

        c = self.config
        where = episode.provenance.describe()
        cam = c.camera or episode.primary_camera
        if cam not in episode.frames:
            raise EpisodeError(where, f"camera {cam!r} not in episode (has {episode.cameras})", stage="label")
        if cam in episode.blank_cameras:
            raise EpisodeError(where, f"camera {cam!r} is blank in this episode", stage="label")
        frames = episode.frames[cam]
        anchors = anchor_steps(frames.shape[0], c.stride)
        grays = [to_gray(f) for f in frames]
        textured = np.array([int(g.max()) - int(g.min()) >= MIN_TEXTURE_LEVELS for g in grays])
        if c.motion_source == "ground_truth":
            labels = self._ground_truth_motion(episode, cam, anchors)
        else:
            labels = self._tracked_motion(episode, cam, anchors, grays, textured)
        labels.flow_gap = int(c.flow_gap)
        if self.flow is not None:
            labels.motion_image, labels.flow_valid = self._motion_images(frames, anchors, grays, textured)
        if self.latent is not None:
            # latent_gap None: the labeler uses the gap its checkpoint was trained with.
            tokens, ok = self.latent(frames, anchors, c.latent_gap)
            tokens = np.asarray(tokens, np.int16).copy()
            ok = np.asarray(ok, bool)
            tokens[~ok] = LATENT_PAD_TOKEN
            labels.latent_tokens, labels.latent_valid = tokens, ok
        return labels

    def _ground_truth_motion(self, episode: Episode, cam: str, anchors: np.ndarray) -> EpisodeLabels:
        """Tracks, visibility, depth and 3D points from the simulator (labelers/ground_truth.py)
        on the same query grid and anchors as the labelers."""
        from labelers.ground_truth import true_labels

        gt = episode.ground_truth
        if gt is None or gt.camera != cam:
            have = "no ground truth" if gt is None else f"ground truth of camera {gt.camera!r}"
            raise EpisodeError(episode.provenance.describe(), f"motion_source ground_truth needs simulator ground truth "
                               f"of camera {cam!r}; episode has {have}", stage="label")
        labels = true_labels(episode, anchors, self.config.grid, self.config.horizon)
        labels.backends = self.backends
        return labels

    def _tracked_motion(self, episode: Episode, cam: str, anchors: np.ndarray, grays, textured) -> EpisodeLabels:
        """Tracks of the grid queries from every anchor, lifted to 3D with the depth backend."""
        from labelers.sceneflow import intrinsics_or_estimate, lift_tracks, statistical_inliers
        from labelers.tracks import FlowTracker, LKTracker, grid_queries, track_anchors

        c = self.config
        frames = episode.frames[cam]
        n_steps, H, W = frames.shape[:3]
        N, T = anchors.size, c.horizon
        steps = anchors[:, None] + np.arange(T)[None, :]  # N T
        in_range = steps < n_steps

        queries = grid_queries(H, W, c.grid)
        if isinstance(self.tracker, FlowTracker) or (isinstance(self.tracker, LKTracker) and not self.tracker.color):
            # Share the grey frames instead of converting them again.
            tracks, visible = self.tracker.track_anchors(frames, anchors, queries, T, pyramids=grays)
        else:
            tracks, visible = track_anchors(self.tracker, frames, anchors, queries, T)
        tracks[~np.broadcast_to(in_range[:, None, :], visible.shape)] = np.nan
        visible &= in_range[:, None, :]
        # No texture, no evidence: a point on a textureless frame is not "seen" (j > 0).
        frame_textured = np.where(in_range, textured[np.minimum(steps, n_steps - 1)], False)
        visible[:, :, 1:] &= frame_textured[:, None, 1:]
        visible &= textured[anchors][:, None, None]

        intr = intrinsics_or_estimate(episode.intrinsics.get(cam), H, W, c.fov_deg)
        depth_res = self.depth(frames, episode.depth_m.get(cam))
        labels = EpisodeLabels(
            anchors=anchors.astype(np.int32),
            tracks_px=tracks.astype(np.float32),
            visible=visible,
            in_range=in_range,
            intrinsics=intr.as_array(),
            intrinsics_estimated=bool(intr.estimated),
            depth_kind=depth_res.kind,
            flow_gap=int(c.flow_gap),
            backends=self.backends,
        )
        if depth_res.depth_m is not None:
            frame_index = np.where(in_range, steps, -1)[:, None, :]  # N 1 T
            sf = lift_tracks(tracks, visible, depth_res.depth_m, intr, frame_index=frame_index, edge_rel=c.edge_rel,
                             max_depth_jump_rel=c.max_depth_jump_rel)
            valid = sf.valid_3d
            points = sf.points_cam_m
            depth_track = sf.depth_m
            if c.outlier_removal:
                for n in range(N):
                    bad = ~statistical_inliers(points[n, :, 0], std_ratio=3.0) & valid[n, :, 0]
                    valid[n, bad] = False
                points[~valid] = np.nan
                depth_track[~valid] = np.nan
            labels.depth_m, labels.points_cam_m, labels.valid_3d = depth_track, points, valid
        return labels

    def _motion_images(self, frames: np.ndarray, anchors: np.ndarray, grays, textured) -> tuple[np.ndarray, np.ndarray]:
        """Optical flow anchor -> anchor + flow_gap of every anchor, encoded: (N H W 3 uint8, N bool)."""
        from labelers.flow import encode_motion_image

        c = self.config
        n_steps, H, W = frames.shape[:3]
        N = anchors.size
        motion = np.empty((N, H, W, 3), np.uint8)
        flow_valid = np.zeros(N, bool)
        zero = encode_motion_image(np.zeros((H, W, 2), np.float32))
        for n, a in enumerate(anchors):
            b = a + c.flow_gap
            if b >= n_steps or not (textured[a] and textured[b]):
                motion[n] = zero
                continue
            flow_fn = getattr(self.flow, "flow_gray", None)
            flow = flow_fn(grays[a], grays[b]) if flow_fn else self.flow(frames[a], frames[b])
            motion[n] = encode_motion_image(flow)
            flow_valid[n] = True
        return motion, flow_valid


def label_summary(labels: EpisodeLabels) -> dict[str, Any]:
    """A few numbers describing one episode's labels (for logs and reports)."""
    out = {
        "anchors": labels.num_anchors,
        "visible_share": float(labels.visible[labels.in_range[:, None, :].repeat(labels.visible.shape[1], 1)].mean())
        if labels.in_range.any()
        else float("nan"),
        "depth_kind": labels.depth_kind,
        "intrinsics_estimated": labels.intrinsics_estimated,
    }
    if labels.valid_3d is not None:
        out["valid_3d_share"] = float(labels.valid_3d.mean())
    if labels.flow_valid is not None:
        out["flow_valid_share"] = float(labels.flow_valid.mean())
    return out
