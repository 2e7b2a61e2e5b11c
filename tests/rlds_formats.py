"""The Open-X feature layouts the differential tests write (no tests here).

Each entry copies a real dataset's `features.json` (names, feature classes, dtypes, which
keys are Images and which Tensors, image encodings) from the TFDS catalog; image sizes are
the real ones where they are small, and scaled down by the factor given otherwise, keeping
what matters: cameras of one dataset that differ in size still differ. Google-produced
datasets declare no `encodingFormat` and hold JPEG bytes; contributed ones say png/jpeg.

`make_episode(features, T, seed, overrides)` fills any such features with values: moving
textures for cameras (so the job's static filter keeps them), metric depth with some zero
(no reading) pixels, numbers for tensors, an instruction for language.
"""

from __future__ import annotations

import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

Image, Tensor, Text, Scalar = tfds.features.Image, tfds.features.Tensor, tfds.features.Text, tfds.features.Scalar
FD = tfds.features.FeaturesDict

EMBEDDING = 512  # universal-sentence-encoder language embeddings of the Open-X datasets
JPEG_BYTES = "jpeg bytes"  # marks a Google-style camera: no encodingFormat, JPEG content


def rgb(h: int, w: int, fmt=None) -> Image:
    return Image(shape=(h, w, 3), dtype=np.uint8, encoding_format=fmt)


