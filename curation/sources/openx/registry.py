"""Registry of Open X-Embodiment datasets: where each keeps its cameras, depth, language,
actions and proprio, at what rate it was recorded, and its quirks.

The per-dataset differences of Open-X live here and only here (dlimp / Octo style): one
`DatasetConfig` per dataset plus, where the raw layout needs more than key lookups, one
small named standardisation function (`standardize`, run on the parsed arrays before the
generic mapping) or finishing function (`finalize`, run on the built Episode). The reader
(curation/rlds.py) is generic and never branches on a dataset name.

Key paths are relative to an RLDS step ("observation/image", "action/world_vector") or,
for `episode_metadata/...`, to the episode. Facts (camera keys, encodings, rates) were
checked against Octo's and OpenVLA's Open-X configs, LeRobot's Open-X rates and the
datasets' own features.json descriptions; entries whose units were not verifiable say so
in `notes`.

A dataset not listed here still reads: `infer_dataset_config` guesses the keys from its
features.json (and the reader logs a warning).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

# Action / proprio encodings (names, so a consumer can decide whether two datasets mix).
EEF_DELTA = "eef_delta_xyz_rpy_gripper"  # 3 translation + 3 rotation deltas + gripper
EEF_DELTA_QUAT = "eef_delta_xyz_quat_gripper"
EEF_VELOCITY = "eef_velocity_xyz_rpy_gripper"
EEF_ABS = "eef_abs_xyz_rpy_gripper"
JOINT_POS = "joint_pos_gripper"
JOINT_VEL = "joint_vel_gripper"
PLANAR_XY = "eef_delta_xy"  # language_table: 2-d planar end-effector delta
METAWORLD = "metaworld_delta_xyz_gripper"
UNKNOWN = "unknown"

# Language kinds.
LANG_STRING = "string"  # a Text feature per step
LANG_CODEPOINTS = "codepoints"  # int32[N] UTF-8 code points, zero padded (language_table)
LANG_NONE = "none"


@dataclass(frozen=True)
class DepthSpec:
    """A depth channel: `key` (observation path) aligned with RGB camera `camera`.

    metres = raw * scale_to_m; raw 0 means no reading (becomes NaN) when zero_is_invalid."""

    key: str
    camera: str
    scale_to_m: float = 1.0
    units: str = "m"  # units of the raw values, for reports ("m", "mm", "1/1024 m", "unknown")
    zero_is_invalid: bool = True


@dataclass(frozen=True)
class RawEpisode:
    """One parsed episode before the generic mapping: arrays keyed by path.

    steps: "observation/image" -> T encoded images (bytes objects), "action" -> T x 7, ...
    metadata: "file_path" -> bytes, "seed" -> int, ... (episode_metadata without the prefix)
    """

    steps: dict[str, Any]
    metadata: dict[str, Any]
    where: str  # describes the episode for error messages


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    primary_camera: str  # observation key of the main third-person RGB camera
    secondary_camera: Optional[str] = None
    wrist_camera: Optional[str] = None
    extra_cameras: tuple[str, ...] = ()  # further RGB keys carried along (bridge image_2, image_3)
    depth: tuple[DepthSpec, ...] = ()
    language_key: Optional[str] = "language_instruction"  # step path; None when absent
    language_kind: str = LANG_STRING
    language_informative: bool = True  # False where the dataset carries placeholder language
    action_keys: tuple[str, ...] = ("action",)  # step paths, concatenated in this order
    action_encoding: str = EEF_DELTA
    proprio_keys: tuple[str, ...] = ()  # step paths, concatenated in this order
    proprio_encoding: str = ""
    control_hz: float = math.nan  # NaN = unknown
    bgr_cameras: tuple[str, ...] = ()  # cameras stored with blue and red swapped
    intrinsics: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()  # (camera, (fx, fy, cx, cy)) published
    extra_step_keys: tuple[str, ...] = ()  # further step paths `finalize` needs
    standardize: Optional[Callable[[RawEpisode], RawEpisode]] = None
    finalize: Optional[Callable[[Any, RawEpisode], Any]] = None  # (Episode, RawEpisode) -> Episode
    inferred: bool = False  # True when guessed from features.json, not registered
    notes: str = ""

    @property
    def cameras(self) -> tuple[str, ...]:
        """All RGB cameras, primary first."""
        keys = [self.primary_camera, self.secondary_camera, self.wrist_camera, *self.extra_cameras]
        out: list[str] = []
        for k in keys:
            if k and k not in out:
                out.append(k)
        return tuple(out)

    @property
    def depth_keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.depth)

    def intrinsics_for(self, camera: str) -> Optional[tuple[float, float, float, float]]:
        return dict(self.intrinsics).get(camera)


# --------------------------------------------------------------------------------------
# Standardisation functions: one per dataset whose raw layout needs more than key lookups.


def _decode_zlib_float32(values: np.ndarray, width: int, where: str, key: str) -> np.ndarray:
    """T ZLIB-compressed float32 byte strings -> T x width float32."""
    from schemas.episode import EpisodeError

    out = np.empty((len(values), width), np.float32)
    for t, blob in enumerate(values):
        try:
            arr = np.frombuffer(zlib.decompress(bytes(blob)), dtype="<f4")
        except zlib.error as e:
            raise EpisodeError(where, f"step {t} {key}: not ZLIB-compressed float32 ({e})") from None
        if arr.size != width:
            raise EpisodeError(where, f"step {t} {key}: expected {width} floats after ZLIB, got {arr.size}")
        out[t] = arr
    return out


def standardize_kuka(raw: RawEpisode) -> RawEpisode:
    """kuka stores proprio as ZLIB-compressed float32 bytes: decode to arrays in place."""
    steps = dict(raw.steps)
    for key, width in (("observation/clip_function_input/base_pose_tool_reached", 7), ("observation/gripper_closed", 1)):
        if key in steps and steps[key].dtype == object:
            steps[key] = _decode_zlib_float32(steps[key], width, raw.where, key)
    return replace(raw, steps=steps)


def finalize_metaworld_sim(episode, raw: RawEpisode):
    """Attach the simulator's ground truth and calibration (curation/simulate.py writes it)."""
    from schemas.episode import CameraIntrinsics, EpisodeError, SimGroundTruth

    cam = "image"
    md = raw.metadata
    try:
        fx, fy, cx, cy = (float(v) for v in np.asarray(md["intrinsics"]).reshape(4))
        cam_to_world = np.asarray(md["cam_to_world"], np.float64).reshape(4, 4)
    except KeyError as e:
        raise EpisodeError(raw.where, f"missing episode_metadata/{e.args[0]}") from None
    H, W = episode.frames[cam].shape[1:3]
    episode.intrinsics[cam] = CameraIntrinsics(fx, fy, cx, cy, int(W), int(H), estimated=False)
    episode.extrinsics[cam] = cam_to_world
    if "success" in md:
        episode.success = bool(md["success"])
    if "control_hz" in md and np.isfinite(md["control_hz"]) and float(md["control_hz"]) > 0:
        episode.control_hz = float(md["control_hz"])  # the simulator records its own rate
    seg = np.asarray(raw.steps["observation/segmentation"], np.int32)
    body_pos = np.asarray(raw.steps["ground_truth/body_pos"], np.float64)
    body_quat = np.asarray(raw.steps["ground_truth/body_quat"], np.float64)
    # Body arrays are NaN-padded to the dataset's largest task; keep this task's bodies.
    num_bodies = int(md.get("num_bodies", body_pos.shape[1]))
    body_pos, body_quat = body_pos[:, :num_bodies], body_quat[:, :num_bodies]
    if not (np.all(np.isfinite(body_pos)) and np.all(np.isfinite(body_quat))):
        raise EpisodeError(raw.where, "non-finite ground-truth body pose within the episode's bodies")
    names = md.get("body_names", b"")
    names = names.decode() if isinstance(names, bytes) else str(names)
    episode.ground_truth = SimGroundTruth(
        segmentation=seg, body_pos=body_pos, body_quat=body_quat, cam_to_world=cam_to_world, camera=cam,
        body_names=tuple(names.split("\n")[:num_bodies]) if names else (),
    )
    if seg.shape != episode.frames[cam].shape[:3]:
        raise EpisodeError(raw.where, f"segmentation shape {seg.shape} != frames {episode.frames[cam].shape[:3]}")
    return episode


