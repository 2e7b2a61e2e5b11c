"""The dataset card: README.md (Hugging Face style) plus pictures in card/.

Everything on the card is read back from the written dataset (dataset.json,
manifest.parquet, filtered.parquet, quarantine.parquet, stats.json, the Zarr
shards), so the card describes what is on disk, not what a job meant to do.

Pictures (PNG, matplotlib Agg):
    card/sample_tracks.png       anchor frames with the point tracks drawn as
                                 polylines coloured by depth (metres) where the
                                 episode has depth, else by horizon step
    card/motion_images.png       motion images (labelers.flow.decode_motion_image)
                                 rendered with the Middlebury colour wheel
                                 (labelers.flow.flow_to_color), one radius for all
                                 panels (the 99th percentile of |flow| shown)
    card/action_histograms.png   per source dataset, a histogram per action dimension
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from schemas.durable import real_directory, write_replacing
from schemas.dataset import DATASET_JSON, FILTERED, MANIFEST, QUARANTINE, SHARDS_DIR, STATS_JSON

log = logging.getLogger(__name__)

CARD_DIR = "card"
README = "README.md"
SAMPLES = 4  # episodes shown in the pictures
_HIST_FRAMES = 200_000  # action values read per dataset for the histograms
MAX_DATASET_TAGS = 10  # source-dataset tags in the front matter, so a large mixture keeps a short tag list
TOP_INSTRUCTIONS = 20  # the most frequent instructions listed
# Picture titles are cut to what fits above a panel at the font size used (7 pt).
TITLE_LANGUAGE_CHARS = 40  # of the instruction, above a track panel 3.2 inches wide
TITLE_DATASET_CHARS = 18  # of the dataset name, above a histogram panel 1.9 inches wide
HIST_BINS = 40  # per action dimension
# The measured label accuracy shipped with the package (see _load_accuracy).
LABEL_ACCURACY = "label_accuracy.json"


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1T"


def _read_table(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def _load_accuracy(accuracy: Optional[dict]) -> tuple[Optional[dict], str]:
    """The label accuracy to show: the caller's, else the table that ships with the package
    (LABEL_ACCURACY, written by `curate bench labels` and committed like code), never a file of
    the working directory or checkout, which would let the last bench run decide the card."""
    if accuracy is not None:
        return accuracy, "passed by the caller"
    from importlib.resources import files

    table = files("curation.describe").joinpath(LABEL_ACCURACY)
    if table.is_file():
        try:
            return json.loads(table.read_text()), f"curation/describe/{LABEL_ACCURACY}"
        except ValueError:
            log.warning("%s: not valid JSON, label accuracy left out of the card", table)
    return None, ""


def _flatten(d, prefix: str = "", out: Optional[dict] = None, limit: int = 80) -> dict:
    """Nested dict -> {"a.b.c": number} for numeric leaves (first `limit`)."""
    out = {} if out is None else out
    if isinstance(d, dict):
        for k, v in d.items():
            if len(out) >= limit:
                break
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, limit)
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = d
    return out


# Moving points first: most of a frame is static, so the all-points figures flatter the labels.
_BENCH_LABELS = ("moving_points", "flow_moving_pixels", "flow", "tracks", "sceneflow", "depth")
# Which of the bench's `labelled_with` tables describes the rows of each label.
_SPEC_TABLE = {"moving_points": "tracks", "flow_moving_pixels": "flow"}
# The manifest's label name of each LabelConfig backend kind (EpisodeLabeler.backends).
_RECORDED_AS = {"depth": "depth", "tracker": "tracks", "flow": "flow"}


def _labelled_with(labels: Optional[dict], backends: Counter) -> dict:
    """What this dataset was labelled with, in the form of the bench's row specs:
    {kind: {"backend", "params" (constructor defaults filled in), "gap" | "frame_step"}}, from the
    label config in dataset.json, for the kinds the manifest records that backend for (no depth
    backend where no episode had depth; none at all for labels from simulator ground truth)."""
    from labelers.episode_labeler import LabelConfig

    if not labels:
        return {}
    try:
        c = LabelConfig.from_dict(labels)
    except (TypeError, ValueError) as exc:  # a config this version cannot read: nothing is marked
        log.warning("label config of dataset.json not readable (%s); no accuracy row marked as used", exc)
        return {}
    chosen = {"depth": (c.depth, c.depth_params, {}), "tracker": (c.tracker, c.tracker_params, {"frame_step": 1}),
              "flow": (c.flow, c.flow_params, {"gap": c.flow_gap})}
    recorded = set(backends)  # (label, backend) pairs of the manifest
    return {kind: _effective({"backend": name, "params": params, **extra}, kind)
            for kind, (name, params, extra) in chosen.items() if (_RECORDED_AS[kind], name) in recorded}


def _effective(spec: dict, kind: str) -> dict:
    from labelers.backends import effective_params

    return {**spec, "params": effective_params(kind, spec["backend"], spec.get("params"))}


def _row_used(spec: Optional[dict], labelled: dict) -> bool:
    """A bench row is this dataset's when every labeler it was scored with is the dataset's, with
    the same parameters (and flow gap / frame rate)."""
    if not spec or not labelled:
        return False
    return all(kind in labelled and _effective(part, kind) == labelled[kind] for kind, part in spec.items())


def _bench_accuracy_rows(accuracy: dict, labelled: dict) -> list[tuple[str, list[dict]]]:
    """Rows of a `curate bench labels` result ({label: [{backend, task, metrics...}]}),
    pooled over tasks (task "all"), marking the rows of what this dataset was labelled with
    (the result's `labelled_with`: {label: {row backend: spec}})."""
    specs = accuracy.get("labelled_with") or {}
    out = []
    for label in _BENCH_LABELS:
        entries = accuracy.get(label)
        rows = [r for r in entries if isinstance(r, dict) and r.get("task", "all") == "all"] if isinstance(entries, list) else []
        label_specs = specs.get(_SPEC_TABLE.get(label, label), {})
        table = []
        for r in rows:
            backend = str(r.get("backend", ""))
            used = _row_used(label_specs.get(backend), labelled)
            metrics = {k: v for k, v in r.items() if k not in ("backend", "task") and isinstance(v, (int, float))}
            table.append({"backend": backend, "used": "yes" if used else "", **metrics})
        if table:
            out.append((label, table))
    return out


def _open_shard(dataset_dir: Path, shard: str):
    import zarr

    return zarr.open_group(str(dataset_dir / SHARDS_DIR / shard.split("/")[-1]), mode="r")


def _pick_samples(rows: list[dict], n: int) -> list[dict]:
    """Up to n episodes, spread over source datasets (round robin), in manifest order."""
    by_ds: dict[str, list[dict]] = {}
    for r in rows:
        by_ds.setdefault(r["dataset"], []).append(r)
    picks, i = [], 0
    while len(picks) < n and any(i < len(v) for v in by_ds.values()):
        for v in by_ds.values():
            if i < len(v) and len(picks) < n:
                picks.append(v[i])
        i += 1
    return picks


def _sample_anchor(group, row: dict) -> Optional[int]:
    """Index (in the shard) of the episode's anchor with the most visible track motion."""
    if row["anchor_count"] == 0 or "tracks_px" not in group:
        return None
    sl = slice(row["anchor_start"], row["anchor_start"] + row["anchor_count"])
    tracks = np.asarray(group["tracks_px"][sl])  # n K T 2
    disp = np.nan_to_num(np.linalg.norm(tracks - tracks[:, :, :1], axis=-1)).max(axis=(1, 2))
    return int(row["anchor_start"] + int(np.argmax(disp)))


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (cards are written on headless workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, dpi: int) -> bool:
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    write_replacing(out, buf.getvalue())
    return True


def _draw_tracks(dataset_dir: Path, samples: list[dict], out: Path) -> bool:
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    panels = []
    for r in samples:
        g = _open_shard(dataset_dir, r["shard"])
        a = _sample_anchor(g, r)
        if a is None:
            continue
        step = int(g["anchor_step"][a])
        frame = np.asarray(g[f"frames/{r['primary_camera']}"][r["frame_start"] + step])
        tracks = np.asarray(g["tracks_px"][a])  # K T 2
        ok = np.asarray(g["visible"][a]) & np.asarray(g["in_range"][a])[None, :]  # K T
        depth = np.asarray(g["depth_track_m"][a]) if "depth_track_m" in g else None  # K T
        panels.append((r, step, frame, tracks, ok, depth))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (r, step, frame, tracks, ok, depth) in zip(axes[0], panels):
        ax.imshow(frame, extent=(0, frame.shape[1], frame.shape[0], 0))  # pixel centres at +0.5
        has_depth = depth is not None and np.isfinite(depth[ok]).any()
        segs, vals = [], []
        T = tracks.shape[1]
        for k in range(tracks.shape[0]):
            for t in range(T - 1):
                if ok[k, t] and ok[k, t + 1]:
                    segs.append(tracks[k, t : t + 2])
                    vals.append(depth[k, t] if has_depth else t)
        if segs:
            vals = np.asarray(vals, dtype=np.float64)
            lc = LineCollection(segs, cmap="turbo" if has_depth else "viridis", linewidths=1.0)
            lc.set_array(vals)
            if has_depth:
                finite = vals[np.isfinite(vals)]
                lc.set_clim(float(finite.min()), float(finite.max()) + 1e-6)
            else:
                lc.set_clim(0, T - 1)  # the same scale on every panel
            ax.add_collection(lc)
            fig.colorbar(lc, ax=ax, fraction=0.046, pad=0.02, label="depth (m)" if has_depth else "horizon step")
        q = ok[:, 0]
        ax.scatter(tracks[q, 0, 0], tracks[q, 0, 1], s=4, c="white", edgecolors="none")
        ax.set_xlim(0, frame.shape[1])
        ax.set_ylim(frame.shape[0], 0)
        ax.set_title(f"{r['dataset']} ep {r['episode_index']} t={step}\n{(r.get('language') or '')[:TITLE_LANGUAGE_CHARS]}", fontsize=7)
        ax.axis("off")
    return _save(fig, out, dpi=110)


def _draw_motion_images(dataset_dir: Path, samples: list[dict], out: Path) -> bool:
    plt = _pyplot()

    from labelers.flow import decode_motion_image, flow_to_color

    panels = []
    for r in samples:
        g = _open_shard(dataset_dir, r["shard"])
        if "motion_image" not in g or r["anchor_count"] == 0:
            continue
        sl = slice(r["anchor_start"], r["anchor_start"] + r["anchor_count"])
        valid = np.asarray(g["flow_valid"][sl]) if "flow_valid" in g else np.ones(r["anchor_count"], bool)
        if not valid.any():
            continue
        flows = [decode_motion_image(m) for m in np.asarray(g["motion_image"][sl])]  # n x (H W 2)
        peaks = [float(np.abs(f).max()) if ok else -1.0 for f, ok in zip(flows, valid)]
        a = int(np.argmax(peaks))  # the anchor of the episode with the most motion
        step = int(g["anchor_step"][r["anchor_start"] + a])
        frame = np.asarray(g[f"frames/{r['primary_camera']}"][r["frame_start"] + step])
        panels.append((r, step, frame, flows[a]))
    if not panels:
        return False
    # one radius for every panel, so colours compare across the card
    mags = np.concatenate([np.linalg.norm(f, axis=-1).ravel() for *_, f in panels])
    radius = max(1.0, float(np.quantile(mags, 0.99)))
    panels = [(r, step, frame, flow_to_color(f, max_radius=radius), float(np.linalg.norm(f, axis=-1).max())) for r, step, frame, f in panels]
    fig, axes = plt.subplots(2, len(panels), figsize=(2.8 * len(panels), 5.6), squeeze=False)
    for i, (r, step, frame, colour, peak) in enumerate(panels):
        axes[0, i].imshow(frame)
        axes[0, i].set_title(f"{r['dataset']} ep {r['episode_index']} t={step}", fontsize=7)
        axes[1, i].imshow(colour)
        axes[1, i].set_title(f"flow t->t+gap, wheel radius {radius:.1f} px (max |f| {peak:.1f})", fontsize=7)
        for ax in axes[:, i]:
            ax.axis("off")
    return _save(fig, out, dpi=110)


def _draw_action_histograms(dataset_dir: Path, rows: list[dict], out: Path) -> bool:
    plt = _pyplot()

    per_ds: dict[str, list[np.ndarray]] = {}
    counts: Counter = Counter()
    shards: dict[str, list[dict]] = {}
    for r in rows:
        shards.setdefault(r["shard"], []).append(r)
    for shard, srows in sorted(shards.items()):
        g = _open_shard(dataset_dir, shard)
        actions = np.asarray(g["actions"][:])
        for r in srows:
            if counts[r["dataset"]] >= _HIST_FRAMES:
                continue
            a = actions[r["frame_start"] : r["frame_start"] + r["frame_count"]]
            per_ds.setdefault(r["dataset"], []).append(a)
            counts[r["dataset"]] += len(a)
    if not per_ds:
        return False
    dim = max(np.concatenate(v).shape[1] for v in per_ds.values())
    fig, axes = plt.subplots(len(per_ds), dim, figsize=(1.9 * dim, 1.7 * len(per_ds)), squeeze=False)
    for i, (ds, parts) in enumerate(sorted(per_ds.items())):
        a = np.concatenate(parts)
        for d in range(dim):
            ax = axes[i, d]
            if d < a.shape[1]:
                v = a[:, d][np.isfinite(a[:, d])]
                ax.hist(v, bins=HIST_BINS, color="tab:blue")
                ax.set_title(f"{ds[:TITLE_DATASET_CHARS]} a[{d}]", fontsize=7)
            else:
                ax.axis("off")
            ax.tick_params(labelsize=6)
    return _save(fig, out, dpi=100)


def _stats_rows(stats: dict, array: str) -> list[dict]:
    rows = []
    for ds, d in stats.get("datasets", {}).items():
        st = d.get(array)
        if not st:
            continue
        for i in range(st["dim"]):
            rows.append({"dataset": ds, "dim": i, "mean": st["mean"][i], "std": st["std"][i], "min": st["min"][i],
                         "q01": st["q01"][i], "q99": st["q99"][i], "max": st["max"][i]})
    return rows


def write_card(
    dataset_dir: str | Path,
    accuracy: Optional[dict] = None,
    name: Optional[str] = None,
    license: str = "other",
) -> dict:
    """Write `<dataset_dir>/README.md` and `<dataset_dir>/card/*.png`.

    accuracy: measured label accuracy (a `curate bench labels` result, or a plain
    {label or backend: {metric: value}}); when None the table shipped with the package
    (curation/describe/label_accuracy.json).
    Returns {"readme": path, "pictures": [paths]}."""
    root = Path(dataset_dir)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root / MANIFEST}: no manifest (is {root} a written dataset?)")
    rows = _read_table(root / MANIFEST)
    info = json.loads((root / DATASET_JSON).read_text()) if (root / DATASET_JSON).is_file() else {}
    if (root / STATS_JSON).is_file():
        stats = json.loads((root / STATS_JSON).read_text())
    else:
        from curation.describe.stats import compute_stats

        stats = compute_stats(str(root), progress=False)
    name = name or info.get("name") or root.name
    pictures = _draw_pictures(root, rows)
    backends = _recorded_backends(rows)
    config = info.get("config", {})
    md = ["---", _front_matter(name, license, rows, backends), "---", "", f"# {name}", ""]
    md += _summary_md(rows, info)
    md += _curation_md(info, _read_table(root / FILTERED), _read_table(root / QUARANTINE))
    md += _labels_md(root, backends, _labelled_with(config.get("labels"), backends), *_load_accuracy(accuracy))
    md += _statistics_md(stats)
    md += _pictures_md(pictures)
    md += LAYOUT_MD
    if config:
        md += ["## Configuration used", "", "```json", json.dumps(config, indent=1, sort_keys=True), "```", ""]
    write_replacing(root / README, "\n".join(md).encode())
    return {"readme": str(root / README), "pictures": [str(root / p) for p in pictures]}


