"""True motion of pixels in a simulated episode: the oracle every motion labeler is scored against.

Recipe (REFERENCE section 3), per query pixel q on the anchor frame a:

    q --depth_a, K--> P_cam --cam_to_world--> P_world --body pose at a--> p_body (fixed on the body)
                      (body = segmentation_a at the pixel nearest q)
    p_body --body pose at a+j--> P_world(j) --world_to_cam--> P_cam(j) --K--> track(j), depth(j)

Visibility at a+j: the point projects inside the image and the depth rendered at
a+j in the pixel containing it agrees with the point's depth (within
`depth_tol_m`, default two pixel footprints); a nearer surface means occluded,
no surface means it fell off the silhouette. A point whose body did not
move keeps exactly its anchor position (zero flow, bit for bit).

Needs an Episode with `ground_truth` (SimGroundTruth), depth and intrinsics of
the ground-truth camera; everything is a pure function of arrays, no I/O.
Conventions: pixels (x, y) with pixel centres at (j + 0.5, i + 0.5); camera
frame OpenCV (x right, y down, z forward), metres; horizon index j is step
anchor + j (j = 0 is the anchor itself); steps past the end are NaN / False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from labelers.tracking.lk import grid_queries  # noqa: F401  (re-exported: the labelers' shared query grid)
from schemas.episode import CameraIntrinsics, Episode, EpisodeError
from schemas.triplet import DEFAULT_FLOW_GAP, DEFAULT_GRID, DEFAULT_HORIZON, EpisodeLabels

__all__ = [
    "grid_queries",
    "true_tracks",
    "true_scene_flow",
    "true_optical_flow",
    "true_motion",
    "true_labels",
    "project",
    "unproject",
    "quat_to_mat",
    "default_depth_tol_m",
]


def quat_to_mat(quat_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrices ... x 3 x 3 from unit quaternions ... x 4 (w, x, y, z), MuJoCo's order."""
    q = np.asarray(quat_wxyz, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def unproject(xy: np.ndarray, depth_m: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Pixels ... x 2 (x, y) with depth along the optical axis ... -> camera points ... x 3."""
    xy = np.asarray(xy, np.float64)
    z = np.asarray(depth_m, np.float64)
    x = (xy[..., 0] - intr.cx) / intr.fx * z
    y = (xy[..., 1] - intr.cy) / intr.fy * z
    return np.stack([x, y, z], axis=-1)


def project(points_cam_m: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Camera points ... x 3 -> pixels ... x 2 (x, y); NaN for points at or behind the camera."""
    p = np.asarray(points_cam_m, np.float64)
    z = p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intr.fx * p[..., 0] / z + intr.cx
        v = intr.fy * p[..., 1] / z + intr.cy
    behind = ~(z > 0)
    u = np.where(behind, np.nan, u)
    v = np.where(behind, np.nan, v)
    return np.stack([u, v], axis=-1)


def default_depth_tol_m(depth_m: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Occlusion tolerance: two pixel footprints at that depth (a surface inclined to the
    camera changes depth by about that much within a pixel), at least 1 cm."""
    return np.maximum(0.01, 2.0 * np.asarray(depth_m, np.float64) / min(intr.fx, intr.fy))


@dataclass
class _GT:
    """The arrays of one episode's ground truth, checked."""

    seg: np.ndarray  # T H W int32
    depth: np.ndarray  # T H W float32, NaN where no surface
    intr: CameraIntrinsics
    cam_to_world: np.ndarray  # 4 4 float64, OpenCV axes
    body_pos: np.ndarray  # T B 3
    body_quat: np.ndarray  # T B 4
    where: str

    @property
    def T(self) -> int:
        return int(self.seg.shape[0])

    @property
    def H(self) -> int:
        return int(self.seg.shape[1])

    @property
    def W(self) -> int:
        return int(self.seg.shape[2])


def _gt(episode: Episode) -> _GT:
    where = episode.provenance.describe()
    gt = episode.ground_truth
    if gt is None:
        raise EpisodeError(where, "no simulator ground truth (ground_truth is None)", stage="label")
    cam = gt.camera
    if cam not in episode.depth_m:
        raise EpisodeError(where, f"ground truth needs depth of camera {cam!r}; episode has {sorted(episode.depth_m)}", stage="label")
    if cam not in episode.intrinsics:
        raise EpisodeError(where, f"ground truth needs intrinsics of camera {cam!r}", stage="label")
    seg = np.asarray(gt.segmentation)
    depth = np.asarray(episode.depth_m[cam])
    T = episode.num_steps
    if seg.ndim != 3 or seg.shape[0] != T or depth.shape != seg.shape:
        raise EpisodeError(where, f"segmentation {seg.shape} / depth {depth.shape} must both be {T} x H x W", stage="label")
    if gt.body_pos.shape[:1] != (T,) or gt.body_quat.shape[:2] != gt.body_pos.shape[:2]:
        raise EpisodeError(where, f"body poses {gt.body_pos.shape} / {gt.body_quat.shape} must be {T} x B x 3 / 4", stage="label")
    intr = episode.intrinsics[cam]
    if (intr.height, intr.width) != seg.shape[1:]:
        raise EpisodeError(where, f"intrinsics are for {intr.width}x{intr.height}, images are {seg.shape[2]}x{seg.shape[1]}", stage="label")
    if int(seg.max(initial=-1)) >= gt.body_pos.shape[1]:
        raise EpisodeError(where, f"segmentation has body id {int(seg.max())} but only {gt.body_pos.shape[1]} body poses", stage="label")
    c2w = np.asarray(gt.cam_to_world, np.float64)
    if c2w.shape != (4, 4):
        raise EpisodeError(where, f"cam_to_world must be 4 x 4 (fixed camera), got {c2w.shape}", stage="label")
    return _GT(seg, depth, intr, c2w, gt.body_pos, gt.body_quat, where)


def _check_anchor(g: _GT, anchor: int, horizon: int) -> None:
    if not 0 <= anchor < g.T:
        raise EpisodeError(g.where, f"anchor {anchor} outside the episode (0..{g.T - 1})", stage="label")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")


def _nearest_pixel(xy: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column of the pixel containing each (x, y), and whether it is inside the image."""
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    col = np.clip(np.floor(np.nan_to_num(x, nan=-1.0)), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor(np.nan_to_num(y, nan=-1.0)), 0, H - 1).astype(np.int64)
    return row, col, inside


def _visible_at(g: _GT, step: int, uv: np.ndarray, z: np.ndarray, tol_m: Optional[float]) -> np.ndarray:
    """Whether points with pixel uv (N 2) and depth z (N) are seen at `step`: inside the
    image, and the depth rendered at the pixel containing the point agrees with the
    point's depth (a nearer surface = occluded; no surface = off the silhouette)."""
    u, v = uv[:, 0], uv[:, 1]
    finite = np.isfinite(u) & np.isfinite(v) & np.isfinite(z)
    row, col, inside = _nearest_pixel(np.where(finite[:, None], uv, -1.0), g.H, g.W)
    tol = default_depth_tol_m(z, g.intr) if tol_m is None else np.full(z.shape, float(tol_m))
    rendered = g.depth[step][row, col]
    with np.errstate(invalid="ignore"):
        agree = np.abs(rendered - z) <= tol
    return finite & inside & (z > 0) & agree


def _move_points(g: _GT, anchor: int, queries_xy: np.ndarray, horizon: int):
    """Core: camera-frame trajectories of the query points.

    Returns points_cam (K T 3 float64, NaN where unknown), foreground (K), in_range (T)."""
    _check_anchor(g, anchor, horizon)
    q = np.asarray(queries_xy, np.float64).reshape(-1, 2)
    K = q.shape[0]
    row, col, inside = _nearest_pixel(q, g.H, g.W)
    z = g.depth[anchor, row, col].astype(np.float64)
    body = g.seg[anchor, row, col].astype(np.int64)
    fg = inside & np.isfinite(z) & (z > 0) & (body >= 0)

    steps = anchor + np.arange(horizon)
    in_range = steps < g.T
    points = np.full((K, horizon, 3), np.nan)
    if not fg.any():
        return points, fg, in_range

    R_cw = g.cam_to_world[:3, :3]
    t_cw = g.cam_to_world[:3, 3]
    k_fg = np.nonzero(fg)[0]
    b = body[k_fg]
    p_cam = unproject(q[k_fg], z[k_fg], g.intr)  # F 3
    p_world = p_cam @ R_cw.T + t_cw
    pos_a = np.asarray(g.body_pos[anchor], np.float64)[b]  # F 3
    quat_a = np.asarray(g.body_quat[anchor])[b]
    R_a = quat_to_mat(quat_a)  # F 3 3
    p_body = np.einsum("fji,fj->fi", R_a, p_world - pos_a)  # R_a^T (p - t_a)

    valid_steps = steps[in_range]
    pos_j = np.asarray(g.body_pos[valid_steps], np.float64)[:, b]  # Tv F 3
    quat_j = np.asarray(g.body_quat[valid_steps])[:, b]  # Tv F 4
    # A body whose pose is unchanged keeps its points exactly where they were.
    moved = np.any(pos_j != np.asarray(g.body_pos[anchor])[b][None], axis=-1) | np.any(
        quat_j != quat_a[None], axis=-1
    )  # Tv F
    R_j = quat_to_mat(quat_j)  # Tv F 3 3
    world_j = np.einsum("tfij,fj->tfi", R_j, p_body) + pos_j
    world_j = np.where(moved[..., None], world_j, p_world[None])
    cam_j = (world_j - t_cw) @ R_cw  # R_cw^T (p - t)
    points[k_fg[:, None], np.nonzero(in_range)[0][None, :]] = cam_j.transpose(1, 0, 2)
    return points, fg, in_range


def true_motion(
    episode: Episode,
    anchor: int,
    queries_xy: np.ndarray,
    horizon: int = DEFAULT_HORIZON,
    depth_tol_m: Optional[float] = None,
) -> dict[str, np.ndarray]:
    """Every true label of K query points over `horizon` steps from `anchor`, in the
    EpisodeLabels layout for one anchor:

      tracks_px    K T 2 float32  pixel (x, y); NaN where unknown (background query, past the end)
      visible      K T   bool     inside the image and not occluded
      in_range     T     bool     anchor + j < num_steps
      depth_m      K T   float32  depth of the point along the optical axis (even when occluded)
      points_cam_m K T 3 float32  camera frame, OpenCV axes, metres (even when occluded)
      valid_3d     K T   bool     visible & in range & inside the image & known depth
      foreground   K     bool     the query hit a body (has depth and a body id)
    """
    g = _gt(episode)
    q = np.asarray(queries_xy, np.float64).reshape(-1, 2)
    points, fg, in_range = _move_points(g, anchor, q, horizon)
    K = q.shape[0]
    uv = project(points, g.intr)  # K T 2
    # Tracks = query + displacement of the projection, so j = 0 is the query itself and
    # a point that did not move has exactly zero displacement.
    tracks = q[:, None, :] + (uv - uv[:, :1, :])
    visible = np.zeros((K, horizon), bool)
    for j in np.nonzero(in_range)[0]:
        visible[:, j] = fg & _visible_at(g, anchor + int(j), tracks[:, j], points[:, j, 2], depth_tol_m)
    depth = points[..., 2]
    return {
        "tracks_px": tracks.astype(np.float32),
        "visible": visible,
        "in_range": in_range,
        "depth_m": depth.astype(np.float32),
        "points_cam_m": points.astype(np.float32),
        "valid_3d": visible & in_range[None] & np.isfinite(depth),
        "foreground": fg,
    }


def true_tracks(
    episode: Episode,
    anchor: int,
    queries_xy: np.ndarray,
    horizon: int = DEFAULT_HORIZON,
    depth_tol_m: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True 2D tracks of K query pixels on frame `anchor`: (tracks_px K T 2 float32,
    visible K T bool, in_range T bool). Background queries: NaN tracks, never visible."""
    m = true_motion(episode, anchor, queries_xy, horizon, depth_tol_m)
    return m["tracks_px"], m["visible"], m["in_range"]


def true_scene_flow(
    episode: Episode, anchor: int, queries_xy: np.ndarray, horizon: int = DEFAULT_HORIZON
) -> tuple[np.ndarray, np.ndarray]:
    """True camera-frame 3D trajectories: (points_cam_m K T 3 float32, valid K T bool).

    valid = the query hit a body and the step is in range: the simulator knows where
    the point is even while it is occluded or outside the image (AND with `visible`
    from true_tracks for what a camera could see)."""
    g = _gt(episode)
    points, fg, in_range = _move_points(g, anchor, queries_xy, horizon)
    return points.astype(np.float32), fg[:, None] & in_range[None, :]


def true_optical_flow(
    episode: Episode, t: int, gap: int = DEFAULT_FLOW_GAP, depth_tol_m: Optional[float] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dense true optical flow from frame t to t + gap at every pixel centre:
    (flow_px H W 2 float32 (dx, dy), valid H W bool).

    valid = the pixel shows a body at t, t + gap exists, and the point is inside the
    image and not occluded at t + gap. flow is NaN where the motion is unknown
    (background, t + gap past the end); occluded points keep their true flow."""
    g = _gt(episode)
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    yy, xx = np.mgrid[0 : g.H, 0 : g.W]
    q = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    m = true_motion(episode, t, q, horizon=gap + 1, depth_tol_m=depth_tol_m)
    flow = (m["tracks_px"][:, gap] - q).reshape(g.H, g.W, 2).astype(np.float32)
    valid = m["visible"][:, gap].reshape(g.H, g.W)
    return flow, valid


def true_labels(
    episode: Episode,
    anchors: Sequence[int],
    grid: int = DEFAULT_GRID,
    horizon: int = DEFAULT_HORIZON,
    depth_tol_m: Optional[float] = None,
) -> EpisodeLabels:
    """Ground-truth EpisodeLabels (tracks, visibility, depth, 3D points) on the shared
    query grid, for scoring labelers. Motion images and latent actions are left None."""
    g = _gt(episode)
    q = grid_queries(g.H, g.W, grid)
    per = [true_motion(episode, int(a), q, horizon, depth_tol_m) for a in anchors]
    stack = lambda key: np.stack([m[key] for m in per]) if per else None  # noqa: E731
    N, K = len(per), q.shape[0]
    return EpisodeLabels(
        anchors=np.asarray(anchors, np.int32),
        tracks_px=stack("tracks_px") if per else np.zeros((0, K, horizon, 2), np.float32),
        visible=stack("visible") if per else np.zeros((0, K, horizon), bool),
        in_range=stack("in_range") if per else np.zeros((0, horizon), bool),
        depth_m=stack("depth_m") if N else None,
        points_cam_m=stack("points_cam_m") if N else None,
        valid_3d=stack("valid_3d") if N else None,
        intrinsics=g.intr.as_array(),
        intrinsics_estimated=False,
        depth_kind="metric",
        backends={"tracks": "ground_truth", "depth": "ground_truth", "points_3d": "ground_truth"},
    )
