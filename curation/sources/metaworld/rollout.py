"""Meta-World source with ground truth: scripted experts, one fixed camera, RLDS out.

    task, seed --> MetaWorldScene (env + camera + renderer) --> rollout_episode --> Episode
                                                                               \\-> simulate_dataset
                                                                                   (RLDS/TFDS on disk)

Each step records what a real robot dataset has (RGB from a fixed third-person
camera, proprio = end-effector xyz + gripper opening, the Meta-World action,
reward) plus what only a simulator knows: metric depth along the optical axis,
a MuJoCo body id per pixel, and the world pose of every body. With the camera
intrinsics and extrinsics that is enough to compute the true motion of any
pixel (labelers/ground_truth.py).

Camera. Meta-World's built-in "corner*" cameras render upside down (their up
axis points at the floor), so we place our own look-at camera with zero roll.
MuJoCo cameras can only be added when compiling a model, so the pose is written
into a spare world-fixed camera slot (`corner4`) of the compiled model; the
dataset calls it by our name ("third_person"). Conventions (checked in tests):
fy = (H/2)/tan(fovy/2), fx = fy, cx = W/2, cy = H/2, pixel centres at
(j + 0.5, i + 0.5); OpenCV camera-to-world rotation = cam_xmat @ diag(1, -1, -1).

TensorFlow. With MUJOCO_GL=osmesa, MuJoCo and TensorFlow cannot share a
process (tensorflow-cpu 2.21 + mujoco 3.3.0, checked): `import mujoco` loads
OSMesa (and its LLVM), after which `import tensorflow` segfaults; with
TensorFlow imported first, creating a renderer segfaults. (torch, ray, beam,
open3d, zarr are fine.) So MuJoCo only ever runs in worker subprocesses
(`RolloutWorkers`: fresh interpreters, which also roll out tasks in parallel):
`simulate_dataset` writes the TFDS files in the parent without importing
MuJoCo, and `rollout_episode` runs in a worker by default. `MetaWorldScene` is
the in-process API for programs that never import TensorFlow (closed-loop
policy evaluation); it refuses to start where TensorFlow is loaded, and once
it has loaded MuJoCo it turns a later `import tensorflow` into an ImportError
instead of a segfault.

Reproducibility. Every episode has its own seed derived from (base seed, task,
episode index), so an episode does not depend on which episodes ran before it;
MuJoCo's data (incl. solver warm starts) is reset before each episode, so the
same seed gives byte-identical frames.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging
import pathlib
import pickle
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from curation.sources.metaworld import (  # noqa: F401  (METAWORLD_* re-exported for the simulate command)
    ACTION_ENCODING, METAWORLD_CONTROL_HZ, METAWORLD_FRAME_SKIP, METAWORLD_TIMESTEP_S, PROPRIO_ENCODING,
)
from schemas.episode import CameraIntrinsics, Episode, EpisodeError, Provenance, SimGroundTruth

log = logging.getLogger(__name__)

DATASET_NAME = "metaworld_sim"
DATASET_VERSION = "1.0.0"

PRIMARY_CAMERA = "image"  # the Episode's key for the one camera

# The compiled-model camera slot we overwrite with our own pose (see module docstring).
_CAMERA_SLOT = "corner4"
# Finger distance that Meta-World treats as fully open (its observation uses the same scale).
_GRIPPER_FULL_OPEN_M = 0.1


@dataclass(frozen=True)
class CameraSpec:
    """A fixed look-at camera in the world frame, zero roll (right side up)."""

    eye_m: tuple[float, float, float]
    target_m: tuple[float, float, float]
    fovy_deg: float = 45.0


# Named fixed cameras. "third_person" sees the whole table, the arm and every
# task's objects from the front right, slightly above.
CAMERAS: dict[str, CameraSpec] = {
    "third_person": CameraSpec(eye_m=(1.0, 0.0, 0.9), target_m=(0.0, 0.6, 0.1), fovy_deg=45.0),
    "third_person_left": CameraSpec(eye_m=(-1.0, 0.0, 0.9), target_m=(0.0, 0.6, 0.1), fovy_deg=45.0),
    "front": CameraSpec(eye_m=(0.0, -0.35, 0.75), target_m=(0.0, 0.65, 0.05), fovy_deg=45.0),
}
DEFAULT_CAMERA = "third_person"

# Natural-language instruction per task. Tasks not listed get a generic
# instruction built from the task name (see `instruction_for`).
TASK_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the ring and put it on the peg",
    "basketball-v3": "pick up the basketball and dunk it in the hoop",
    "bin-picking-v3": "pick up the cube and place it in the other bin",
    "box-close-v3": "pick up the lid and close the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring up off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "turn the lock to lock the door",
    "door-open-v3": "open the door",
    "door-unlock-v3": "turn the lock to unlock the door",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "pick up the hammer and hit the nail",
    "hand-insert-v3": "put the puck into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "pick up the peg and insert it into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out of the hole",
    "pick-out-of-hole-v3": "pick the puck out of the hole and lift it to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "plate-slide-back-side-v3": "slide the plate back into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "move the gripper to the goal",
    "reach-wall-v3": "move the gripper over the wall to the goal",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grab the stick and use it to pull the container",
    "stick-push-v3": "grab the stick and use it to push the container",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}


def instruction_for(task: str) -> str:
    """The instruction for a task; a readable fallback for tasks not in the table."""
    if task in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[task]
    return "do the " + task.removesuffix("-v3").replace("-", " ") + " task"


def available_tasks() -> list[str]:
    """Meta-World v3 tasks with a scripted expert (all 50; a test checks this against
    metaworld.policies.ENV_POLICY_MAP). Listed here so callers need not import MuJoCo."""
    return sorted(TASK_INSTRUCTIONS)


def episode_seed(base_seed: int, task: str, index: int) -> int:
    """Seed of episode `index` of `task`: independent of the other tasks and episodes run."""
    ss = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, zlib.crc32(task.encode()), int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def tensorflow_loaded() -> bool:
    """True when this process has imported TensorFlow (rendering here would segfault)."""
    return "tensorflow" in sys.modules


class _TensorflowBlocker:
    """A meta-path finder that turns `import tensorflow` into a clear ImportError once
    MuJoCo's OSMesa backend is loaded here (the real import would segfault)."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(
                "tensorflow cannot be imported in this process: MuJoCo's OSMesa renderer is loaded "
                "(curation.sources.metaworld.rollout.MetaWorldScene) and TensorFlow would segfault. Use TensorFlow in "
                "another process, or roll out with rollout_episode/simulate_dataset (worker subprocesses)."
            )
        return None


