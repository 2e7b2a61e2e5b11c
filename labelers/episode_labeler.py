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

from schemas.config import check_keys
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
# Scene-flow outlier removal (LabelConfig.outlier_removal): a lifted point farther from its
# neighbours than mean + 3 standard deviations of the neighbour distances is dropped (the usual
# three-sigma rule of statistical outlier removal, as in Open3D's remove_statistical_outlier).
OUTLIER_STD_RATIO = 3.0

# Where tracks, visibility and 3D points come from: our labelers, or the simulator's ground truth
# (an episode with SimGroundTruth only; the label-quality ablation trains on it).
MOTION_SOURCES = ("labelers", "ground_truth")


@dataclass
class LabelConfig:
    """Backends and parameters of every labeler (serialised into dataset.json)."""

    depth: str = "dataset"  # "dataset" | "depth-anything"
    depth_params: dict = field(default_factory=dict)
    motion_source: str = "labelers"  # "labelers" (tracker + depth) | "ground_truth" (simulator oracle, labelers/eval/ground_truth.py)
    tracker: str = "lk"  # "lk" | "flow" | "learned" | "cotracker" (labelers/tracking/registry.py)
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
    max_depth_speed_rel: float = 1.6  # ... and from one above this per second at the episode's rate (0 = off)
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

    def depth_jump_rel(self, control_hz: float) -> float:
        """The per-step relative depth jump that masks a 3D track at this rate
        (labelers.sceneflow.depth_jump_threshold of the two limits; 0 = no mask)."""
        from labelers.sceneflow import depth_jump_threshold

        return depth_jump_threshold(self.max_depth_jump_rel, self.max_depth_speed_rel, control_hz)

    def loads_model(self) -> bool:
        """Whether building the labeler loads a model: a backend that declares one
        (labelers.backends), or the latent action model."""
        from labelers.backends import loads_model

        chosen = [("depth", self.depth, self.depth_params), ("tracker", self.tracker, self.tracker_params)]
        if self.flow:
            chosen.append(("flow", self.flow, self.flow_params))
        return any(loads_model(*c) for c in chosen) or bool(self.latent_checkpoint)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelConfig":
        d = check_keys(cls, d, "label config key(s)")
        return cls(**{k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()})


