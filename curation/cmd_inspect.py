"""`curate inspect PATH [--split S] [--json]`: what an RLDS dataset directory holds.

Reads every episode of the split (or the first --max-episodes) through the same reader the
pipeline uses and reports episodes, steps, cameras (shape, blank or not), depth keys,
distinct language instructions, action dimension, control rate and the bad episodes."""

from __future__ import annotations

import math
import time
from collections import Counter


def add_commands(subparsers) -> None:
    from curation.report import add_report_args

    p = subparsers.add_parser("inspect", help="summarise an RLDS dataset directory (Open-X or simulated)")
    p.add_argument("path", help="dataset directory <root>/<name>/<version> (local path or gs:// URL)")
    p.add_argument("--split", default="train", help="TFDS split (default train)")
    p.add_argument("--max-episodes", type=int, default=None, help="read only the first N episodes")
    add_report_args(p)
    p.set_defaults(func=run_inspect)


def inspect_dataset(path: str, split: str = "train", max_episodes: int | None = None, progress: bool = True) -> dict:
    """Read the split and return the summary dict `curate inspect` prints."""
    import numpy as np
    from tqdm import tqdm

    from curation.rlds import RLDSSource, dataset_summary_features
    from schemas.episode import EpisodeError

    t0 = time.perf_counter()
    source = RLDSSource(path, split)
    cfg = source.config
    stop = source.num_episodes if max_episodes is None else min(max_episodes, source.num_episodes)
    feats = dataset_summary_features(source)

    n_ok = 0
    steps = 0
    lengths = []
    blank = Counter()
    shapes: dict[str, tuple] = {}
    instructions = Counter()
    action_dims = set()
    proprio_dims = set()
    depth_valid = Counter()
    depth_px = Counter()
    success = Counter()
    bad = []
    for item in tqdm(source.read(0, stop, on_error="yield"), total=stop, desc=f"inspect {source.name}",
                     unit="ep", disable=not progress):
        if isinstance(item, EpisodeError):
            bad.append({"where": item.where, "reason": item.reason})
            continue
        ep = item
        n_ok += 1
        steps += ep.num_steps
        lengths.append(ep.num_steps)
        for cam, fr in ep.frames.items():
            shapes.setdefault(cam, tuple(fr.shape[1:]))
        blank.update(ep.blank_cameras)
        instructions[ep.language] += 1
        action_dims.add(int(ep.actions.shape[1]))
        if ep.proprio is not None:
            proprio_dims.add(int(ep.proprio.shape[1]))
        for cam, d in ep.depth_m.items():
            depth_valid[cam] += int(np.isfinite(d).sum())
            depth_px[cam] += int(d.size)
        if ep.success is not None:
            success[bool(ep.success)] += 1

    roles = {cfg.primary_camera: "primary", cfg.secondary_camera: "secondary", cfg.wrist_camera: "wrist"}
    cameras = []
    for cam in cfg.cameras:
        shape = list(shapes.get(cam) or feats["cameras"].get(cam, []))
        cameras.append({
            "name": cam,
            "role": roles.get(cam, "extra"),
            "shape": shape,
            "blank": n_ok > 0 and blank[cam] == n_ok,
            "blank_episodes": int(blank[cam]),
            "bgr_flipped": cam in cfg.bgr_cameras,
        })
    depth = [
        {"key": d.key, "camera": d.camera, "units": d.units, "scale_to_m": d.scale_to_m,
         "valid_fraction": (depth_valid[d.camera] / depth_px[d.camera]) if depth_px[d.camera] else None}
        for d in cfg.depth
    ]
    distinct = sorted(t for t in instructions if t)
    return {
        "path": str(path),
        "dataset": source.name,
        "version": source.version,
        "split": split,
        "registered": not cfg.inferred,
        "files": len(source.files),
        "episodes_in_split": source.num_episodes,
        "episodes": n_ok,
        "bad_episodes": bad,
        "steps": steps,
        "steps_per_episode": {"min": min(lengths), "max": max(lengths), "mean": steps / len(lengths)} if lengths else {},
        "cameras": cameras,
        "depth": depth,
        "instructions": distinct,
        "num_instructions": len(distinct),
        "episodes_without_language": int(instructions.get("", 0)),
        "language_informative": cfg.language_informative,
        "action_dim": sorted(action_dims)[0] if len(action_dims) == 1 else sorted(action_dims),
        "action_keys": list(cfg.action_keys),
        "action_encoding": cfg.action_encoding,
        "proprio_dim": (sorted(proprio_dims)[0] if len(proprio_dims) == 1 else sorted(proprio_dims)) if proprio_dims else None,
        "proprio_encoding": cfg.proprio_encoding,
        "control_hz": None if math.isnan(cfg.control_hz) else cfg.control_hz,
        "success_rate": (success[True] / sum(success.values())) if success else None,
        "notes": cfg.notes,
        "read_s": time.perf_counter() - t0,
    }


def format_inspect(r: dict) -> str:
    from curation.report import format_table

    hz = "unknown" if r["control_hz"] is None else f"{r['control_hz']:g} Hz"
    lines = [
        f"{r['dataset']} {r['version']}  split={r['split']}  ({r['path']})"
        + ("" if r["registered"] else "  [not in registry: keys inferred]"),
        f"episodes: {r['episodes']} read of {r['episodes_in_split']} in {r['files']} file(s), "
        f"{len(r['bad_episodes'])} bad",
        f"steps: {r['steps']}" + (f"  (per episode {r['steps_per_episode']['min']}..{r['steps_per_episode']['max']})"
                                   if r["steps_per_episode"] else ""),
        f"control rate: {hz}",
        f"action: dim {r['action_dim']} ({r['action_encoding']}) from {', '.join(r['action_keys'])}",
        f"proprio: " + ("none" if r["proprio_dim"] is None else f"dim {r['proprio_dim']} ({r['proprio_encoding']})"),
        "",
        "cameras:",
        format_table([
            {"camera": c["name"], "role": c["role"], "shape": "x".join(map(str, c["shape"])),
             "blank": "BLANK" if c["blank"] else (f"blank in {c['blank_episodes']}" if c["blank_episodes"] else "no"),
             "bgr->rgb": "yes" if c["bgr_flipped"] else ""}
            for c in r["cameras"]
        ]),
        "",
        "depth: " + (", ".join(f"{d['key']} -> {d['camera']} ({d['units']})" for d in r["depth"]) or "none"),
        f"language: {r['num_instructions']} distinct instruction(s)"
        + ("" if r["language_informative"] else " [dataset language is uninformative]")
        + (f", {r['episodes_without_language']} episode(s) without" if r["episodes_without_language"] else ""),
    ]
    lines += [f"  - {t}" for t in r["instructions"][:20]]
    if len(r["instructions"]) > 20:
        lines.append(f"  ... {len(r['instructions']) - 20} more")
    if r["success_rate"] is not None:
        lines.append(f"success rate: {r['success_rate']:.2f}")
    if r["bad_episodes"]:
        lines.append("bad episodes:")
        lines += [f"  - {b['where']}: {b['reason']}" for b in r["bad_episodes"]]
    lines.append(f"read in {r['read_s']:.1f} s")
    return "\n".join(lines)


def run_inspect(args) -> int:
    from curation.report import emit
    from schemas.episode import EpisodeError

    try:
        result = inspect_dataset(args.path, args.split, args.max_episodes)
    except EpisodeError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 1
    emit(result, args.json, format_inspect(result))
    return 0  # bad episodes are reported, not fatal: inspect is a report
