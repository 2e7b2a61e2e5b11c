"""Closed-loop evaluation in Meta-World with the curated data's camera and image size.

    checkpoint ─► LaMPPolicy ─┐
    MetaWorldScene(task, size = policy image size, camera = the dataset's sim camera)
        reset(seed_i) ─► loop: render RGB + proprio ─► select_action ─► step ─► success?
    ─► per task: successes / episodes, 95% Wilson interval, the outcome of every layout
       (for paired comparisons between checkpoints), a rollout image strip (PNG)

Evaluation layouts come from curation.sources.metaworld.rollout.episode_seed(eval_seed, task, i) with
eval_seed (default 10_000) different from the curation seed, so the policy sees held-out
object/goal placements.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

DEFAULT_EVAL_SEED = 10_000


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def save_strip(frames: Sequence[np.ndarray], path: str | Path, max_frames: int = 10, label: str = "") -> Path:
    """Evenly spaced frames of a rollout side by side in one PNG (a caption bar on top)."""
    from PIL import Image, ImageDraw

    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))).astype(int))
    tiles = [np.asarray(frames[i]) for i in idx]
    H, W = tiles[0].shape[:2]
    strip = np.concatenate(tiles, axis=1)
    bar = 14
    canvas = Image.new("RGB", (strip.shape[1], H + bar), (255, 255, 255))
    canvas.paste(Image.fromarray(strip), (0, bar))
    if label:
        ImageDraw.Draw(canvas).text((2, 1), label, fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return Path(path)


def run_episode(policy, scene, seed: int, max_steps: int, record: bool = False) -> dict:
    """One closed-loop episode; stops at the first success."""
    policy.reset()
    policy.set_seed(seed)
    scene.reset(seed)
    frames, success, t = [], False, 0
    for t in range(max_steps):
        rgb = scene.render(rgb=True, depth=False, segmentation=False)["rgb"]
        if record:
            frames.append(rgb)
        action = policy.select_action({"image": rgb, "state": scene.proprio(), "language": scene.instruction})
        _, success = scene.step(np.asarray(action, np.float32))
        if success:
            if record:
                frames.append(scene.render(rgb=True, depth=False, segmentation=False)["rgb"])
            break
    return {"success": bool(success), "steps": t + 1, "frames": frames}


def evaluate(checkpoint: str, tasks: Sequence[str], episodes: int, max_steps: int = 150, camera: Optional[str] = None,
             eval_seed: int = DEFAULT_EVAL_SEED, strip_dir: Optional[str | Path] = None, progress: bool = True) -> dict:
    """Success rate per task (+ Wilson interval) of the checkpoint's policy."""
    import torch
    from schemas.progress import progress_bar

    from curation.sources.metaworld.rollout import DEFAULT_CAMERA, MetaWorldScene, episode_seed
    from policy.train import load_policy

    policy, state = load_policy(checkpoint)
    policy.eval()
    H, W = policy.config.image_size
    camera = camera or DEFAULT_CAMERA
    strip_dir = Path(strip_dir) if strip_dir else None
    rows = []
    torch.set_grad_enabled(False)
    bar = progress_bar(total=len(tasks) * episodes, desc="eval", unit="ep", disable=not progress, dynamic_ncols=True)
    for task in tasks:
        scene = MetaWorldScene(task, size=H, camera=camera, width=W)
        succ, steps, outcomes, t0 = 0, [], [], time.perf_counter()
        strip = None
        try:
            for i in range(episodes):
                r = run_episode(policy, scene, episode_seed(eval_seed, task, i), max_steps, record=(i == 0 and strip_dir is not None))
                succ += r["success"]
                steps.append(r["steps"])
                outcomes.append(int(r["success"]))
                if r["frames"]:
                    strip = save_strip(r["frames"], strip_dir / f"{task}.png",
                                       label=f"{task} ep0 {'success' if r['success'] else 'fail'} in {r['steps']} steps")
                bar.update(1)
                bar.set_postfix(task=task, success=f"{succ}/{i + 1}")
        finally:
            scene.close()
        lo, hi = wilson_interval(succ, episodes)
        rows.append({"task": task, "episodes": episodes, "successes": succ, "success_rate": succ / max(1, episodes),
                     "ci95_low": lo, "ci95_high": hi, "mean_steps": float(np.mean(steps)) if steps else float("nan"),
                     "wall_s": time.perf_counter() - t0, "strip": str(strip) if strip else None,
                     "outcomes": outcomes})  # per layout i = 0..episodes-1: the unit of paired comparisons
    bar.close()
    total = sum(r["successes"] for r in rows)
    n = sum(r["episodes"] for r in rows)
    lo, hi = wilson_interval(total, n)
    return {"checkpoint": str(checkpoint), "fusion": policy.config.fusion, "variant": policy.config.variant, "dataset_version": state.get("dataset_version"),
            "step": state.get("step"), "camera": camera, "image_size": [H, W], "max_steps": max_steps,
            "eval_seed": eval_seed, "tasks": rows,
            "overall": {"episodes": n, "successes": total, "success_rate": total / max(1, n), "ci95_low": lo, "ci95_high": hi}}
