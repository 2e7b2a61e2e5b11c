"""Registry quirks, each on a small dataset written in the real TFDS format."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from curation.sources.openx.registry import REGISTRY, get_dataset_config, infer_dataset_config
from curation.sources.rlds import RLDSSource, read_episodes
from curation.sources.rlds_write import write_rlds_dataset
from test_rlds_helpers import H, W, colour_frames, contributed_episode, contributed_features, image, zlib_floats

Tensor = tfds.features.Tensor

REQUIRED = [
    "fractal20220817_data", "kuka", "bridge", "bridge_dataset", "taco_play", "jaco_play", "berkeley_cable_routing",
    "roboturk", "nyu_door_opening_surprising_effectiveness", "viola", "berkeley_autolab_ur5", "toto",
    "language_table", "stanford_hydra_dataset_converted_externally_to_rlds",
    "austin_buds_dataset_converted_externally_to_rlds", "austin_sailor_dataset_converted_externally_to_rlds",
    "austin_sirius_dataset_converted_externally_to_rlds", "nyu_franka_play_dataset_converted_externally_to_rlds",
    "maniskill_dataset_converted_externally_to_rlds", "furniture_bench_dataset_converted_externally_to_rlds",
    "ucsd_kitchen_dataset_converted_externally_to_rlds", "ucsd_pick_and_place_dataset_converted_externally_to_rlds",
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds", "utaustin_mutex", "berkeley_fanuc_manipulation",
    "cmu_stretch", "fmb", "dobbe", "droid", "metaworld_sim",
]


def test_registry_covers_the_training_mixtures():
    missing = [n for n in REQUIRED if get_dataset_config(n) is None]
    assert not missing
    assert len(REGISTRY) >= 45
    rates = {n: REGISTRY[n].control_hz for n in ("fractal20220817_data", "bridge", "taco_play", "toto", "droid", "metaworld_sim")}
    assert rates == {"fractal20220817_data": 3.0, "bridge": 5.0, "taco_play": 15.0, "toto": 30.0, "droid": 15.0,
                     "metaworld_sim": 80.0}
    for name in ("berkeley_autolab_ur5", "stanford_hydra_dataset_converted_externally_to_rlds", "utaustin_mutex",
                 "berkeley_fanuc_manipulation"):
        assert REGISTRY[name].bgr_cameras, name
    for name in ("kuka", "roboturk", "toto", "viola"):
        assert not REGISTRY[name].language_informative, name
    for cfg in REGISTRY.values():
        assert cfg.primary_camera and cfg.action_keys, cfg.name
        assert not math.isnan(cfg.control_hz), cfg.name
        for d in cfg.depth:
            assert d.camera in cfg.cameras, (cfg.name, d)


def _google_features(obs: dict, action: dict):
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict(obs),
            "action": tfds.features.FeaturesDict(action),
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
        }),
    })


def test_kuka_zlib_proprio_and_action_dict_order(tmp_path):
    """kuka: proprio as ZLIB float32 bytes, actions a dict concatenated in the registry's order."""
    feats = _google_features(
        {"image": image(fmt="jpeg"), "natural_language_instruction": tfds.features.Text(),
         "clip_function_input/base_pose_tool_reached": Tensor(shape=(), dtype=tf.string),
         "gripper_closed": Tensor(shape=(), dtype=tf.string)},
        {"world_vector": Tensor(shape=(3,), dtype=np.float32), "rotation_delta": Tensor(shape=(3,), dtype=np.float32),
         "gripper_closedness_action": Tensor(shape=(1,), dtype=np.float32),
         "terminate_episode": Tensor(shape=(3,), dtype=np.int32)},
    )
    T = 5
    pose = np.arange(T * 7, dtype=np.float32).reshape(T, 7) / 10
    ep = {"steps": {
        "observation": {"image": colour_frames(T), "natural_language_instruction": ["pick anything"] * T,
                        "clip_function_input/base_pose_tool_reached": [zlib_floats(p) for p in pose],
                        "gripper_closed": [zlib_floats([t % 2]) for t in range(T)]},
        "action": {"world_vector": np.tile([1, 2, 3], (T, 1)).astype(np.float32),
                   "rotation_delta": np.tile([4, 5, 6], (T, 1)).astype(np.float32),
                   "gripper_closedness_action": np.full((T, 1), 7, np.float32),
                   "terminate_episode": np.zeros((T, 3), np.int32)},
        "reward": np.zeros(T, np.float32), "is_first": np.arange(T) == 0}}
    path = write_rlds_dataset(tmp_path, "kuka", "0.1.0", feats, {"train": [ep]})
    (e,) = list(read_episodes(str(path)))
    np.testing.assert_array_equal(e.actions, np.tile(np.arange(1, 8, dtype=np.float32), (T, 1)))
    assert e.action_encoding == "eef_delta_xyz_rpy_gripper"
    np.testing.assert_array_equal(e.proprio[:, :7], pose)
    np.testing.assert_array_equal(e.proprio[:, 7], np.arange(T) % 2)
    assert e.language == "pick anything" and e.language_informative is False and e.control_hz == 10.0

    # Bytes that are not ZLIB: a clear error naming the step and key.
    ep["steps"]["observation"]["gripper_closed"][3] = b"not zlib"
    path = write_rlds_dataset(tmp_path / "bad", "kuka", "0.1.0", feats, {"train": [ep]})
    (err,) = list(read_episodes(str(path), on_error="yield"))
    assert "episode=0" in str(err) and "step 3 observation/gripper_closed" in str(err) and "ZLIB" in str(err)