PICTURES = {  # file name -> caption
    "sample_tracks.png": "Anchor frames with point tracks (colour: depth in metres, or horizon step without depth)",
    "motion_images.png": "Motion images decoded to optical flow (Middlebury colour wheel: hue = direction, "
                         "saturation = magnitude; one radius for all panels)",
    "action_histograms.png": "Action histograms per source dataset and dimension",
}

LAYOUT_MD = ["## Layout", "", "```",
             "dataset.json        contract version, config, job counts",
             "manifest.parquet    one row per episode (offsets into its shard, checksum)",
             "shards/shard-NNNNN  Zarr v3 groups: frames/<camera>, actions, proprio, tracks_px, visible, ...",
             "filtered.parquet    dropped episodes and why; quarantine.parquet: failed episodes",
             "stats.json          the statistics above, machine-readable",
             "```", ""]


def _draw_pictures(root: Path, rows: list[dict]) -> list[str]:
    """The card's pictures (paths relative to the dataset); one that cannot be drawn is left out."""
    real_directory(root / CARD_DIR)
    samples = _pick_samples(rows, SAMPLES)
    pictures = []
    for fname, draw in (("sample_tracks.png", lambda p: _draw_tracks(root, samples, p)),
                        ("motion_images.png", lambda p: _draw_motion_images(root, samples, p)),
                        ("action_histograms.png", lambda p: _draw_action_histograms(root, rows, p))):
        try:
            if draw(root / CARD_DIR / fname):
                pictures.append(f"{CARD_DIR}/{fname}")
        except Exception as exc:  # noqa: BLE001 - a picture must not stop the card
            log.warning("%s: could not draw %s (%s: %s)", root, fname, type(exc).__name__, exc)
    return pictures


