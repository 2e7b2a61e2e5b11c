"""The Meta-World source: camera geometry against the rendering, reproducibility,
proprio, the on-disk RLDS layout, and the reader round trip.

MuJoCo never loads in the pytest process (it would clash with TensorFlow): episodes
come from rollout worker subprocesses, and the few checks that need a live env run
in a subprocess script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.sources.metaworld.rollout import (
    CAMERAS,
    DATASET_NAME,
    METAWORLD_CONTROL_HZ,
    RolloutWorkers,
    TASK_INSTRUCTIONS,
    _Request,
    episode_seed,
    instruction_for,
    rollout_episode,
    simulate_dataset,
)

REPO = Path(__file__).resolve().parents[1]
SIZE, STEPS = 64, 20


@pytest.fixture(scope="module")
def episodes():
    """pick-place (seed 11) twice and once with another seed, drawer-open (seed 12): one worker."""
    reqs = [
        _Request("pick-place-v3", 11, SIZE, STEPS, "third_person", 0),
        _Request("drawer-open-v3", 12, SIZE, STEPS, "third_person", 1),
        _Request("pick-place-v3", 11, SIZE, STEPS, "third_person", 2),
        _Request("pick-place-v3", 99, SIZE, STEPS, "third_person", 3),
    ]
    with RolloutWorkers(1) as w:
        return list(w.run(reqs))


def _project_world(ep, points_world):
    c2w = ep.extrinsics["image"]
    K = ep.intrinsics["image"].matrix()
    cam = (np.asarray(points_world) - c2w[:3, 3]) @ c2w[:3, :3]
    uvw = cam @ K.T
    return uvw[..., :2] / uvw[..., 2:], cam[..., 2]


def test_episode_record(episodes):
    ep = episodes[0]
    ep.check()
    T = STEPS
    assert ep.frames["image"].shape == (T, SIZE, SIZE, 3) and ep.frames["image"].dtype == np.uint8
    assert ep.actions.shape == (T, 4) and ep.actions.dtype == np.float32
    assert np.all(np.abs(ep.actions) <= 1.0)
    assert ep.language == "pick up the puck and place it at the goal"
    assert ep.control_hz == pytest.approx(80.0)
    gt = ep.ground_truth
    assert gt.segmentation.shape == (T, SIZE, SIZE) and gt.segmentation.dtype == np.int32
    assert gt.body_pos.shape == (T, len(ep._sim["body_names"]), 3)
    assert gt.body_quat.shape == (T, len(ep._sim["body_names"]), 4)
    np.testing.assert_allclose(np.linalg.norm(gt.body_quat, axis=-1), 1.0, atol=1e-6)
    depth = ep.depth_m["image"]
    # depth is NaN exactly where the segmentation says background
    assert np.array_equal(np.isnan(depth), gt.segmentation < 0)
    assert 0.2 < np.nanmin(depth) and np.nanmax(depth) < 10.0
    # the arm moves: the expert does something
    assert np.linalg.norm(ep.proprio[-1, :3] - ep.proprio[0, :3]) > 0.02


def test_proprio_is_robot_state_only(episodes):
    ep = episodes[0]
    hand = ep._sim["body_names"].index("hand")
    np.testing.assert_allclose(ep.proprio[:, :3], ep.ground_truth.body_pos[:, hand], atol=1e-6)
    assert np.all((ep.proprio[:, 3] >= 0) & (ep.proprio[:, 3] <= 1))
    assert ep.proprio.shape[1] == 4  # no object poses


def test_intrinsics_follow_mujoco_fovy(episodes):
    intr = episodes[0].intrinsics["image"]
    fy = (SIZE / 2) / np.tan(np.deg2rad(CAMERAS["third_person"].fovy_deg) / 2)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((fy, fy, SIZE / 2, SIZE / 2))
    assert not intr.estimated


def test_camera_is_right_side_up(episodes):
    """World up must be image up: a point 30 cm above the table projects higher in the
    image; and in the rendering the camera looks down onto the table, so the bottom rows
    (near table) are closer than the top rows (far side) and the hand's pixels lie above
    its fingertip pads' pixels."""
    ep = episodes[0]
    uv, _ = _project_world(ep, np.array([[0.0, 0.6, 0.0], [0.0, 0.6, 0.3]]))
    assert uv[1, 1] < uv[0, 1] - 5
    d = ep.depth_m["image"][0]
    assert np.nanmedian(d[: SIZE // 4]) > np.nanmedian(d[-SIZE // 4 :]) + 0.1
    names = ep._sim["body_names"]
    seg = ep.ground_truth.segmentation[0]
    hand_rows = np.nonzero(seg == names.index("right_hand"))[0]  # "hand" itself has no geom
    pad_rows = np.nonzero(np.isin(seg, [names.index("rightpad"), names.index("leftpad")]))[0]
    assert hand_rows.size > 0 and pad_rows.size > 0
    assert hand_rows.mean() < pad_rows.mean()


def test_extrinsics_match_rendering(episodes):
    """Independent check of intrinsics + extrinsics + image orientation: each object body's
    projected origin lands on pixels the segmentation labels with that body, and the
    rendered depth there matches the body's camera-frame depth."""
    ep = episodes[1]  # drawer-open: the drawer and its handle are large, visible bodies
    names = ep._sim["body_names"]
    seg = ep.ground_truth.segmentation
    hits = 0
    checked = 0
    for t in (0, STEPS - 1):
        for b, name in enumerate(names):
            area = (seg[t] == b).sum()
            if area < 30 or name in ("world",):
                continue
            # the body's own pixels, unprojected, should sit near the body origin (<= 0.35 m)
            ys, xs = np.nonzero(seg[t] == b)
            intr = ep.intrinsics["image"]
            z = ep.depth_m["image"][t, ys, xs]
            cam = np.stack([(xs + 0.5 - intr.cx) / intr.fx * z, (ys + 0.5 - intr.cy) / intr.fy * z, z], -1)
            c2w = ep.extrinsics["image"]
            world = cam @ c2w[:3, :3].T + c2w[:3, 3]
            centroid = world.mean(0)
            checked += 1
            hits += np.linalg.norm(centroid - ep.ground_truth.body_pos[t, b]) < 0.35
    assert checked >= 5
    assert hits / checked > 0.8
    # the hand: its projected origin is within a few pixels of hand/finger pixels
    hand = names.index("hand")
    gripper_ids = {i for i, n in enumerate(names) if n in ("hand", "rightclaw", "leftclaw", "rightpad", "leftpad", "right_hand")}
    uv, _ = _project_world(ep, ep.proprio[:, :3])
    near = 0
    for t in range(STEPS):
        u, v = uv[t]
        r0, c0 = int(v), int(u)
        win = seg[t, max(0, r0 - 4) : r0 + 5, max(0, c0 - 4) : c0 + 5]
        near += bool(np.isin(win, list(gripper_ids | {hand})).any())
    assert near / STEPS > 0.9


def test_same_seed_byte_identical_and_history_independent(episodes):
    a, b, other = episodes[0], episodes[2], episodes[3]
    # episode 2 ran after two other episodes in the same worker and scene
    assert a.frames["image"].tobytes() == b.frames["image"].tobytes()
    assert np.array_equal(a.depth_m["image"], b.depth_m["image"], equal_nan=True)
    assert np.array_equal(a.ground_truth.segmentation, b.ground_truth.segmentation)
    assert np.array_equal(a.actions, b.actions)
    assert not np.array_equal(a.frames["image"][0], other.frames["image"][0])  # another layout


def test_episode_seeds():
    assert episode_seed(0, "pick-place-v3", 0) == episode_seed(0, "pick-place-v3", 0)
    seeds = {episode_seed(s, t, i) for s in (0, 1) for t in ("reach-v3", "push-v3") for i in range(5)}
    assert len(seeds) == 20


def test_instructions():
    assert len(TASK_INSTRUCTIONS) == 50
    assert instruction_for("drawer-open-v3") == "pull the drawer open"
    assert instruction_for("some-new-task-v3") == "do the some new task task"
    assert all(s and s == s.strip() and s.islower() for s in TASK_INSTRUCTIONS.values())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        simulate_dataset(tmp_path, ["pick-plase-v3"], 1, size=32, max_steps=2, progress=False)
    with pytest.raises(ValueError, match="episodes per task"):
        simulate_dataset(tmp_path, ["reach-v3"], 0, size=32, max_steps=2, progress=False)
    with pytest.raises(ValueError, match="unknown camera"):
        simulate_dataset(tmp_path, ["reach-v3"], 1, camera="nope", progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        rollout_episode("reach-v3", 0, max_steps=0)


def test_worker_failure_names_the_episode():
    """A failure inside a worker comes back as an error naming task and seed, and the
    pool keeps serving later requests."""
    with RolloutWorkers(1) as w:
        with pytest.raises(RuntimeError, match=r"no-such-task-v3 seed=7 failed: ValueError: unknown Meta-World task"):
            list(w.run([_Request("no-such-task-v3", 7, 32, 2, "third_person", 0)]))
        ep = next(w.run([_Request("reach-v3", 7, 32, 2, "third_person", 0)]))
        assert ep.num_steps == 2 and ep.frames["image"].shape == (2, 32, 32, 3)


_LIVE_CHECKS = r"""
import json, os, sys
os.environ["MUJOCO_GL"] = "osmesa"
from curation.sources.metaworld import rollout as S
from metaworld.policies import ENV_POLICY_MAP
scene = S.MetaWorldScene("reach-v3", size=32)
out = {
    "frame_skip": scene.env.frame_skip,
    "timestep": float(scene.model.opt.timestep),
    "tasks_with_policy": sorted(ENV_POLICY_MAP),
}
scene.reset(1)
for _ in range(5):
    scene.step(scene.expert_action())
fast = scene.render()
slow = scene.render(single_pass=False)
out["render_keys"] = sorted(fast)
out["single_pass_seg_equal"] = bool((fast["segmentation"] == slow["segmentation"]).all())
out["single_pass_depth_equal"] = bool((fast["depth_m"] == slow["depth_m"]).all())
out["rgb_equal"] = bool((fast["rgb"] == slow["rgb"]).all())
try:
    import tensorflow
    out["tf"] = "imported"
except ImportError as e:
    out["tf"] = str(e)
print("RESULT" + json.dumps(out))
"""


def test_live_env_constants_and_tensorflow_guard():
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa")
    proc = subprocess.run([sys.executable, "-c", _LIVE_CHECKS], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-2000:]
    out = json.loads(line[0][len("RESULT"):])
    assert 1.0 / (out["frame_skip"] * out["timestep"]) == pytest.approx(METAWORLD_CONTROL_HZ)
    assert out["tasks_with_policy"] == sorted(TASK_INSTRUCTIONS)
    assert out["render_keys"] == ["depth_m", "rgb", "segmentation"]
    # the one-pass segmentation + depth read equals mujoco.Renderer's separate passes
    assert out["single_pass_seg_equal"] and out["single_pass_depth_equal"] and out["rgb_equal"]
    assert "tensorflow cannot be imported" in out["tf"]


def test_dataset_on_disk_layout(sim_dataset_dir):
    import tensorflow_datasets as tfds

    path = Path(sim_dataset_dir)
    assert path.name == "1.0.0" and path.parent.name == DATASET_NAME
    builder = tfds.builder_from_directory(str(path))
    assert builder.info.splits["train"].num_examples == 4
    ds = list(builder.as_dataset(split="train"))
    tasks = [e["episode_metadata"]["task"].numpy().decode() for e in ds]
    assert tasks == ["pick-place-v3", "pick-place-v3", "drawer-open-v3", "drawer-open-v3"]  # in order
    e = ds[0]
    md = e["episode_metadata"]
    steps = list(e["steps"])
    assert len(steps) == 24
    s0 = steps[0]
    assert s0["observation"]["image"].shape == (64, 64, 3)
    assert s0["observation"]["depth"].dtype.name == "float32" and s0["observation"]["depth"].shape == (64, 64)
    assert s0["observation"]["segmentation"].dtype.name == "int32"
    assert s0["observation"]["state"].shape == (4,) and s0["action"].shape == (4,)
    assert s0["language_instruction"].numpy().decode() == "pick up the puck and place it at the goal"
    assert bool(s0["is_first"]) and not bool(steps[1]["is_first"]) and bool(steps[-1]["is_last"])
    assert not any(bool(s["is_terminal"]) for s in steps)
    seg = s0["observation"]["segmentation"].numpy()
    depth = s0["observation"]["depth"].numpy()
    assert np.all(depth[seg < 0] == 0.0) and np.all(depth[seg >= 0] > 0.0)
    B = int(md["num_bodies"])
    names = md["body_names"].numpy().decode().split("\n")
    assert len(names) == B and "hand" in names
    pos = s0["ground_truth"]["body_pos"].numpy()
    assert np.all(np.isfinite(pos[:B])) and np.all(np.isnan(pos[B:]))
    assert md["intrinsics"].shape == (4,) and md["cam_to_world"].shape == (4, 4)
    assert md["camera_name"].numpy().decode() == "third_person"
    assert int(md["seed"]) == episode_seed(0, "pick-place-v3", 0)
    assert float(md["control_hz"]) == pytest.approx(80.0)


def test_dataset_matches_standalone_rollout(sim_dataset_dir):
    """Episode 1 of the dataset (written after episode 0 in the same worker) equals a
    fresh rollout of its seed, read back through the project's RLDS reader."""
    from curation.sources.rlds import read_episodes

    eps = list(read_episodes(str(sim_dataset_dir), "train", 1, 2))
    assert len(eps) == 1
    ep = eps[0]
    fresh = rollout_episode("pick-place-v3", episode_seed(0, "pick-place-v3", 1), size=64, max_steps=24)
    assert np.array_equal(ep.frames["image"], fresh.frames["image"])
    assert np.array_equal(ep.ground_truth.segmentation, fresh.ground_truth.segmentation)
    np.testing.assert_array_equal(ep.actions, fresh.actions)
    np.testing.assert_allclose(ep.ground_truth.body_pos, fresh.ground_truth.body_pos, atol=1e-6)
    np.testing.assert_allclose(ep.depth_m["image"], fresh.depth_m["image"], atol=1e-6)
    assert np.array_equal(np.isnan(ep.depth_m["image"]), np.isnan(fresh.depth_m["image"]))
    np.testing.assert_allclose(ep.extrinsics["image"], fresh.extrinsics["image"], atol=1e-6)
    assert ep.intrinsics["image"].fx == pytest.approx(fresh.intrinsics["image"].fx)
    assert ep.control_hz == pytest.approx(METAWORLD_CONTROL_HZ)
    assert ep.language == fresh.language
    assert ep.ground_truth.body_names == fresh.ground_truth.body_names and "hand" in ep.ground_truth.body_names


def test_cli_simulate_json(tmp_path):
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "simulate", "--task", "reach-v3", "--episodes", "2", "--size", "32",
         "--max-steps", "5", "--out", str(tmp_path), "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["episodes"] == 2 and out["steps"] == 10
    assert out["per_task"][0]["task"] == "reach-v3"
    assert Path(out["path"]) == tmp_path / "metaworld_sim" / "1.0.0"
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "simulate", "--task", "nope-v3", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert bad.returncode == 2 and "unknown Meta-World task" in bad.stderr and "Traceback" not in bad.stderr