def _block_tensorflow_import() -> None:
    if os.environ.get("MUJOCO_GL", "") == "osmesa" and not any(isinstance(f, _TensorflowBlocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _TensorflowBlocker())


def _refuse_render_with_tensorflow(what: str) -> None:
    if tensorflow_loaded():
        raise RuntimeError(
            f"{what}: TensorFlow is imported in this process, and MuJoCo's OSMesa renderer segfaults "
            "alongside it. Render in a process without TensorFlow: rollout_episode(...) and "
            "simulate_dataset(...) do this for you (RolloutWorkers)."
        )


def _lookat_quat(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z): the camera looks along its -z, y is up, no roll."""
    import mujoco

    forward = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("camera looks straight up or down: roll is undefined")
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rot = np.stack([right, up, -forward], axis=1)  # columns: camera axes in world
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.ravel())
    return quat


class MetaWorldScene:
    """One Meta-World task with its scripted expert, our fixed camera and an offscreen renderer.

    The policy engineer's closed-loop evaluation uses this with its own policy:

        scene = MetaWorldScene("pick-place-v3", size=128)
        scene.reset(seed)
        obs = scene.render(depth=False, segmentation=False)["rgb"]   # H W 3 uint8
        scene.step(action)                                            # -> (reward, success)
        scene.proprio()                                               # 4 float32

    Rendering has shadows, reflections and multisampling off (several times faster).
    """

    def __init__(self, task: str, size: int = 128, camera: str = DEFAULT_CAMERA, width: Optional[int] = None):
        _refuse_render_with_tensorflow(f"MetaWorldScene({task!r})")
        _block_tensorflow_import()
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(sorted(ALL_V3_ENVIRONMENTS))}")
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; known: {', '.join(CAMERAS)}")
        if size < 8:
            raise ValueError(f"image size must be >= 8 px, got {size}")
        self.task = task
        self.camera = camera
        self.height = int(size)
        self.width = int(width or size)
        self.instruction = instruction_for(task)
        self.policy = ENV_POLICY_MAP[task]() if task in ENV_POLICY_MAP else None

        env = ALL_V3_ENVIRONMENTS[task]()
        # Seeded random object/goal placement per reset (instead of Meta-World's frozen
        # task vectors), and the goal in the observation, which the scripted experts need.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        if env._partially_observable:
            env._partially_observable = False
            env.__dict__.pop("sawyer_observation_space", None)  # cached_property of the old observability
        self.env = env
        self.model = env.model
        self.data = env.data

        spec = CAMERAS[camera]
        self.cam_id = int(self.model.camera(_CAMERA_SLOT).id)
        if self.model.cam_bodyid[self.cam_id] != 0:
            raise RuntimeError(f"camera slot {_CAMERA_SLOT} is not world-fixed in this Meta-World build")
        self.model.cam_pos[self.cam_id] = spec.eye_m
        self.model.cam_quat[self.cam_id] = _lookat_quat(np.array(spec.eye_m), np.array(spec.target_m))
        self.model.cam_fovy[self.cam_id] = spec.fovy_deg
        self.model.vis.quality.offsamples = 0  # no multisampling (read when the context is made)
        self.renderer = mujoco.Renderer(self.model, height=self.height, width=self.width)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

        # Segmentation ids -> body ids: geoms and sites (the goal markers) belong to bodies.
        self._geom_body = np.asarray(self.model.geom_bodyid, np.int32)
        self._site_body = np.asarray(self.model.site_bodyid, np.int32)
        self.body_names = tuple(self.model.body(i).name for i in range(self.model.nbody))
        self.hand_body = self.model.body("hand").id
        self._obs: Optional[np.ndarray] = None
        self.render_s = 0.0  # accumulated wall time in render(), for the bench
        self.sim_s = 0.0  # accumulated wall time in reset()/step()/policy
        self.render_cpu_s = 0.0  # the same as process CPU time (immune to other load)
        self.sim_cpu_s = 0.0

    # -- episode control ---------------------------------------------------------------

    def reset(self, seed: int) -> np.ndarray:
        """Reset to the layout drawn from `seed`; returns Meta-World's 39-d observation."""
        import mujoco

        t0, c0 = time.perf_counter(), time.process_time()
        mujoco.mj_resetData(self.model, self.data)  # clear warm starts etc.: episodes independent of history
        self.env.seed(int(seed))
        obs, _ = self.env.reset()
        mujoco.mj_forward(self.model, self.data)
        self._obs = obs
        self.sim_s += time.perf_counter() - t0
        self.sim_cpu_s += time.process_time() - c0
        return obs

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current observation, float32 in [-1, 1]."""
        if self.policy is None:
            raise ValueError(f"task {self.task!r} has no scripted expert policy")
        if self._obs is None:
            raise RuntimeError("call reset(seed) before expert_action()")
        t0, c0 = time.perf_counter(), time.process_time()
        action = np.clip(np.asarray(self.policy.get_action(self._obs), np.float32), -1.0, 1.0)
        self.sim_s += time.perf_counter() - t0
        self.sim_cpu_s += time.process_time() - c0
        return action

    def step(self, action: np.ndarray) -> tuple[float, bool]:
        """Apply one 4-d action; returns (reward, success)."""
        if self._obs is None:
            raise RuntimeError("call reset(seed) before step()")
        t0, c0 = time.perf_counter(), time.process_time()
        action = np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
        obs, reward, _, _, info = self.env.step(action)
        self._obs = obs
        self.sim_s += time.perf_counter() - t0
        self.sim_cpu_s += time.process_time() - c0
        return float(reward), bool(info.get("success", False))

    # -- what a robot dataset sees -----------------------------------------------------

    def render(self, rgb: bool = True, depth: bool = True, segmentation: bool = True,
               single_pass: bool = True) -> dict[str, np.ndarray]:
        """Render the fixed camera: rgb H W 3 uint8, depth_m H W float32 (metres along the
        optical axis, 0.0 where no geometry), segmentation H W int32 (body id, -1 background).

        Depth and segmentation come from ONE segmentation-mode pass (MuJoCo's own depth
        rendering also draws in that mode), read back together: 2 passes a frame instead
        of 3. `single_pass=False` uses mujoco.Renderer's separate passes (for checking)."""
        _refuse_render_with_tensorflow(f"MetaWorldScene({self.task!r}).render")
        t0, c0 = time.perf_counter(), time.process_time()
        r = self.renderer
        r.update_scene(self.data, camera=self.cam_id)
        out: dict[str, np.ndarray] = {}
        if rgb:
            out["rgb"] = r.render().copy()
        if segmentation or depth:
            if single_pass:
                objid, objtype, d = self._segment_and_depth()
            else:
                r.enable_segmentation_rendering()
                seg = r.render()
                r.disable_segmentation_rendering()
                objid, objtype = seg[..., 0], seg[..., 1]
                r.enable_depth_rendering()
                d = r.render().astype(np.float32)
                r.disable_depth_rendering()
            seg_body = self._bodies_of(objid, objtype)
            if segmentation:
                out["segmentation"] = seg_body
            if depth:
                d = d.copy()
                d[seg_body < 0] = 0.0  # background renders at the far plane: not a surface
                out["depth_m"] = d
        self.render_s += time.perf_counter() - t0
        self.render_cpu_s += time.process_time() - c0
        return out

    def _bodies_of(self, objid: np.ndarray, objtype: np.ndarray) -> np.ndarray:
        """(object id, object type) per pixel -> body id, -1 background. Geoms and sites
        (the goal markers) belong to bodies."""
        import mujoco

        seg_body = np.full(objid.shape, -1, np.int32)
        is_geom = (objtype == mujoco.mjtObj.mjOBJ_GEOM) & (objid >= 0)
        is_site = (objtype == mujoco.mjtObj.mjOBJ_SITE) & (objid >= 0)
        seg_body[is_geom] = self._geom_body[objid[is_geom]]
        seg_body[is_site] = self._site_body[objid[is_site]]
        return seg_body

    def _segment_and_depth(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One segmentation-mode pass, reading the id colours and the depth buffer together.
        Decoding follows mujoco.Renderer.render (mujoco 3.3.0) for both buffers."""
        import mujoco

        r = self.renderer
        scene, rect, ctx = r._scene, r._rect, r._mjr_context
        flags = scene.flags.copy()
        scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
        scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        try:
            if r._gl_context:
                r._gl_context.make_current()
            ids = np.empty((self.height, self.width, 3), np.uint8)
            zbuf = np.empty((self.height, self.width), np.float32)
            mujoco.mjr_render(rect, scene, ctx)
            mujoco.mjr_readPixels(ids, zbuf, rect, ctx)
        finally:
            np.copyto(scene.flags, flags)
        # depth: undo the reversed-Z OpenGL projection, in float64 as MuJoCo does
        extent = self.model.stat.extent
        znear = np.float32(self.model.vis.map.znear * extent)
        zfar = np.float32(self.model.vis.map.zfar * extent)
        c_coef = -(zfar + znear) / (zfar - znear)
        d_coef = -(np.float32(2) * zfar * znear) / (zfar - znear)
        c_coef = np.float32(-0.5) * c_coef - np.float32(0.5)
        d_coef = np.float32(-0.5) * d_coef
        depth = (d_coef / (zbuf.astype(np.float64) + c_coef)).astype(np.float32)
        # ids: 24-bit colour = segid + 1 (0 = background) -> (object id, object type)
        code = ids.astype(np.uint32)
        segimage = code[..., 0] + code[..., 1] * (2**8) + code[..., 2] * (2**16)
        ngeom = scene.ngeom
        lut = np.full((ngeom + 1, 2), -1, np.int32)
        geoms = [g for g in scene.geoms[:ngeom] if g.segid != -1]
        if geoms:
            segids = np.array([g.segid + 1 for g in geoms], np.int64)
            lut[segids, 0] = [g.objid for g in geoms]
            lut[segids, 1] = [g.objtype for g in geoms]
        out = lut[np.minimum(segimage, ngeom)]
        return np.flipud(out[..., 0]), np.flipud(out[..., 1]), np.flipud(depth)

    def proprio(self) -> np.ndarray:
        """Robot state only: hand xyz in the world (m) and gripper opening in [0, 1]."""
        hand = self.data.xpos[self.hand_body]
        fingers = np.linalg.norm(self.data.body("rightclaw").xpos - self.data.body("leftclaw").xpos)
        opening = np.clip(fingers / _GRIPPER_FULL_OPEN_M, 0.0, 1.0)
        return np.array([hand[0], hand[1], hand[2], opening], np.float32)

    def body_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """World positions (B 3) and orientations (B 4, w x y z) of every body, float64."""
        return self.data.xpos.copy(), self.data.xquat.copy()

    # -- camera geometry ---------------------------------------------------------------

    def intrinsics(self) -> CameraIntrinsics:
        fovy = float(self.model.cam_fovy[self.cam_id])
        return CameraIntrinsics.from_fov(self.width, self.height, fovy, estimated=False)

    def cam_to_world(self) -> np.ndarray:
        """4 x 4 camera-to-world, OpenCV axes (x right, y down, z forward)."""
        pose = np.eye(4)
        pose[:3, :3] = self.data.cam_xmat[self.cam_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = self.data.cam_xpos[self.cam_id]
        return pose

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def __enter__(self) -> "MetaWorldScene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rollout_episode(
    task: str,
    seed: int,
    size: int = 128,
    max_steps: int = 50,
    camera: str = DEFAULT_CAMERA,
    episode_index: int = 0,
    scene: Optional[MetaWorldScene] = None,
    dataset: str = DATASET_NAME,
    version: str = DATASET_VERSION,
    isolate: Optional[bool] = None,
) -> Episode:
    """Run the scripted expert for `max_steps` steps from the layout of `seed`, in memory.

    Step t holds the observation before action t (RLDS convention); rewards[t] and
    success come from applying action t. The episode runs the full `max_steps`
    (success does not stop it), and `success` is True when the task succeeded at
    any step. Reuse `scene` (same task, size, camera) to skip building the env.
    `isolate` (default: True unless a scene is given) runs it in a worker subprocess so
    that this process never loads MuJoCo (see the module docstring on TensorFlow).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if isolate is None:
        isolate = scene is None
    if isolate:
        if scene is not None:
            raise ValueError("isolate=True cannot reuse an in-process scene")
        with RolloutWorkers(1) as workers:
            return next(workers.run([_Request(task, seed, size, max_steps, camera, episode_index, dataset, version)]))
    own = scene is None
    if scene is None:
        scene = MetaWorldScene(task, size=size, camera=camera)
    elif (scene.task, scene.height, scene.camera) != (task, size, camera):
        raise ValueError(
            f"scene is ({scene.task}, {scene.height} px, {scene.camera}), asked for ({task}, {size} px, {camera})"
        )
    try:
        rec = _record(scene, seed, max_steps)
    finally:
        if own:
            scene.close()
    return _sim_episode(task, seed, camera, episode_index, dataset, version, scene.body_names, rec)


def _record(scene: "MetaWorldScene", seed: int, max_steps: int) -> dict:
    """Run the scripted expert from the layout of `seed` for max_steps steps and record every
    step's views, poses, proprio, action, reward and success (arrays with a leading T axis)."""
    scene.reset(seed)
    H, W, B = scene.height, scene.width, scene.model.nbody
    rec = {
        "frames": np.zeros((max_steps, H, W, 3), np.uint8), "depth": np.zeros((max_steps, H, W), np.float32),
        "seg": np.zeros((max_steps, H, W), np.int32), "body_pos": np.zeros((max_steps, B, 3), np.float64),
        "body_quat": np.zeros((max_steps, B, 4), np.float64), "actions": np.zeros((max_steps, 4), np.float32),
        "proprio": np.zeros((max_steps, 4), np.float32), "rewards": np.zeros(max_steps, np.float32),
        "success_steps": np.zeros(max_steps, bool),
    }
    for t in range(max_steps):
        view = scene.render()
        rec["frames"][t], rec["depth"][t], rec["seg"][t] = view["rgb"], view["depth_m"], view["segmentation"]
        rec["body_pos"][t], rec["body_quat"][t] = scene.body_poses()
        rec["proprio"][t] = scene.proprio()
        rec["actions"][t] = scene.expert_action()
        rec["rewards"][t], rec["success_steps"][t] = scene.step(rec["actions"][t])
    rec["intrinsics"], rec["cam_to_world"] = scene.intrinsics(), scene.cam_to_world()
    return rec


def _sim_episode(task: str, seed: int, camera: str, episode_index: int, dataset: str, version: str,
                 body_names, rec: dict) -> Episode:
    """The Episode (with ground truth) of a recorded rollout."""
    frames, depth, seg, actions, proprio = rec["frames"], rec["depth"], rec["seg"], rec["actions"], rec["proprio"]
    body_pos, body_quat, success_steps = rec["body_pos"], rec["body_quat"], rec["success_steps"]
    intr, cam_to_world = rec["intrinsics"], rec["cam_to_world"]
    where = Provenance(dataset, version, "train", int(episode_index), file=f"{task}/seed={seed}")
    if not np.all(np.isfinite(body_pos)) or not np.all(np.isfinite(proprio)):
        raise EpisodeError(where.describe(), "simulation diverged (non-finite body poses)", stage="simulate")
    depth_nan = depth.copy()
    depth_nan[depth_nan <= 0.0] = np.nan
    episode = Episode(
        provenance=where,
        language=instruction_for(task),
        frames={PRIMARY_CAMERA: frames},
        actions=actions,
        action_encoding=ACTION_ENCODING,
        control_hz=METAWORLD_CONTROL_HZ,
        primary_camera=PRIMARY_CAMERA,
        depth_m={PRIMARY_CAMERA: depth_nan},
        proprio=proprio,
        proprio_encoding=PROPRIO_ENCODING,
        intrinsics={PRIMARY_CAMERA: intr},
        extrinsics={PRIMARY_CAMERA: cam_to_world},
        success=bool(success_steps.any()),
        ground_truth=SimGroundTruth(
            segmentation=seg, body_pos=body_pos, body_quat=body_quat, cam_to_world=cam_to_world,
            camera=PRIMARY_CAMERA, body_names=body_names,
        ),
    )
    # Extras the RLDS writer stores; not part of the Episode contract.
    episode._sim = {  # type: ignore[attr-defined]
        "task": task,
        "seed": int(seed),
        "camera_name": camera,
        "rewards": rec["rewards"],
        "success_steps": success_steps,
        "body_names": body_names,
    }
    episode.check()
    return episode


# -- worker subprocesses ----------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    task: str
    seed: int
    size: int
    max_steps: int
    camera: str
    episode_index: int
    dataset: str = DATASET_NAME
    version: str = DATASET_VERSION


def _send(stream, obj) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(blob)))
    stream.write(blob)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("worker closed its pipe")
    (n,) = struct.unpack("<Q", head)
    blob = stream.read(n)
    if len(blob) < n:
        raise EOFError("worker closed its pipe mid-message")
    return pickle.loads(blob)