def _recorded_backends(rows: list[dict]) -> Counter:
    """(label, backend) -> episodes, from the manifest's `backends` column."""
    backends: Counter = Counter()
    for r in rows:
        try:
            for label, backend in json.loads(r.get("backends") or "{}").items():
                backends[(label, backend)] += 1
        except ValueError:
            log.warning("episode %s: backends column is not JSON (%r), left out of the card", r.get("episode_id"), r.get("backends"))
    return backends


def _source_rows(rows: list[dict]) -> list[dict]:
    """One row per (source dataset, version): splits, episodes, frames, triplets, encodings."""
    sources: dict[tuple, dict] = {}
    for r in rows:
        s = sources.setdefault((r["dataset"], r["version"]), {
            "dataset": r["dataset"], "version": r["version"], "splits": set(), "episodes": 0, "frames": 0,
            "triplets": 0, "action": r.get("action_encoding") or "", "hz": r.get("control_hz"),
            "depth": Counter(), "intrinsics": Counter()})
        s["splits"].add(r["split"])
        s["episodes"] += 1
        s["frames"] += r["frame_count"]
        s["triplets"] += r["anchor_count"]
        s["depth"][r.get("depth_kind") or "missing"] += 1
        s["intrinsics"]["estimated" if r.get("intrinsics_estimated") else "known"] += 1
    return [{**s, "splits": ",".join(sorted(s["splits"])), "depth": ", ".join(f"{k} {v}" for k, v in s["depth"].items()),
             "intrinsics": ", ".join(f"{k} {v}" for k, v in s["intrinsics"].items())} for s in sources.values()]