def test_language_table_code_points(tmp_path):
    text = "push the red star to the café corner"
    codes = np.zeros(512, np.int32)
    codes[: len(text)] = [ord(ch) for ch in text]
    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "observation": tfds.features.FeaturesDict({
            "rgb": image(), "instruction": Tensor(shape=(512,), dtype=np.int32),
            "effector_translation": Tensor(shape=(2,), dtype=np.float32)}),
        "action": Tensor(shape=(2,), dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_)})})
    T = 3
    ep = {"steps": {"observation": {"rgb": colour_frames(T), "instruction": np.tile(codes, (T, 1)),
                                    "effector_translation": np.full((T, 2), 0.25, np.float32)},
                    "action": np.full((T, 2), 0.01, np.float32), "is_first": np.arange(T) == 0}}
    path = write_rlds_dataset(tmp_path, "language_table", "0.0.1", feats, {"train": [ep]})
    (e,) = list(read_episodes(str(path)))
    assert e.language == text
    assert e.actions.shape == (3, 2) and e.action_encoding == "eef_delta_xy"
    assert e.primary_camera == "rgb" and e.proprio.shape == (3, 2)


def test_bgr_dataset_is_flipped(tmp_path):
    name = "stanford_hydra_dataset_converted_externally_to_rlds"
    T, rgb = 3, (200, 30, 10)
    stored = colour_frames(T, rgb)[..., ::-1]  # the dataset holds B, G, R in the R, G, B slots
    feats = contributed_features(extra_obs={"wrist_image": image()})
    ep = contributed_episode(0, T, frames=stored, extra_obs={"wrist_image": stored})
    path = write_rlds_dataset(tmp_path, name, "0.1.0", feats, {"train": [ep]})
    (e,) = list(read_episodes(str(path)))
    for cam in ("image", "wrist_image"):
        np.testing.assert_array_equal(e.frames[cam][:, 5, 5], np.tile(rgb, (T, 1)))
    assert e.frames["image"][:, 0, 0, 0].tolist() == [0, 1, 2]  # the per-step ramp is back in R
    # The same bytes under an RGB dataset's name are left as stored.
    path = write_rlds_dataset(tmp_path, "austin_buds_dataset_converted_externally_to_rlds", "0.1.0", feats,
                              {"train": [ep]})
    (e,) = list(read_episodes(str(path)))
    np.testing.assert_array_equal(e.frames["image"][:, 5, 5], np.tile(rgb[::-1], (T, 1)))


