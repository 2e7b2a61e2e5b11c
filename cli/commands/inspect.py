"""`curate inspect PATH [--split S] [--json]`: what an RLDS dataset directory holds, or, for a
dataset written by `curate run`, its counts and which labels its episodes have (and why not).

Reads every episode of the split (or the first --max-episodes) through the same reader the
pipeline uses and reports episodes, steps, cameras (shape, blank or not), depth keys,
distinct language instructions, action dimension, control rate and the bad episodes."""

from __future__ import annotations

import math
import time
from collections import Counter


def add_commands(subparsers) -> None:
    from cli.output import add_report_args

    p = subparsers.add_parser("inspect", help="summarise an RLDS dataset directory (Open-X or simulated) or a curated dataset")
    p.add_argument("path", help="dataset directory <root>/<name>/<version> (local path or gs:// URL), or a "
                                "dataset written by `curate run` (then: counts and label coverage)")
    p.add_argument("--split", default="train", help="TFDS split (default train)")
    p.add_argument("--max-episodes", type=int, default=None, help="read only the first N episodes")
    add_report_args(p)
    p.set_defaults(func=run_inspect)


class _Tally:
    """What `curate inspect` counts over the episodes it reads."""

    def __init__(self):
        self.n_ok, self.steps, self.lengths, self.bad = 0, 0, [], []
        self.blank, self.instructions, self.success = Counter(), Counter(), Counter()
        self.depth_valid, self.depth_px = Counter(), Counter()
        self.shapes: dict[str, tuple] = {}
        self.action_dims, self.proprio_dims = set(), set()

    def add(self, ep) -> None:
        import numpy as np

        self.n_ok += 1
        self.steps += ep.num_steps
        self.lengths.append(ep.num_steps)
        for cam, fr in ep.frames.items():
            self.shapes.setdefault(cam, tuple(fr.shape[1:]))
        self.blank.update(ep.blank_cameras)
        self.instructions[ep.language] += 1
        self.action_dims.add(int(ep.actions.shape[1]))
        if ep.proprio is not None:
            self.proprio_dims.add(int(ep.proprio.shape[1]))
        for cam, d in ep.depth_m.items():
            self.depth_valid[cam] += int(np.isfinite(d).sum())
            self.depth_px[cam] += int(d.size)
        if ep.success is not None:
            self.success[bool(ep.success)] += 1


def _camera_rows(cfg, tally: _Tally, feats: dict) -> list[dict]:
    roles = {cfg.primary_camera: "primary", cfg.secondary_camera: "secondary", cfg.wrist_camera: "wrist"}
    return [{
        "name": cam,
        "role": roles.get(cam, "extra"),
        "shape": list(tally.shapes.get(cam) or feats["cameras"].get(cam, [])),
        "blank": tally.n_ok > 0 and tally.blank[cam] == tally.n_ok,
        "blank_episodes": int(tally.blank[cam]),
        "bgr_flipped": cam in cfg.bgr_cameras,
    } for cam in cfg.cameras]


def _one_or_all(dims: set):
    return sorted(dims)[0] if len(dims) == 1 else sorted(dims)