def _front_matter(name: str, license: str, rows: list[dict], backends: Counter) -> str:
    """The Hugging Face YAML front matter."""
    import yaml

    tags = ["robotics", "point-tracking", "scene-flow", "optical-flow", "lamp", "triplets"]
    tags += sorted({r["dataset"].replace("_", "-") for r in rows})[:MAX_DATASET_TAGS]
    if any(k[0].startswith("latent") for k in backends):
        tags.append("latent-actions")
    front = {
        "license": license,
        "pretty_name": name,
        "task_categories": ["robotics"],
        "tags": tags,
        "size_categories": [_size_category(sum(r["anchor_count"] for r in rows))],
        "source_datasets": sorted({f"{r['dataset']}/{r['version']}" for r in rows}),
    }
    return yaml.safe_dump(front, sort_keys=False).strip()


def _summary_md(rows: list[dict], info: dict) -> list[str]:
    from curation.formats import markdown_table

    source_rows = _source_rows(rows)
    n_anchor = sum(r["anchor_count"] for r in rows)
    md = [
        f"Observation-language-motion triplets: **{len(rows)} episodes**, **{n_anchor} triplets** (anchor steps), "
        f"{sum(r['frame_count'] for r in rows)} frames, from {len(source_rows)} source dataset(s). "
        f"Data contract {info.get('contract_version', '?')}. "
        "Each triplet pairs the camera images and instruction at an anchor step with the motion of a grid of points "
        "over the next steps (2D tracks, depth, 3D scene flow in the camera frame), the optical-flow motion image "
        "and latent action tokens where those labels were configured, and the action chunk that follows."
    ]
    md += ["", "## Sources", "", markdown_table(source_rows, ["dataset", "version", "splits", "episodes", "frames", "triplets", "action", "hz", "depth", "intrinsics"])]
    return md + ["", "Source datasets keep their own licenses; check each before redistribution."]