@dataclass(frozen=True)
class _Probe:
    """Ask a worker for the number of MuJoCo bodies of each task."""

    tasks: tuple[str, ...]


class RolloutWorkers:
    """Worker subprocesses (`python -m curation.sources.metaworld.rollout --worker`) that roll out episodes
    and send them back pickled. Results come back in request order. Each worker keeps
    one scene per (task, size, camera) while consecutive requests share it.

    They are fresh interpreters, not forks, so they never inherit TensorFlow."""

    def __init__(self, workers: int = 1, one_core: bool = False):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        env = dict(os.environ)
        if one_core:  # for benchmarks: llvmpipe renders on one thread, each worker pinned to one CPU
            env["LP_NUM_THREADS"] = "1"
            env["CURATION_SIM_PIN_CPU"] = "1"
        env.setdefault("MUJOCO_GL", "osmesa")
        env.setdefault("PYOPENGL_PLATFORM", "osmesa")
        root = str(pathlib.Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-m", "curation.sources.metaworld.rollout", "--worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root,
            )
            for _ in range(workers)
        ]
        self.render_s = 0.0  # wall / CPU seconds summed over the workers' episodes
        self.sim_s = 0.0
        self.render_cpu_s = 0.0
        self.sim_cpu_s = 0.0

    def worker_cpu_s(self) -> float:
        """Total CPU seconds (user + system) the worker processes have used so far."""
        import psutil

        total = 0.0
        for p in self._procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def num_bodies(self, tasks: Sequence[str]) -> dict[str, int]:
        """{task: number of MuJoCo bodies}, asked of the first worker."""
        _send(self._procs[0].stdin, _Probe(tuple(tasks)))
        kind, payload = _recv(self._procs[0].stdout)
        if kind == "error":
            raise RuntimeError(f"probing tasks {list(tasks)} failed: {payload[0]}: {payload[1]}")
        return payload

    def run(self, requests) -> Iterator[Episode]:
        """Yield one Episode per request, in order; up to 2 requests in flight per worker."""
        requests = list(requests)
        n = len(self._procs)
        sent = 0
        for k in range(len(requests)):
            while sent < len(requests) and sent < k + 2 * n:
                _send(self._procs[sent % n].stdin, requests[sent])
                sent += 1
            proc = self._procs[k % n]
            try:
                kind, payload = _recv(proc.stdout)
            except EOFError as e:
                code = proc.poll()
                raise RuntimeError(
                    f"simulation worker died on {requests[k].task} seed={requests[k].seed} (exit code {code}): {e}"
                ) from None
            if kind == "error":
                exc_type, message = payload
                if exc_type == "EpisodeError":
                    raise EpisodeError(f"{requests[k].task} seed={requests[k].seed}", message, stage="simulate")
                raise RuntimeError(f"simulation of {requests[k].task} seed={requests[k].seed} failed: {exc_type}: {message}")
            episode, (render_s, sim_s, render_cpu_s, sim_cpu_s) = payload
            self.render_s += render_s
            self.sim_s += sim_s
            self.render_cpu_s += render_cpu_s
            self.sim_cpu_s += sim_cpu_s
            yield episode

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for p in self._procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()

    def __enter__(self) -> "RolloutWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_main() -> int:
    """Serve rollout requests on stdin/stdout until stdin closes."""
    import warnings

    if os.environ.get("CURATION_SIM_PIN_CPU") and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})
    # Meta-World's policies warn on every action whose P-gain exceeds 1 (harmless, clipped).
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high", category=UserWarning)
    proto_in = sys.stdin.buffer
    proto_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    scene: Optional[MetaWorldScene] = None
    while True:
        try:
            req = _recv(proto_in)
        except EOFError:
            break
        try:
            if isinstance(req, _Probe):
                from metaworld.env_dict import ALL_V3_ENVIRONMENTS

                counts = {}
                for task in req.tasks:
                    env = ALL_V3_ENVIRONMENTS[task]()
                    counts[task] = int(env.model.nbody)
                    env.close()
                _send(proto_out, ("ok", counts))
                continue
            key = (req.task, req.size, req.camera)
            if scene is None or (scene.task, scene.height, scene.camera) != key:
                if scene is not None:
                    scene.close()
                scene = MetaWorldScene(req.task, size=req.size, camera=req.camera)
            before = (scene.render_s, scene.sim_s, scene.render_cpu_s, scene.sim_cpu_s)
            ep = rollout_episode(req.task, req.seed, req.size, req.max_steps, req.camera, req.episode_index,
                                 scene=scene, dataset=req.dataset, version=req.version, isolate=False)
            after = (scene.render_s, scene.sim_s, scene.render_cpu_s, scene.sim_cpu_s)
            _send(proto_out, ("ok", (ep, tuple(a - b for a, b in zip(after, before)))))
        except Exception as e:  # report to the parent, which names the episode
            _send(proto_out, ("error", (type(e).__name__, str(e))))
    if scene is not None:
        scene.close()
    return 0