def finalize_maniskill(episode, raw: RawEpisode):
    """maniskill publishes per-step OpenCV intrinsics (3x3) and extrinsics (world-to-camera 4x4)."""
    from schemas.episode import CameraIntrinsics

    for cam, prefix in (("image", "main"), ("wrist_image", "wrist")):
        K = raw.steps.get(f"observation/{prefix}_camera_intrinsic_cv2")
        E = raw.steps.get(f"observation/{prefix}_camera_extrinsic_cv2")
        if cam not in episode.frames:
            continue
        H, W = episode.frames[cam].shape[1:3]
        if K is not None:
            k0 = np.asarray(K, np.float64).reshape(-1, 3, 3)[0]
            episode.intrinsics[cam] = CameraIntrinsics(k0[0, 0], k0[1, 1], k0[0, 2], k0[1, 2], int(W), int(H), False)
        if E is not None:
            world_to_cam = np.asarray(E, np.float64).reshape(-1, 4, 4)
            episode.extrinsics[cam] = np.linalg.inv(world_to_cam)  # T x 4 x 4 camera-to-world
    return episode


# --------------------------------------------------------------------------------------
# The table.

_GOOGLE_LANG = "observation/natural_language_instruction"
_RT1_ACTION = ("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action")


def _cfg(**kw) -> DatasetConfig:
    return DatasetConfig(**kw)