def _curation_md(info: dict, filtered: list[dict], quarantine: list[dict]) -> list[str]:
    """Job counts, filter drops and quarantine by reason, the effective filter settings."""
    from curation.formats import markdown_table

    md = ["", "## Curation", ""]
    counts = info.get("counts") or info.get("summary") or {}
    if counts:
        md.append("Job counts: " + ", ".join(f"{k} {v}" for k, v in counts.items() if not isinstance(v, (dict, list))) + ".")
        md.append("")
    dropped_by: Counter = Counter(f["reason"] for f in filtered)
    quarantined_by: Counter = Counter(f"{q.get('stage')}: {q.get('reason')}" for q in quarantine)
    md.append(f"{len({f['episode_id'] for f in filtered})} episode(s) dropped by filters or as duplicates "
              f"({sum(dropped_by.values())} reason rows), {len(quarantine)} quarantined (failed to read or label).")
    if dropped_by:
        md += ["", markdown_table([{"reason": k, "episodes": v} for k, v in sorted(dropped_by.items())])]
    if quarantined_by:
        md += ["", "Quarantined by stage and reason:", "", markdown_table([{"stage: reason": k, "episodes": v} for k, v in sorted(quarantined_by.items())])]
    config = info.get("config", {})
    filter_cfg = (config.get("curation") or {}).get("filters") if isinstance(config.get("curation"), dict) else config.get("filters")
    if filter_cfg is None and config:
        md += ["", "Filters were switched off for this dataset."]
    elif config:
        from curation.selection.filters import FilterConfig

        try:
            effective = FilterConfig.from_dict(filter_cfg).to_dict()  # defaults filled in
        except (TypeError, ValueError):
            effective = filter_cfg
        md += ["", "Filter settings (effective, defaults filled in):", "", "```json", json.dumps(effective, indent=1, sort_keys=True), "```"]
    return md