def test_uint16_mm_depth_becomes_float_metres(tmp_path):
    name = "uiuc_d3field"
    T = 3
    depth_mm = np.full((T, H, W, 1), 1500, np.uint16)
    depth_mm[:, :2, :3] = 0  # no reading
    depth_mm[:, 8, 8] = 65535
    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "observation": tfds.features.FeaturesDict({
            "image_1": image(), "image_2": image(),
            "depth_1": tfds.features.Image(shape=(H, W, 1), dtype=np.uint16, encoding_format="png"),
            "depth_2": tfds.features.Image(shape=(H, W, 1), dtype=np.uint16, encoding_format="png")}),
        "action": Tensor(shape=(3,), dtype=np.float32),
        "language_instruction": tfds.features.Text()})})
    ep = {"steps": {"observation": {"image_1": colour_frames(T), "image_2": colour_frames(T, (1, 2, 3)),
                                    "depth_1": depth_mm, "depth_2": depth_mm // 2},
                    "action": np.zeros((T, 3), np.float32), "language_instruction": ["pick"] * T}}
    path = write_rlds_dataset(tmp_path, name, "0.1.0", feats, {"train": [ep]})
    (e,) = list(read_episodes(str(path)))
    d = e.depth_m["image_1"]
    assert d.dtype == np.float32 and d.shape == (T, H, W)
    assert d[0, 5, 5] == pytest.approx(1.5) and d[0, 8, 8] == pytest.approx(65.535)
    assert np.isnan(d[:, :2, :3]).all() and np.isfinite(d[:, 2:, :]).all()
    assert e.depth_m["image_2"][1, 5, 5] == pytest.approx(0.75)
    assert e.control_hz == 1.0 and list(e.frames) == ["image_1", "image_2"]  # image_3/4 absent: dropped


def test_unregistered_dataset_is_inferred_with_warning(tmp_path, caplog):
    T = 4
    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "observation": tfds.features.FeaturesDict({
            "wrist_rgb": image(), "front_image": image(),
            "front_depth": Tensor(shape=(H, W), dtype=np.float32),
            "robot_state": Tensor(shape=(5,), dtype=np.float32)}),
        "action": tfds.features.FeaturesDict({"delta": Tensor(shape=(3,), dtype=np.float32),
                                              "grip": Tensor(shape=(1,), dtype=np.float32)}),
        "language_instruction": tfds.features.Text()}),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()})})
    depth = np.full((T, H, W), 0.8, np.float32)
    ep = {"steps": {"observation": {"wrist_rgb": colour_frames(T, (9, 9, 9)), "front_image": colour_frames(T),
                                    "front_depth": depth, "robot_state": np.ones((T, 5), np.float32)},
                    "action": {"delta": np.full((T, 3), 0.5, np.float32), "grip": np.full((T, 1), -1, np.float32)},
                    "language_instruction": ["open the drawer"] * T},
          "episode_metadata": {"file_path": "x"}}
    path = write_rlds_dataset(tmp_path, "my_lab_dataset", "1.0.0", feats, {"train": [ep]})
    with caplog.at_level(logging.WARNING):
        src = RLDSSource(str(path))
    assert any("not in the Open-X registry" in r.getMessage() for r in caplog.records)
    cfg = src.config
    assert cfg.inferred and cfg.primary_camera == "front_image" and cfg.wrist_camera == "wrist_rgb"
    (e,) = list(src.read())
    assert e.language == "open the drawer" and e.primary_camera == "front_image"
    np.testing.assert_array_equal(e.actions, np.tile([0.5, 0.5, 0.5, -1.0], (T, 1)).astype(np.float32))
    assert e.proprio.shape == (T, 5) and math.isnan(e.control_hz)
    assert e.depth_m["front_image"][0, 3, 3] == pytest.approx(0.8)


def test_infer_from_bridge_features_json(bridge_dir):
    import json

    cfg = infer_dataset_config(json.loads((bridge_dir / "features.json").read_text()), "bridge_copy")
    assert cfg.primary_camera == "image_0" and cfg.secondary_camera == "image_1"
    assert set(cfg.cameras) == {"image_0", "image_1", "image_2", "image_3"}
    assert cfg.language_key == "language_instruction" and cfg.action_keys == ("action",)
    assert cfg.proprio_keys == ("observation/state",)