def inspect_dataset(path: str, split: str = "train", max_episodes: int | None = None, progress: bool = True) -> dict:
    """Read the split and return the summary dict `curate inspect` prints."""
    from schemas.progress import progress_bar

    from curation.sources.rlds import RLDSSource, dataset_summary_features
    from schemas.episode import EpisodeError

    t0 = time.perf_counter()
    source = RLDSSource(path, split)
    cfg = source.config
    stop = source.num_episodes if max_episodes is None else min(max_episodes, source.num_episodes)
    feats = dataset_summary_features(source)
    tally = _Tally()
    for item in progress_bar(source.read(0, stop, on_error="yield"), total=stop, desc=f"inspect {source.name}",
                             unit="ep", disable=not progress):
        if isinstance(item, EpisodeError):
            tally.bad.append({"where": item.where, "reason": item.reason})
        else:
            tally.add(item)
    t = tally
    depth = [
        {"key": d.key, "camera": d.camera, "units": d.units, "scale_to_m": d.scale_to_m,
         "valid_fraction": (t.depth_valid[d.camera] / t.depth_px[d.camera]) if t.depth_px[d.camera] else None}
        for d in cfg.depth
    ]
    distinct = sorted(x for x in t.instructions if x)
    return {
        "path": str(path), "dataset": source.name, "version": source.version, "split": split,
        "registered": not cfg.inferred, "files": len(source.files), "episodes_in_split": source.num_episodes,
        "episodes": t.n_ok, "bad_episodes": t.bad, "steps": t.steps,
        "steps_per_episode": ({"min": min(t.lengths), "max": max(t.lengths), "mean": t.steps / len(t.lengths)}
                              if t.lengths else {}),
        "cameras": _camera_rows(cfg, t, feats), "depth": depth,
        "instructions": distinct, "num_instructions": len(distinct),
        "episodes_without_language": int(t.instructions.get("", 0)),
        "language_informative": cfg.language_informative,
        "action_dim": _one_or_all(t.action_dims), "action_keys": list(cfg.action_keys),
        "action_encoding": cfg.action_encoding,
        "proprio_dim": _one_or_all(t.proprio_dims) if t.proprio_dims else None,
        "proprio_encoding": cfg.proprio_encoding,
        "control_hz": None if math.isnan(cfg.control_hz) else cfg.control_hz,
        "success_rate": (t.success[True] / sum(t.success.values())) if t.success else None,
        "notes": cfg.notes, "read_s": time.perf_counter() - t0,
    }


def format_inspect(r: dict) -> str:
    from curation.formats import format_table

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
        "proprio: " + ("none" if r["proprio_dim"] is None else f"dim {r['proprio_dim']} ({r['proprio_encoding']})"),
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


def is_curated(path: str) -> bool:
    """A dataset written by `curate run` (a manifest beside dataset.json), not an RLDS source."""
    from pathlib import Path

    from schemas.dataset import DATASET_JSON, MANIFEST

    return "://" not in path and (Path(path) / MANIFEST).is_file() and (Path(path) / DATASET_JSON).is_file()


def inspect_curated(path: str) -> dict:
    """What a curated dataset holds: its source, counts, and per label who has it and why not."""
    import json
    from pathlib import Path

    from curation.describe.coverage import label_coverage
    from schemas.dataset import DATASET_JSON

    info = json.loads((Path(path) / DATASET_JSON).read_text())
    counts = {k: v for k, v in (info.get("counts") or {}).items() if not isinstance(v, (dict, list))}
    return {"path": path, "curated": True, "source": info.get("source", {}), "complete": info.get("complete"),
            "contract_version": info.get("contract_version"), "counts": counts, "coverage": label_coverage(path)}


def format_curated(r: dict) -> str:
    from curation.describe.coverage import coverage_table_rows, missing_labels_line
    from curation.formats import format_table

    src, c = r["source"], r["counts"]
    lines = [f"curated dataset {r['path']}  (contract {r['contract_version']}, "
             f"{'complete' if r['complete'] else 'INCOMPLETE'})",
             f"source: {src.get('name')} {src.get('version')} split={src.get('split')}  ({src.get('path')})",
             "counts: " + ", ".join(f"{k} {v}" for k, v in c.items()), "", "labels:",
             format_table(coverage_table_rows(r["coverage"]))]
    line = missing_labels_line(r["coverage"])
    return "\n".join(lines + ([line] if line else []))


def run_inspect(args) -> int:
    from cli.output import emit
    from schemas.episode import EpisodeError

    if is_curated(args.path):
        result = inspect_curated(args.path)
        emit(result, args.json, format_curated(result))
        return 0
    try:
        result = inspect_dataset(args.path, args.split, args.max_episodes)
    except EpisodeError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 1
    emit(result, args.json, format_inspect(result))
    return 0  # bad episodes are reported, not fatal: inspect is a report