def _labels_md(root: Path, backends: Counter, labelled: dict, accuracy: Optional[dict], accuracy_from: str) -> list[str]:
    """Label coverage, the backends recorded per episode, and the measured accuracy."""
    from curation.describe.coverage import coverage_markdown, label_coverage
    from curation.formats import markdown_table

    md = ["", "## Labels", ""]
    md += coverage_markdown(label_coverage(root)) + [""]
    if backends:
        md.append(markdown_table([{"label": k[0], "backend": k[1], "episodes": v} for k, v in sorted(backends.items())]))
    else:
        md.append("No label backends recorded in the manifest.")
    md += ["", "### Measured accuracy", ""]
    bench_rows = _bench_accuracy_rows(accuracy, labelled) if accuracy else []
    # a plain {label: {metric: value}} dict; a bench result's other numbers (seconds, sizes) are not accuracy
    flat = _flatten({k: v for k, v in accuracy.items() if not isinstance(v, list)}) if accuracy and not bench_rows else {}
    if bench_rows:
        md += [f"Against simulator ground truth, all tasks pooled (from {accuracy_from}); `used` marks the rows of the "
               "backends and parameters this dataset was labelled with.", ""]
        for label, rows_ in bench_rows:
            md += [f"**{label}**", "", markdown_table(rows_, floatfmt=".4g"), ""]
    if flat:
        md += [f"From {accuracy_from}.", "", markdown_table([{"metric": k, "value": v} for k, v in flat.items()], floatfmt=".4g")]
    if not bench_rows and not flat:
        md.append("Not measured for this dataset (run `curate bench labels` to measure label accuracy on simulated ground truth).")
    return md


def _statistics_md(stats: dict) -> list[str]:
    from curation.formats import markdown_table

    md = ["", "## Statistics", "", f"Per dimension, per source dataset ({stats.get('quantile_method', '')}).", ""]
    for array, title in (("actions", "Actions"), ("proprio", "Proprio"), ("motion/tracks_px_delta", "Track displacement (pixels)"),
                         ("motion/points_cam_m_delta", "3D scene flow (metres, camera frame)"), ("motion/depth_track_m", "Track depth (metres)")):
        srows = _stats_rows(stats, array)
        if srows:
            md += [f"### {title}", "", markdown_table(srows, floatfmt=".4g"), ""]
    instructions = stats.get("counts", {}).get("per_instruction", {})
    if instructions:
        top = list(instructions.items())[:TOP_INSTRUCTIONS]
        md += ["### Instructions", "", f"{len(instructions)} distinct instruction(s); the most frequent:", "",
               markdown_table([{"instruction": k or "(none)", "episodes": v} for k, v in top]), ""]
    return md


def _pictures_md(pictures: list[str]) -> list[str]:
    if not pictures:
        return []
    md = ["## Pictures", ""]
    for p in pictures:
        md += [f"![{PICTURES[Path(p).name]}]({p})", ""]
    return md