def _sim_features(size, num_bodies):
    from curation.sources.metaworld.rollout import rlds_features

    return rlds_features(size, num_bodies)


def test_metaworld_sim_mapping(tmp_path):
    """The simulator's on-disk layout maps into Episode with ground truth and calibration."""
    T, S, Bmax, B = 4, 8, 5, 3
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 2.0, (T, S, S)).astype(np.float32)
    seg = rng.integers(0, B, (T, S, S)).astype(np.int32)
    depth[:, :2] = 0.0
    seg[:, :2] = -1
    pos = np.full((T, Bmax, 3), np.nan, np.float32)
    quat = np.full((T, Bmax, 4), np.nan, np.float32)
    pos[:, :B] = rng.normal(size=(T, B, 3))
    quat[:, :B] = [1, 0, 0, 0]
    c2w = np.eye(4, dtype=np.float32)
    c2w[:3, 3] = [0.1, 0.2, 0.3]
    steps = {
        "observation": {"image": colour_frames(T)[:, :S, :S], "depth": depth, "segmentation": seg,
                        "state": np.full((T, 4), 0.5, np.float32)},
        "action": np.full((T, 4), 0.25, np.float32), "language_instruction": ["pick up the puck"] * T,
        "reward": np.zeros(T, np.float32), "discount": np.ones(T, np.float32),
        "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1, "is_terminal": np.zeros(T, bool),
        "ground_truth": {"body_pos": pos, "body_quat": quat},
    }
    meta = {"file_path": "sim://pick-place-v3/0", "task": "pick-place-v3", "seed": 7, "success": True,
            "camera_name": "fixed", "intrinsics": np.array([9.5, 9.5, 4.0, 4.0], np.float32), "cam_to_world": c2w,
            "num_bodies": np.int32(B), "body_names": "a\nb\nc", "control_hz": np.float32(80.0)}
    path = write_rlds_dataset(tmp_path, "metaworld_sim", "1.0.0", _sim_features(S, Bmax),
                              {"train": [{"steps": steps, "episode_metadata": meta}]})
    (e,) = list(read_episodes(str(path)))
    assert e.primary_camera == "image" and e.frames["image"].shape == (T, S, S, 3)
    d = e.depth_m["image"]
    assert np.isnan(d[:, :2]).all() and np.array_equal(d[:, 2:], depth[:, 2:])
    k = e.intrinsics["image"]
    assert (k.fx, k.fy, k.cx, k.cy, k.width, k.height, k.estimated) == (9.5, 9.5, 4.0, 4.0, S, S, False)
    np.testing.assert_array_equal(e.extrinsics["image"], c2w.astype(np.float64))
    gt = e.ground_truth
    assert gt.camera == "image" and gt.body_pos.shape == (T, B, 3) and gt.body_pos.dtype == np.float64
    np.testing.assert_array_equal(gt.body_pos, pos[:, :B].astype(np.float64))
    assert gt.body_quat.shape == (T, B, 4) and np.array_equal(gt.segmentation, seg)
    assert e.success is True and e.control_hz == 80.0 and e.language == "pick up the puck"
    assert e.action_encoding == "metaworld_delta_xyz_gripper" and e.proprio_encoding == "eef_xyz_gripper"


def test_uninferrable_dataset_is_a_clear_error(tmp_path):
    from schemas.episode import EpisodeError

    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset({
        "observation": tfds.features.FeaturesDict({"state": Tensor(shape=(3,), dtype=np.float32)}),
        "action": Tensor(shape=(2,), dtype=np.float32)})})
    ep = {"steps": {"observation": {"state": np.zeros((2, 3), np.float32)}, "action": np.zeros((2, 2), np.float32)}}
    path = write_rlds_dataset(tmp_path, "no_camera_ds", "1.0.0", feats, {"train": [ep]})
    with pytest.raises(EpisodeError, match="cannot infer its layout: no_camera_ds: no RGB image feature"):
        RLDSSource(str(path))