class EpisodeLabeler:
    """`labeler(episode) -> EpisodeLabels` for every anchor of the episode."""

    def __init__(self, config: Optional[LabelConfig] = None, tracker=None, depth_backend=None, flow_backend=None, latent=None):
        """Backends come from the config; pass built ones to override (tests, shared models)."""
        from labelers.depth import get_depth_backend
        from labelers.flow import get_flow_backend
        from labelers.tracking.registry import get_tracker

        self.config = config or LabelConfig()
        c = self.config
        self.depth = depth_backend or get_depth_backend(c.depth, **c.depth_params)
        self.tracker = tracker or get_tracker(c.tracker, **c.tracker_params)
        self.flow = flow_backend or (get_flow_backend(c.flow, **c.flow_params) if c.flow else None)
        self.latent = latent
        if self.latent is None and c.latent_checkpoint:
            from labelers.latent.labeler import LatentActionLabeler

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
        frames = episode.frames[cam]  # T H W 3
        anchors = anchor_steps(frames.shape[0], c.stride)  # N
        grays = [to_gray(f) for f in frames]
        textured = np.array([int(g.max()) - int(g.min()) >= MIN_TEXTURE_LEVELS for g in grays])  # T
        if c.motion_source == "ground_truth":
            labels = self._ground_truth_motion(episode, cam, anchors)
        else:
            labels = self._tracked_motion(episode, cam, grays, textured, anchors)
        labels.flow_gap = int(c.flow_gap)
        if self.flow is not None:
            labels.motion_image, labels.flow_valid = self._motion_images(frames, grays, textured, anchors)
        if self.latent is not None:
            labels.latent_tokens, labels.latent_valid = self._latent_tokens(frames, anchors)
        return labels

    def _ground_truth_motion(self, episode: Episode, cam: str, anchors: np.ndarray) -> EpisodeLabels:
        """Tracks, visibility, depth and 3D points from the simulator (labelers/eval/ground_truth.py)
        on the same query grid and anchors as the labelers."""
        from labelers.eval.ground_truth import true_labels

        gt = episode.ground_truth
        if gt is None or gt.camera != cam:
            have = "no ground truth" if gt is None else f"ground truth of camera {gt.camera!r}"
            raise EpisodeError(episode.provenance.describe(), f"motion_source ground_truth needs simulator ground truth "
                               f"of camera {cam!r}; episode has {have}", stage="label")
        labels = true_labels(episode, anchors, self.config.grid, self.config.horizon)
        labels.backends = self.backends
        return labels

    def _tracked_motion(self, episode: Episode, cam: str, grays, textured, anchors) -> EpisodeLabels:
        """Tracks of the grid queries from every anchor, lifted to 3D with the depth backend."""
        from labelers.sceneflow import intrinsics_or_estimate

        c = self.config
        frames = episode.frames[cam]  # T H W 3
        H, W = frames.shape[1:3]
        tracks, visible, in_range = self._tracks(frames, grays, textured, anchors)
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
            # only the backends of labels this episode has: no depth, no depth backend named
            backends={k: v for k, v in self.backends.items() if k != "depth" or depth_res.depth_m is not None},
        )
        if depth_res.depth_m is not None:
            labels.depth_m, labels.points_cam_m, labels.valid_3d = self._scene_flow(
                tracks, visible, in_range, anchors, depth_res.depth_m, intr, episode.control_hz)
        return labels

    def _tracks(self, frames, grays, textured, anchors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tracks N K T 2, visible N K T, in_range N T of the grid queries from every anchor.
        A point on a textureless frame is not "seen": no texture, no evidence."""
        from labelers.tracking.common import grid_queries, track_anchors

        c = self.config
        n_steps, H, W = frames.shape[:3]
        steps = anchors[:, None] + np.arange(c.horizon)[None, :]  # N T
        in_range = steps < n_steps
        queries = grid_queries(H, W, c.grid)  # K 2
        if getattr(self.tracker, "takes_gray_frames", False):
            tracks, visible = self.tracker.track_anchors(frames, anchors, queries, c.horizon, pyramids=grays)
        else:
            tracks, visible = track_anchors(self.tracker, frames, anchors, queries, c.horizon)
        tracks[~np.broadcast_to(in_range[:, None, :], visible.shape)] = np.nan
        visible &= in_range[:, None, :]
        frame_textured = np.where(in_range, textured[np.minimum(steps, n_steps - 1)], False)  # N T
        visible[:, :, 1:] &= frame_textured[:, None, 1:]
        visible &= textured[anchors][:, None, None]
        return tracks, visible, in_range

    def _scene_flow(self, tracks, visible, in_range, anchors, depth_m, intr, control_hz: float):
        """(depth N K T, points N K T 3, valid_3d N K T): tracks lifted to 3D with the depth."""
        from labelers.sceneflow import lift_tracks, statistical_inliers

        c = self.config
        steps = anchors[:, None] + np.arange(c.horizon)[None, :]  # N T
        frame_index = np.where(in_range, steps, -1)[:, None, :]  # N 1 T
        sf = lift_tracks(tracks, visible, depth_m, intr, frame_index=frame_index, edge_rel=c.edge_rel,
                         max_depth_jump_rel=c.depth_jump_rel(control_hz))
        valid, points, depth_track = sf.valid_3d, sf.points_cam_m, sf.depth_m
        if c.outlier_removal:
            for n in range(anchors.size):
                bad = ~statistical_inliers(points[n, :, 0], std_ratio=OUTLIER_STD_RATIO) & valid[n, :, 0]
                valid[n, bad] = False
            points[~valid] = np.nan
            depth_track[~valid] = np.nan
        return depth_track, points, valid

    def _motion_images(self, frames, grays, textured, anchors) -> tuple[np.ndarray, np.ndarray]:
        """(motion images N H W 3 uint8, flow_valid N): the flow from each anchor to anchor + gap."""
        from labelers.flow import encode_motion_image

        c = self.config
        n_steps, H, W = frames.shape[:3]
        motion = np.empty((anchors.size, H, W, 3), np.uint8)
        flow_valid = np.zeros(anchors.size, bool)
        zero = encode_motion_image(np.zeros((H, W, 2), np.float32))
        flow_fn = getattr(self.flow, "flow_gray", None)
        for n, a in enumerate(anchors):
            b = a + c.flow_gap
            if b >= n_steps or not (textured[a] and textured[b]):
                motion[n] = zero
                continue
            flow = flow_fn(grays[a], grays[b]) if flow_fn else self.flow(frames[a], frames[b])
            motion[n] = encode_motion_image(flow)
            flow_valid[n] = True
        return motion, flow_valid

    def _latent_tokens(self, frames, anchors) -> tuple[np.ndarray, np.ndarray]:
        """(tokens N L int16, padded where not valid; valid N). latent_gap None: the labeler uses
        the gap its checkpoint was trained with."""
        tokens, ok = self.latent(frames, anchors, self.config.latent_gap)
        tokens = np.asarray(tokens, np.int16).copy()
        ok = np.asarray(ok, bool)
        tokens[~ok] = LATENT_PAD_TOKEN
        return tokens, ok


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