def google(obs: dict, action: dict) -> FD:
    """Google-produced layout: action dict, language (a tf.string Tensor) in the observation."""
    obs = {"natural_language_embedding": Tensor(shape=(EMBEDDING,), dtype=np.float32),
           "natural_language_instruction": Tensor(shape=(), dtype=tf.string), **obs}
    return FD({"steps": tfds.features.Dataset({
        "observation": FD(obs), "action": FD(action), "reward": Scalar(dtype=np.float32),
        "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})})


def contributed(obs: dict, action_dim: int) -> FD:
    """Contributed (*_converted_externally_to_rlds) layout: flat action, step Text language, file_path."""
    return FD({
        "steps": tfds.features.Dataset({
            "observation": FD(obs), "action": Tensor(shape=(action_dim,), dtype=np.float32),
            "discount": Scalar(dtype=np.float32), "reward": Scalar(dtype=np.float32),
            "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
            "language_instruction": Text(), "language_embedding": Tensor(shape=(EMBEDDING,), dtype=np.float32)}),
        "episode_metadata": FD({"file_path": Text()}),
    })


RT1_ACTION = {"world_vector": Tensor(shape=(3,), dtype=np.float32), "rotation_delta": Tensor(shape=(3,), dtype=np.float32),
              "gripper_closedness_action": Tensor(shape=(), dtype=np.float32),
              "terminate_episode": Tensor(shape=(), dtype=np.float32)}


def _kuka() -> FD:
    action = {"base_displacement_vector": Tensor(shape=(2,), dtype=np.float32),
              "base_displacement_vertical_rotation": Tensor(shape=(1,), dtype=np.float32),
              "gripper_closedness_action": Tensor(shape=(1,), dtype=np.float32),
              "rotation_delta": Tensor(shape=(3,), dtype=np.float32), "world_vector": Tensor(shape=(3,), dtype=np.float32),
              "terminate_episode": Tensor(shape=(3,), dtype=np.int32)}
    obs = {"image": rgb(51, 64), "clip_function_input/base_pose_tool_reached": Tensor(shape=(), dtype=tf.string),
           "clip_function_input/workspace_bounds": Tensor(shape=(), dtype=tf.string),
           "gripper_closed": Tensor(shape=(), dtype=tf.string), "task_id": Tensor(shape=(1,), dtype=np.float32)}
    return google(obs, action)


def _language_table() -> FD:
    return FD({"steps": tfds.features.Dataset({
        "observation": FD({"rgb": rgb(36, 64), "instruction": Tensor(shape=(512,), dtype=np.int32),
                           "effector_translation": Tensor(shape=(2,), dtype=np.float32),
                           "effector_target_translation": Tensor(shape=(2,), dtype=np.float32)}),
        "action": Tensor(shape=(2,), dtype=np.float32), "reward": Scalar(dtype=np.float32),
        "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})})


def _maniskill() -> FD:
    depth = Image(shape=(32, 32, 1), dtype=np.uint16, encoding_format="png")
    return contributed({
        "image": rgb(32, 32, "png"), "wrist_image": rgb(32, 32, "png"), "depth": depth, "wrist_depth": depth,
        "state": Tensor(shape=(18,), dtype=np.float32), "base_pose": Tensor(shape=(7,), dtype=np.float32),
        "tcp_pose": Tensor(shape=(7,), dtype=np.float32), "target_object_or_part_initial_pose": Tensor(shape=(7,), dtype=np.float32),
        "target_object_or_part_initial_pose_valid": Tensor(shape=(7,), dtype=np.uint8),
        "target_object_or_part_final_pose": Tensor(shape=(7,), dtype=np.float32),
        "target_object_or_part_final_pose_valid": Tensor(shape=(7,), dtype=np.uint8),
        "main_camera_intrinsic_cv2": Tensor(shape=(3, 3), dtype=np.float64),
        "main_camera_extrinsic_cv2": Tensor(shape=(4, 4), dtype=np.float64),
        "main_camera_cam2world_gl": Tensor(shape=(4, 4), dtype=np.float64),
        "wrist_camera_intrinsic_cv2": Tensor(shape=(3, 3), dtype=np.float64),
        "wrist_camera_extrinsic_cv2": Tensor(shape=(4, 4), dtype=np.float64),
        "wrist_camera_cam2world_gl": Tensor(shape=(4, 4), dtype=np.float64),
        "gripper_state": Tensor(shape=(2,), dtype=np.float32)}, 7)


# name -> (features, the real layout's notes). Sizes: "real" or the scale applied.
FORMATS: dict[str, tuple] = {
    # Cameras of different sizes, float Tensor depth per camera (real sizes).
    "taco_play": (google(
        {"rgb_static": rgb(150, 200), "rgb_gripper": rgb(84, 84),
         "depth_static": Tensor(shape=(150, 200), dtype=np.float32), "depth_gripper": Tensor(shape=(84, 84), dtype=np.float32),
         "robot_obs": Tensor(shape=(15,), dtype=np.float32), "structured_language_instruction": Tensor(shape=(), dtype=tf.string)},
        {"actions": Tensor(shape=(7,), dtype=np.float32), "rel_actions_world": Tensor(shape=(7,), dtype=np.float32),
         "rel_actions_gripper": Tensor(shape=(7,), dtype=np.float32), "terminate_episode": Tensor(shape=(), dtype=np.float32)}),
        "real sizes: rgb_static 150x200, rgb_gripper 84x84, float32 depth Tensors"),
    # Image of dtype float32 (4-channel uint8 PNG of float32 bytes); BGR wrist camera. 480x640 / 10.
    "berkeley_autolab_ur5": (google(
        {"image": rgb(48, 64), "hand_image": rgb(48, 64), "image_with_depth": Image(shape=(48, 64, 1), dtype=np.float32),
         "robot_state": Tensor(shape=(15,), dtype=np.float32)}, RT1_ACTION),
        "480x640 / 10; image_with_depth Image float32"),
    # ZLIB-compressed float32 in tf.string tensors, keys containing '/', placeholder language. 512x640 / 10.
    "kuka": (_kuka(), "512x640 / 10; proprio ZLIB bytes; language 'pick anything'"),
    # int32 code-point language. 360x640 / 10.
    "language_table": (_language_table(), "360x640 / 10; instruction int32[512] code points"),
    # uint16 PNG depth (1/1024 m) per camera, per-step float64 calibration tensors. 256 / 8.
    "maniskill_dataset_converted_externally_to_rlds": (_maniskill(), "256x256 / 8; uint16 PNG depth"),
    # uint16 PNG depth in mm, four cameras (two with depth). 360x640 / 10.
    "uiuc_d3field": (FD({"steps": tfds.features.Dataset({
        "observation": FD({**{f"image_{i}": rgb(36, 64, "png") for i in range(1, 5)},
                           **{f"depth_{i}": Image(shape=(36, 64, 1), dtype=np.uint16, encoding_format="png") for i in range(1, 5)}}),
        "action": Tensor(shape=(3,), dtype=np.float32), "language_instruction": Text(),
        "reward": Scalar(dtype=np.float32), "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_})}),
        "360x640 / 10; uint16 PNG depth (mm)"),
    # Integer depth Tensors (mm assumed). Real size 128x128.
    "nyu_franka_play_dataset_converted_externally_to_rlds": (contributed({
        "image": rgb(128, 128, "jpeg"), "image_additional_view": rgb(128, 128, "jpeg"),
        "depth": Tensor(shape=(128, 128, 1), dtype=np.int32), "depth_additional_view": Tensor(shape=(128, 128, 1), dtype=np.int32),
        "state": Tensor(shape=(13,), dtype=np.float32)}, 15), "real 128x128; int32 depth Tensors"),
    # float32 depth Tensor H x W x 1. Real size 128x128.
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": (contributed({
        "image": rgb(128, 128, "png"), "depth_image": Tensor(shape=(128, 128, 1), dtype=np.float32),
        "ee_position": Tensor(shape=(3,), dtype=np.float32), "ee_orientation": Tensor(shape=(4,), dtype=np.float32),
        "state": Tensor(shape=(8,), dtype=np.float32)}, 4), "real 128x128; float32 depth Tensor x 1"),
    # Four cameras, float32 depth Tensors. 256 / 8.
    "stanford_robocook_converted_externally_to_rlds": (contributed({
        **{f"image_{i}": rgb(32, 32, "png") for i in range(1, 5)},
        **{f"depth_{i}": Tensor(shape=(32, 32), dtype=np.float32) for i in range(1, 5)},
        "state": Tensor(shape=(7,), dtype=np.float32)}, 7), "256x256 / 8; float32 depth Tensors"),
    # Four cameras each with a depth Tensor. 256 / 8.
    "fmb": (contributed({
        **{k: rgb(32, 32, "png") for k in ("image_side_1", "image_side_2", "image_wrist_1", "image_wrist_2")},
        **{f"{k}_depth": Tensor(shape=(32, 32), dtype=np.float32)
           for k in ("image_side_1", "image_side_2", "image_wrist_1", "image_wrist_2")},
        "eef_pose": Tensor(shape=(7,), dtype=np.float32), "state_gripper_pose": Tensor(shape=(1,), dtype=np.float32)}, 7),
        "256x256 / 8; float32 depth Tensors"),
    # Cameras of different sizes. 360x640 and 240x320, / 10.
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": (contributed({
        "image": rgb(36, 64, "png"), "wrist_image": rgb(24, 32, "png"), "state": Tensor(shape=(20,), dtype=np.float32)}, 8),
        "360x640 and 240x320 / 10"),
    # A 480x640 camera beside a 64x64 one (/ 10 and real).
    "cmu_franka_exploration_dataset_converted_externally_to_rlds": (contributed({
        "highres_image": rgb(48, 64, "png"), "image": rgb(64, 64, "png")}, 8), "480x640 / 10 and real 64x64"),
    # Fisheye cameras beside a hand camera of another size (726x604 and 480x640, / 10).
    "conq_hose_manipulation": (contributed({
        "frontleft_fisheye_image": rgb(73, 60, "png"), "frontright_fisheye_image": rgb(73, 60, "png"),
        "hand_color_image": rgb(48, 64, "png"), "state": Tensor(shape=(7,), dtype=np.float32)}, 7),
        "726x604 and 480x640 / 10"),
    # BGR-stored cameras.
    "stanford_hydra_dataset_converted_externally_to_rlds": (contributed({
        "image": rgb(24, 32, "png"), "wrist_image": rgb(24, 32, "png"), "state": Tensor(shape=(27,), dtype=np.float32)}, 7),
        "240x320 / 10; BGR"),
    "utaustin_mutex": (contributed({
        "image": rgb(128, 128, "jpeg"), "wrist_image": rgb(128, 128, "jpeg"), "state": Tensor(shape=(24,), dtype=np.float32)}, 7),
        "real 128x128 JPEG; BGR"),
    "berkeley_fanuc_manipulation": (contributed({
        "image": rgb(28, 28, "png"), "wrist_image": rgb(28, 28, "png"), "state": Tensor(shape=(13,), dtype=np.float32)}, 6),
        "224x224 / 8; BGR"),
}


# ---------------------------------------------------------------------------------------- values


def moving_texture(T: int, h: int, w: int, seed: int) -> np.ndarray:
    """T x h x w x 3 uint8: 4-px blobs sliding one pixel per step (trackable, not static)."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 255, (-(-h // 4), -(-(w + T) // 4), 3), dtype=np.uint8)
    big = np.repeat(np.repeat(big, 4, 0), 4, 1)[:h, : w + T]
    return np.stack([big[:, t:t + w] for t in range(T)])


def _depth_values(rng, shape, dtype) -> np.ndarray:
    """Metric-looking depth: metres in float, millimetres in integers; 5% zeros (no reading)."""
    if np.issubdtype(dtype, np.floating):
        d = rng.uniform(0.3, 2.0, shape).astype(dtype)
    else:
        d = rng.integers(300, 2000, shape).astype(dtype)
    d[rng.random(shape) < 0.05] = 0
    return d


def zlib_floats(values) -> bytes:
    return zlib.compress(np.asarray(values, "<f4").tobytes())


def make_episode(features: FD, T: int, seed: int, overrides: dict | None = None) -> dict:
    """Values for every feature of `features` (an episode for write_rlds_dataset); `overrides`
    maps step paths ("observation/image") to stacked values to use instead."""
    rng = np.random.default_rng(seed)
    overrides = overrides or {}

    def fill(node: FD, prefix: str, n: int | None) -> dict:
        out = {}
        for key, feat in node.items():
            path = f"{prefix}{key}"
            if path in overrides:
                out[key] = overrides[path]
            elif isinstance(feat, FD):
                out[key] = fill(feat, path + "/", n)
            else:
                out[key] = _value(feat, path, n, rng, seed)
        return out

    steps_feature = features["steps"].feature
    episode = {"steps": fill(steps_feature, "", T)}
    if "episode_metadata" in features.keys():
        episode["episode_metadata"] = fill(features["episode_metadata"], "episode_metadata/", None)
    return episode


def _value(feat, path: str, T: int | None, rng, seed: int):
    """Stacked values (T first) of one step feature, or one value when T is None (metadata)."""
    n = 1 if T is None else T
    if isinstance(feat, Image):
        h, w, c = feat.shape
        if c == 3:
            frames = moving_texture(n, h, w, seed * 101 + zlib.crc32(path.encode()) % 97)
            if feat.encoding_format is None:  # Google-style: JPEG bytes under an undeclared format
                encoder = Image(shape=feat.shape, dtype=np.uint8, encoding_format="jpeg")
                frames = [encoder.encode_example(f) for f in frames]
            value = frames
        else:
            value = _depth_values(rng, (n, h, w, c), feat.np_dtype)
    elif isinstance(feat, Text) or feat.np_dtype == np.object_:
        text = "open the drawer" if seed % 2 else "put the cup in the sink"
        value = [text] * n
    elif feat.np_dtype == np.bool_:
        value = np.arange(n) == 0
    elif "depth" in path:
        value = _depth_values(rng, (n, *feat.shape), feat.np_dtype)
    elif np.issubdtype(feat.np_dtype, np.floating):
        value = rng.normal(size=(n, *feat.shape)).astype(feat.np_dtype)
    else:
        value = rng.integers(0, 5, (n, *feat.shape)).astype(feat.np_dtype)
    return value if T is not None else value[0]