# -- RLDS serialisation ----------------------------------------------------------------


def rlds_features(size: int, num_bodies: int, width: Optional[int] = None):
    """The on-disk feature layout of metaworld_sim (H1's reader depends on it)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    H, W, B = int(size), int(width or size), int(num_bodies)
    tensor = tfds.features.Tensor
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(
                {
                    "observation": tfds.features.FeaturesDict(
                        {
                            "image": tfds.features.Image(shape=(H, W, 3), dtype=np.uint8, encoding_format="png",
                                                         doc="RGB, fixed third-person camera, right side up"),
                            "depth": tensor(shape=(H, W), dtype=np.float32,
                                            doc="metres along the optical axis; 0.0 where no surface"),
                            "segmentation": tensor(shape=(H, W), dtype=np.int32,
                                                   doc="MuJoCo body id per pixel, -1 background"),
                            "state": tensor(shape=(4,), dtype=np.float32,
                                            doc="end-effector xyz (world, m) + gripper opening in [0, 1]"),
                        }
                    ),
                    "action": tensor(shape=(4,), dtype=np.float32,
                                     doc="Meta-World action in [-1, 1]: xyz delta (x 1 cm) + gripper"),
                    "language_instruction": tfds.features.Text(),
                    "reward": tfds.features.Scalar(dtype=np.float32),
                    "discount": tfds.features.Scalar(dtype=np.float32),
                    "is_first": tfds.features.Scalar(dtype=np.bool_),
                    "is_last": tfds.features.Scalar(dtype=np.bool_),
                    "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                    "ground_truth": tfds.features.FeaturesDict(
                        {
                            "body_pos": tensor(shape=(B, 3), dtype=np.float32,
                                               doc="world positions of all bodies (m); NaN rows pad tasks with fewer bodies"),
                            "body_quat": tensor(shape=(B, 4), dtype=np.float32,
                                                doc="world orientations (w, x, y, z); NaN rows are padding"),
                        }
                    ),
                }
            ),
            "episode_metadata": tfds.features.FeaturesDict(
                {
                    "file_path": tfds.features.Text(),
                    "task": tfds.features.Text(),
                    "seed": tfds.features.Scalar(dtype=np.int64),
                    "success": tfds.features.Scalar(dtype=np.bool_),
                    "camera_name": tfds.features.Text(),
                    "intrinsics": tensor(shape=(4,), dtype=np.float32, doc="[fx, fy, cx, cy] pixels"),
                    "cam_to_world": tensor(shape=(4, 4), dtype=np.float32, doc="OpenCV axes"),
                    "num_bodies": tfds.features.Scalar(dtype=np.int32, doc="bodies of this task (rows before padding)"),
                    "body_names": tfds.features.Text(doc="MuJoCo body names, newline separated, index = body id"),
                    "control_hz": tfds.features.Scalar(dtype=np.float32),
                }
            ),
        }
    )


def episode_to_rlds(episode: Episode, num_bodies: int) -> dict:
    """Serialise an in-memory simulated Episode to one RLDS example ({steps, episode_metadata}).

    Body arrays are padded with NaN rows to `num_bodies` (the dataset's largest task)."""
    sim = getattr(episode, "_sim", None)
    gt = episode.ground_truth
    if sim is None or gt is None:
        raise EpisodeError(episode.provenance.describe(), "not a simulated episode (no ground truth)", stage="write")
    T = episode.num_steps
    B = gt.body_pos.shape[1]
    if num_bodies < B:
        raise ValueError(f"num_bodies {num_bodies} < bodies of the episode {B}")
    body_pos = np.full((T, num_bodies, 3), np.nan, np.float32)
    body_quat = np.full((T, num_bodies, 4), np.nan, np.float32)
    body_pos[:, :B] = gt.body_pos
    body_quat[:, :B] = gt.body_quat
    cam = episode.primary_camera
    depth = np.nan_to_num(episode.depth_m[cam], nan=0.0).astype(np.float32)
    is_first = np.zeros(T, bool)
    is_first[0] = True
    is_last = np.zeros(T, bool)
    is_last[-1] = True
    steps = {
        "observation": {
            "image": episode.frames[cam],
            "depth": depth,
            "segmentation": gt.segmentation.astype(np.int32),
            "state": episode.proprio.astype(np.float32),
        },
        "action": episode.actions.astype(np.float32),
        "language_instruction": [episode.language] * T,
        "reward": sim["rewards"].astype(np.float32),
        "discount": np.ones(T, np.float32),
        "is_first": is_first,
        "is_last": is_last,
        # Episodes end by time limit, not in a terminal state.
        "is_terminal": np.zeros(T, bool),
        "ground_truth": {"body_pos": body_pos, "body_quat": body_quat},
    }
    meta = {
        "file_path": episode.provenance.file,
        "task": sim["task"],
        "seed": int(sim["seed"]),
        "success": bool(episode.success),
        "camera_name": sim["camera_name"],
        "intrinsics": episode.intrinsics[cam].as_array(),
        "cam_to_world": gt.cam_to_world.astype(np.float32),
        "num_bodies": np.int32(B),
        "body_names": "\n".join(sim["body_names"]),
        "control_hz": np.float32(episode.control_hz),
    }
    return {"steps": steps, "episode_metadata": meta}


def iter_episodes(
    tasks: Sequence[str],
    episodes_per_task: int,
    size: int = 128,
    max_steps: int = 50,
    seed: int = 0,
    camera: str = DEFAULT_CAMERA,
    progress: bool = True,
    workers: int = 1,
    timings: Optional[dict] = None,
    pool: Optional["RolloutWorkers"] = None,
) -> Iterator[Episode]:
    """Episodes in order (task by task, episode 0..N-1), rolled out in `workers` subprocesses
    (or in `pool`). `timings`, when given, receives render_s and sim_s summed over the workers."""
    from schemas.progress import progress_bar

    requests = [
        _Request(task, episode_seed(seed, task, i), size, max_steps, camera, k * episodes_per_task + i)
        for k, task in enumerate(tasks)
        for i in range(episodes_per_task)
    ]
    own = pool is None
    if pool is None:
        pool = RolloutWorkers(max(1, min(workers, len(requests))))
    bar = progress_bar(total=len(requests), desc="simulate", unit="ep", disable=not progress)
    try:
        for ep in pool.run(requests):
            bar.update(1)
            bar.set_postfix(task=ep._sim["task"], success=ep.success)
            if timings is not None:
                timings["render_s"], timings["sim_s"] = pool.render_s, pool.sim_s
            yield ep
    finally:
        bar.close()
        if own:
            pool.close()


def _check_args(tasks: Sequence[str], episodes_per_task: int, size: int, max_steps: int, camera: str) -> None:
    if not tasks:
        raise ValueError("no tasks given")
    unknown = [t for t in tasks if t not in TASK_INSTRUCTIONS]
    if unknown:
        raise ValueError(f"unknown Meta-World task(s) {unknown}; known: {', '.join(available_tasks())}")
    if episodes_per_task < 1:
        raise ValueError(f"episodes per task must be >= 1, got {episodes_per_task}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if size < 8:
        raise ValueError(f"image size must be >= 8 px, got {size}")
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; known: {', '.join(CAMERAS)}")


def simulate_dataset(
    out_root,
    tasks: list[str],
    episodes_per_task: int,
    size: int = 128,
    max_steps: int = 50,
    seed: int = 0,
    camera: str = DEFAULT_CAMERA,
    progress: bool = True,
    episodes_per_shard: Optional[int] = None,
    summary: Optional[list] = None,
    workers: int = 1,
    timings: Optional[dict] = None,
) -> pathlib.Path:
    """Simulate tasks x episodes with the scripted experts and write them as an RLDS
    dataset; returns <out_root>/metaworld_sim/1.0.0.

    Episodes are written in order (task by task). `summary`, when given, receives one
    dict per episode (task, seed, steps, success, episode_index); `timings` receives
    render_s / sim_s. `workers` subprocesses roll out in parallel; the output is the
    same for any count. This process never imports MuJoCo (see module docstring)."""
    from curation.sources.rlds_write import write_rlds_dataset

    tasks = list(tasks)
    _check_args(tasks, episodes_per_task, size, max_steps, camera)
    n_episodes = len(tasks) * episodes_per_task
    with RolloutWorkers(max(1, min(workers, n_episodes))) as pool:
        # The feature spec needs the largest body count; only a worker may load MuJoCo.
        num_bodies = max(pool.num_bodies(list(dict.fromkeys(tasks))).values())

        def examples():
            for ep in iter_episodes(tasks, episodes_per_task, size, max_steps, seed, camera, progress,
                                    timings=timings, pool=pool):
                if summary is not None:
                    summary.append({"task": ep._sim["task"], "seed": ep._sim["seed"], "steps": ep.num_steps,
                                    "success": bool(ep.success), "episode_index": ep.provenance.episode_index})
                yield episode_to_rlds(ep, num_bodies)

        description = (
            "Meta-World v3 scripted-expert rollouts with simulator ground truth (depth, segmentation, "
            f"body poses, camera). Tasks: {', '.join(dict.fromkeys(tasks))}; {episodes_per_task} episode(s) each; "
            f"{max_steps} steps at {METAWORLD_CONTROL_HZ:g} Hz; {size} px camera {camera!r}; base seed {seed}."
        )
        return write_rlds_dataset(
            out_root, DATASET_NAME, DATASET_VERSION, rlds_features(size, num_bodies),
            {"train": examples()}, description=description, episodes_per_shard=episodes_per_shard,
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        # Run the imported module's loop, not __main__'s: pickled requests name curation.sources.metaworld.rollout classes.
        from curation.sources.metaworld.rollout import _worker_main as _serve

        sys.exit(_serve())
    sys.exit("usage: python -m curation.sources.metaworld.rollout --worker  (internal; use `curate simulate`)")