_CONFIGS: list[DatasetConfig] = [
    # ---- Google-produced datasets: action dicts, language in the observation.
    _cfg(name="fractal20220817_data", primary_camera="image", language_key=_GOOGLE_LANG,
         action_keys=_RT1_ACTION, action_encoding=EEF_DELTA,
         proprio_keys=("observation/base_pose_tool_reached", "observation/gripper_closed"),
         proprio_encoding="eef_xyz_quat_gripper", control_hz=3.0,
         notes="RT-1 robot; action also has base_displacement_* and terminate_episode (not used)."),
    _cfg(name="kuka", primary_camera="image", language_key=_GOOGLE_LANG, language_informative=False,
         action_keys=_RT1_ACTION, action_encoding=EEF_DELTA,
         proprio_keys=("observation/clip_function_input/base_pose_tool_reached", "observation/gripper_closed"),
         proprio_encoding="eef_xyz_quat_gripper", control_hz=10.0, standardize=standardize_kuka,
         notes="QT-Opt grasping; proprio stored as ZLIB-compressed float32 bytes; language is a placeholder."),
    _cfg(name="bridge", primary_camera="image", language_key=_GOOGLE_LANG,
         action_keys=("action/world_vector", "action/rotation_delta", "action/open_gripper"),
         action_encoding=EEF_DELTA, proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_pad_gripper",
         control_hz=5.0, notes="BridgeData V2 as packaged in the Open-X mixture (0.1.0); open_gripper is bool."),
    _cfg(name="bridge_dataset", primary_camera="image_0", secondary_camera="image_1",
         extra_cameras=("image_2", "image_3"), action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_pad_gripper", control_hz=5.0,
         notes="BridgeData V2 from the project site (1.0.0); image_1..3 blank in many episodes "
               "(episode_metadata/has_image_N)."),
    _cfg(name="taco_play", primary_camera="rgb_static", wrist_camera="rgb_gripper",
         depth=(DepthSpec("observation/depth_static", "rgb_static", 1.0, "m"),
                DepthSpec("observation/depth_gripper", "rgb_gripper", 1.0, "m")),
         language_key=_GOOGLE_LANG, action_keys=("action/rel_actions_world",), action_encoding=EEF_DELTA,
         proprio_keys=("observation/robot_obs",), proprio_encoding="eef_xyz_rpy_gripper_joints", control_hz=15.0,
         notes="CALVIN-style play data; depth float32."),
    _cfg(name="jaco_play", primary_camera="image", wrist_camera="image_wrist", language_key=_GOOGLE_LANG,
         action_keys=("action/world_vector", "action/gripper_closedness_action"), action_encoding="eef_delta_xyz_gripper",
         proprio_keys=("observation/end_effector_cartesian_pos",), proprio_encoding="eef_xyz_quat", control_hz=10.0),
    _cfg(name="berkeley_cable_routing", primary_camera="image", secondary_camera="top_image",
         wrist_camera="wrist45_image", extra_cameras=("wrist225_image",), language_key=_GOOGLE_LANG,
         action_keys=("action/world_vector", "action/rotation_delta"), action_encoding="eef_delta_xyz_rpy",
         proprio_keys=("observation/robot_state",), proprio_encoding="joint_pos", control_hz=10.0),
    _cfg(name="roboturk", primary_camera="front_rgb", language_key=_GOOGLE_LANG, language_informative=False,
         action_keys=_RT1_ACTION, action_encoding=EEF_DELTA, control_hz=10.0,
         notes="RoboTurk real; language names the task family only."),
    _cfg(name="nyu_door_opening_surprising_effectiveness", primary_camera="image", language_key=_GOOGLE_LANG,
         action_keys=_RT1_ACTION, action_encoding=EEF_DELTA, control_hz=3.0,
         notes="The only camera is mounted on the gripper (wrist view)."),
    _cfg(name="viola", primary_camera="agentview_rgb", wrist_camera="eye_in_hand_rgb", language_key=_GOOGLE_LANG,
         language_informative=False, action_keys=_RT1_ACTION, action_encoding=EEF_DELTA,
         proprio_keys=("observation/joint_states", "observation/gripper_states"), proprio_encoding=JOINT_POS,
         control_hz=20.0),
    _cfg(name="berkeley_autolab_ur5", primary_camera="image", wrist_camera="hand_image",
         depth=(DepthSpec("observation/image_with_depth", "image", 1.0, "m"),), language_key=_GOOGLE_LANG,
         action_keys=_RT1_ACTION, action_encoding=EEF_DELTA, proprio_keys=("observation/robot_state",),
         proprio_encoding="joint_pos_eef_pose_gripper", control_hz=5.0, bgr_cameras=("hand_image",),
         notes="Wrist camera is stored BGR; depth float32, metres assumed (not verified)."),
    _cfg(name="toto", primary_camera="image", language_key=_GOOGLE_LANG, language_informative=False,
         action_keys=("action/world_vector", "action/rotation_delta", "action/open_gripper"), action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="joint_pos", control_hz=30.0),
    _cfg(name="language_table", primary_camera="rgb", language_key="observation/instruction",
         language_kind=LANG_CODEPOINTS, action_keys=("action",), action_encoding=PLANAR_XY,
         proprio_keys=("observation/effector_translation",), proprio_encoding="eef_xy", control_hz=10.0,
         notes="Instruction is int32[512] UTF-8 code points, zero padded."),
    _cfg(name="columbia_cairlab_pusht_real", primary_camera="image", wrist_camera="wrist_image",
         language_key=_GOOGLE_LANG, action_keys=_RT1_ACTION, action_encoding=EEF_DELTA,
         proprio_keys=("observation/robot_state",), proprio_encoding="eef_xy", control_hz=10.0),
    _cfg(name="bc_z", primary_camera="image", language_key="observation/natural_language_instruction",
         action_keys=("action/future/xyz_residual", "action/future/axis_angle_residual", "action/future/target_close"),
         action_encoding="eef_delta_xyz_axisangle_gripper_chunk",
         proprio_keys=("observation/present/xyz", "observation/present/axis_angle", "observation/present/sensed_close"),
         proprio_encoding="eef_xyz_axisangle_gripper", control_hz=10.0,
         notes="Actions are 10-step future chunks flattened."),
    # ---- Contributed datasets (*_converted_externally_to_rlds and friends): flat actions.
    _cfg(name="stanford_hydra_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat_rpy_gripper_joints", control_hz=10.0,
         bgr_cameras=("image", "wrist_image"), notes="Images stored BGR."),
    _cfg(name="austin_buds_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         proprio_keys=("observation/state",), proprio_encoding="joint_pos_gripper_eef", control_hz=20.0),
    _cfg(name="austin_sailor_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat_gripper", control_hz=20.0),
    _cfg(name="austin_sirius_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat_gripper", control_hz=20.0),
    _cfg(name="nyu_franka_play_dataset_converted_externally_to_rlds", primary_camera="image",
         secondary_camera="image_additional_view",
         depth=(DepthSpec("observation/depth", "image", 0.001, "mm"),
                DepthSpec("observation/depth_additional_view", "image_additional_view", 0.001, "mm")),
         action_encoding="eef_velocity_mixed", proprio_keys=("observation/state",), proprio_encoding="joint_pos_eef",
         control_hz=3.0, notes="Depth integer, millimetres assumed (not verified); action 15-d."),
    _cfg(name="maniskill_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         depth=(DepthSpec("observation/depth", "image", 1.0 / 1024.0, "1/1024 m"),
                DepthSpec("observation/wrist_depth", "wrist_image", 1.0 / 1024.0, "1/1024 m")),
         action_encoding=EEF_DELTA, proprio_keys=("observation/tcp_pose", "observation/gripper_state"),
         proprio_encoding="eef_xyz_quat_gripper", control_hz=20.0,
         extra_step_keys=("observation/main_camera_intrinsic_cv2", "observation/main_camera_extrinsic_cv2",
                          "observation/wrist_camera_intrinsic_cv2", "observation/wrist_camera_extrinsic_cv2"),
         finalize=finalize_maniskill,
         notes="Simulated; uint16 PNG depth, value / 1024 = metres; per-step intrinsics and extrinsics published."),
    _cfg(name="furniture_bench_dataset_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         action_encoding=EEF_DELTA_QUAT, proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat_vel_gripper",
         control_hz=10.0),
    _cfg(name="cmu_franka_exploration_dataset_converted_externally_to_rlds", primary_camera="highres_image",
         secondary_camera="image", action_encoding=EEF_DELTA, control_hz=10.0),
    _cfg(name="ucsd_kitchen_dataset_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_ABS,
         proprio_keys=("observation/state",), proprio_encoding="joint_pos", control_hz=2.0),
    _cfg(name="ucsd_pick_and_place_dataset_converted_externally_to_rlds", primary_camera="image",
         action_encoding="eef_velocity_xyz_gripper", proprio_keys=("observation/state",),
         proprio_encoding="eef_xyz_gripper", control_hz=3.0),
    _cfg(name="iamlab_cmu_pickup_insert_converted_externally_to_rlds", primary_camera="image", wrist_camera="wrist_image",
         action_encoding=EEF_ABS, proprio_keys=("observation/state",), proprio_encoding="joint_pos_gripper_eef",
         control_hz=20.0),
    _cfg(name="utaustin_mutex", primary_camera="image", wrist_camera="wrist_image",
         proprio_keys=("observation/state",), proprio_encoding="joint_pos_gripper_eef", control_hz=20.0,
         bgr_cameras=("image", "wrist_image"), notes="Images stored BGR."),
    _cfg(name="berkeley_fanuc_manipulation", primary_camera="image", wrist_camera="wrist_image",
         action_encoding="eef_delta_xyz_rpy", proprio_keys=("observation/state",), proprio_encoding="joint_pos_gripper",
         control_hz=10.0, bgr_cameras=("image", "wrist_image"), notes="Images stored BGR."),
    _cfg(name="cmu_stretch", primary_camera="image", action_encoding="eef_abs_xyz_gripper",
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_gripper", control_hz=10.0),
    _cfg(name="fmb", primary_camera="image_side_1", secondary_camera="image_side_2", wrist_camera="image_wrist_1",
         extra_cameras=("image_wrist_2",),
         depth=(DepthSpec("observation/image_side_1_depth", "image_side_1", 1.0, "unknown"),
                DepthSpec("observation/image_side_2_depth", "image_side_2", 1.0, "unknown"),
                DepthSpec("observation/image_wrist_1_depth", "image_wrist_1", 1.0, "unknown"),
                DepthSpec("observation/image_wrist_2_depth", "image_wrist_2", 1.0, "unknown")),
         action_encoding=EEF_DELTA, proprio_keys=("observation/eef_pose", "observation/state_gripper_pose"),
         proprio_encoding="eef_xyz_rpy_gripper", control_hz=10.0,
         notes="Functional Manipulation Benchmark; depth units not verified (scale 1)."),
    _cfg(name="dobbe", primary_camera="wrist_image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=3.75,
         notes="Hello Robot Stick; the only camera is on the gripper."),
    _cfg(name="droid", primary_camera="exterior_image_1_left", secondary_camera="exterior_image_2_left",
         wrist_camera="wrist_image_left",
         action_keys=("action_dict/cartesian_velocity", "action_dict/gripper_position"), action_encoding=EEF_VELOCITY,
         proprio_keys=("observation/cartesian_position", "observation/gripper_position"),
         proprio_encoding="eef_xyz_rpy_gripper", control_hz=15.0,
         notes="1.0.1; extrinsics only (not in the RLDS steps); language_instruction_2/3 are alternatives."),
    _cfg(name="stanford_kuka_multimodal_dataset_converted_externally_to_rlds", primary_camera="image",
         depth=(DepthSpec("observation/depth_image", "image", 1.0, "m"),), action_encoding=EEF_DELTA,
         proprio_keys=("observation/ee_position", "observation/ee_orientation"), proprio_encoding="eef_xyz_quat",
         control_hz=20.0, notes="Depth float32, metres assumed (not verified)."),
    _cfg(name="nyu_rot_dataset_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=3.0),
    _cfg(name="stanford_robocook_converted_externally_to_rlds", primary_camera="image_1", secondary_camera="image_2",
         extra_cameras=("image_3", "image_4"),
         depth=(DepthSpec("observation/depth_1", "image_1", 1.0, "m"), DepthSpec("observation/depth_2", "image_2", 1.0, "m")),
         action_encoding=EEF_DELTA, proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper",
         control_hz=5.0, notes="Extrinsics published outside the steps; depth metres assumed."),
    _cfg(name="uiuc_d3field", primary_camera="image_1", secondary_camera="image_2", extra_cameras=("image_3", "image_4"),
         depth=(DepthSpec("observation/depth_1", "image_1", 0.001, "mm"), DepthSpec("observation/depth_2", "image_2", 0.001, "mm")),
         action_encoding="eef_delta_xyz", control_hz=1.0, notes="uint16 PNG depth in millimetres."),
    _cfg(name="utokyo_pr2_opening_fridge_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_ABS,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=10.0),
    _cfg(name="utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds", primary_camera="image",
         action_encoding=EEF_ABS, proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper",
         control_hz=10.0),
    _cfg(name="utokyo_xarm_pick_and_place_converted_externally_to_rlds", primary_camera="image",
         secondary_camera="image2", wrist_camera="hand_image", action_encoding=EEF_ABS,
         proprio_keys=("observation/end_effector_pose",), proprio_encoding="eef_xyz_rpy", control_hz=10.0),
    _cfg(name="berkeley_mvp_converted_externally_to_rlds", primary_camera="hand_image", action_encoding=JOINT_POS,
         proprio_keys=("observation/joint_pos", "observation/gripper"), proprio_encoding=JOINT_POS, control_hz=5.0,
         notes="Wrist camera only."),
    _cfg(name="berkeley_rpt_converted_externally_to_rlds", primary_camera="hand_image", action_encoding=JOINT_POS,
         proprio_keys=("observation/joint_pos", "observation/gripper"), proprio_encoding=JOINT_POS, control_hz=30.0,
         notes="Wrist camera only."),
    _cfg(name="kaist_nonprehensile_converted_externally_to_rlds", primary_camera="image", action_encoding="eef_delta_xyz_rpy_gains",
         proprio_keys=("observation/state",), proprio_encoding="joint_pos_eef", control_hz=10.0),
    _cfg(name="tokyo_u_lsmo_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=10.0),
    _cfg(name="dlr_sara_pour_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy", control_hz=10.0),
    _cfg(name="dlr_sara_grid_clamp_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy", control_hz=10.0),
    _cfg(name="dlr_edan_shared_control_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=5.0),
    _cfg(name="asu_table_top_converted_externally_to_rlds", primary_camera="image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_rpy_gripper", control_hz=12.5),
    _cfg(name="imperialcollege_sawyer_wrist_cam", primary_camera="image", wrist_camera="wrist_image",
         action_encoding=EEF_DELTA, proprio_keys=("observation/state",), proprio_encoding="gripper", control_hz=10.0),
    _cfg(name="cmu_playing_with_food", primary_camera="image", wrist_camera="finger_vision_1", action_encoding=EEF_ABS,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat", control_hz=10.0),
    _cfg(name="cmu_play_fusion", primary_camera="image", action_encoding=EEF_ABS,
         proprio_keys=("observation/state",), proprio_encoding="joint_pos_gripper", control_hz=5.0),
    _cfg(name="usc_cloth_sim_converted_externally_to_rlds", primary_camera="image", action_encoding="eef_delta_xyz_gripper",
         control_hz=10.0),
    _cfg(name="plex_robosuite", primary_camera="image", wrist_camera="wrist_image", action_encoding=EEF_DELTA,
         proprio_keys=("observation/state",), proprio_encoding="eef_xyz_quat_gripper", control_hz=20.0),
    _cfg(name="conq_hose_manipulation", primary_camera="frontleft_fisheye_image", secondary_camera="frontright_fisheye_image",
         wrist_camera="hand_color_image", action_encoding=EEF_ABS, proprio_keys=("observation/state",),
         proprio_encoding="eef_xyz_quat_gripper", control_hz=30.0),
    # ---- Our simulator (curation/simulate.py): Meta-World with ground truth.
    _cfg(name="metaworld_sim", primary_camera="image",
         depth=(DepthSpec("observation/depth", "image", 1.0, "m", zero_is_invalid=True),),
         action_encoding=METAWORLD, proprio_keys=("observation/state",), proprio_encoding="eef_xyz_gripper",
         control_hz=80.0,
         extra_step_keys=("observation/segmentation", "ground_truth/body_pos", "ground_truth/body_quat"),
         finalize=finalize_metaworld_sim,
         notes="Meta-World v3 on MuJoCo 3.3 (frame_skip 5 x 2.5 ms = 80 Hz); depth along the optical axis, "
               "0 = background; segmentation = body id; body poses per step."),
]

REGISTRY: dict[str, DatasetConfig] = {c.name: c for c in _CONFIGS}


def get_dataset_config(name: str) -> Optional[DatasetConfig]:
    """The registered config for a dataset directory name, or None."""
    return REGISTRY.get(name)


# --------------------------------------------------------------------------------------
# Inference for unregistered datasets.


def _leaf_features(node: dict, prefix: str = "") -> dict[str, dict]:
    """Flatten a features.json node into {path: leaf node}; 'steps' sequences are entered."""
    out: dict[str, dict] = {}
    if "featuresDict" in node:
        for k, v in node["featuresDict"]["features"].items():
            out.update(_leaf_features(v, f"{prefix}{k}/"))
    elif "sequence" in node:
        out.update(_leaf_features(node["sequence"]["feature"], prefix))
    else:
        out[prefix.rstrip("/")] = node
    return out


def _kind(node: dict) -> str:
    return node.get("pythonClassName", "").rsplit(".", 1)[-1]


def _shape(node: dict) -> list[int]:
    spec = node.get("image") or node.get("tensor") or {}
    return [int(d) for d in spec.get("shape", {}).get("dimensions", [])]


def _dtype(node: dict) -> str:
    spec = node.get("image") or node.get("tensor") or {}
    return spec.get("dtype", "string" if _kind(node) == "Text" else "")


def infer_dataset_config(features_json: dict, name: str) -> DatasetConfig:
    """Guess a DatasetConfig from a features.json dict (the file's parsed content)."""
    leaves = _leaf_features(features_json)
    steps = {k[len("steps/"):]: v for k, v in leaves.items() if k.startswith("steps/")}

    images = [k for k, v in steps.items() if k.startswith("observation/") and _kind(v) == "Image"]
    rgb = [k for k in images if (_shape(steps[k]) or [0, 0, 3])[-1] == 3 and "depth" not in k]
    depth_imgs = [k for k in images if k not in rgb and "depth" in k]
    depth_tensors = [k for k, v in steps.items() if k.startswith("observation/") and "depth" in k
                     and _kind(v) == "Tensor" and len(_shape(v)) in (2, 3) and _dtype(v).startswith(("float", "uint", "int"))]
    if not rgb:
        raise ValueError(f"{name}: no RGB image feature under steps/observation in features.json")

    def cam_name(key: str) -> str:
        return key.split("/", 1)[1]

    cams = [cam_name(k) for k in rgb]
    wristy = [c for c in cams if any(w in c for w in ("wrist", "hand", "gripper", "eye_in_hand"))]
    third = [c for c in cams if c not in wristy]
    ordered = sorted(third, key=lambda c: (c not in ("image", "rgb", "image_0", "image_1"), c))
    primary = ordered[0] if ordered else wristy[0]
    secondary = ordered[1] if len(ordered) > 1 else None
    wrist = wristy[0] if wristy and primary != wristy[0] else None
    extra = tuple(c for c in cams if c not in (primary, secondary, wrist))

    def depth_camera(key: str) -> str:
        stem = cam_name(key).replace("_depth", "").replace("depth_", "image_").replace("depth", "image")
        return stem if stem in cams else primary

    depth = []
    for k in depth_imgs + depth_tensors:
        dt = _dtype(steps[k])
        if dt.startswith("float"):
            depth.append(DepthSpec(k, depth_camera(k), 1.0, "m"))
        else:
            depth.append(DepthSpec(k, depth_camera(k), 0.001, "mm"))

    lang_key, lang_kind = None, LANG_NONE
    for k, v in steps.items():
        if ("language" in k or "instruction" in k) and "embedding" not in k:
            if _kind(v) == "Text":
                lang_key, lang_kind = k, LANG_STRING
                break
            if _kind(v) == "Tensor" and _dtype(v) == "int32":
                lang_key, lang_kind = k, LANG_CODEPOINTS

    floaty = ("float32", "float64", "float16", "int32", "int64", "bool")
    if "action" in steps and _kind(steps["action"]) in ("Tensor", "Scalar"):
        action_keys: tuple[str, ...] = ("action",)
    else:
        action_keys = tuple(sorted(k for k, v in steps.items() if k.startswith("action/")
                                   and _dtype(v) in floaty and "terminate" not in k))
    if not action_keys:
        raise ValueError(f"{name}: no action feature under steps in features.json")

    proprio = tuple(k for k, v in steps.items() if k.startswith("observation/") and _kind(v) == "Tensor"
                    and _dtype(v).startswith("float") and len(_shape(v)) == 1
                    and any(s in k.rsplit("/", 1)[-1] for s in ("state", "proprio")))

    return DatasetConfig(
        name=name, primary_camera=primary, secondary_camera=secondary, wrist_camera=wrist, extra_cameras=extra,
        depth=tuple(depth), language_key=lang_key, language_kind=lang_kind,
        action_keys=action_keys, action_encoding=UNKNOWN, proprio_keys=proprio,
        proprio_encoding="unknown" if proprio else "", inferred=True,
        notes="inferred from features.json (not in the registry): check cameras, units and encodings",
    )
