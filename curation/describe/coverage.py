"""Which labels a curated dataset has, per label: how many episodes carry it and why
the others do not. Read back from the written dataset (manifest, filtered and
quarantine tables, dataset.json, the shard groups' array names), so the dataset card
and `curate inspect` say what is on disk.

    label_coverage(dataset_dir) -> {"planned": P, "written": W, "labels": [row, ...]}
    row: {"label", "arrays", "episodes": with it, "of": P, "missing": {reason: episodes},
          "cause": the commonest reason among written episodes, "note"}

Reasons an episode lacks a label:

    no depth in the source            the depth backend is `dataset` and the source has no
                                      depth channel for the labelled camera (3D labels too)
    source depth has no valid value   it has one, every value NaN, zero or too far
    no metric depth to fit the model  a relative depth model with no metric anchors
    flow off in the config            labels.flow is "" (no motion images)
    no latent checkpoint configured   labels.latent_checkpoint is unset
    filtered: REASON / duplicate      dropped by a curation filter or as a duplicate
    quarantined at STAGE              failed to read, check or label

3D scene flow is lifted wherever there is depth; without intrinsics in the source it
uses intrinsics estimated from a field of view (the 3D row's `note` counts the written
episodes that have none).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from schemas.dataset import DATASET_JSON, FILTERED, MANIFEST, QUARANTINE, SHARDS_DIR

# (label, shard arrays that carry it) in the order of the data contract.
LABELS = (
    ("2D point tracks", "tracks_px, visible"),
    ("depth along tracks", "depth_track_m"),
    ("3D scene flow", "points_cam_m, valid_3d"),
    ("motion images", "motion_image, flow_valid"),
    ("latent action tokens", "latent_tokens, latent_valid"),
)
NO_DEPTH = "no depth in the source"


def _read_table(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def _shard_arrays(root: Path, shards: set[str]) -> dict[str, set[str]]:
    """The array names of each shard group (depth_m/<camera> says the source had depth)."""
    import zarr

    out = {}
    for shard in shards:
        group = zarr.open_group(str(root / SHARDS_DIR / shard.split("/")[-1]), mode="r")
        out[shard] = {f"depth_m/{name}" for name in (group["depth_m"].array_keys() if "depth_m" in group else ())}
    return out


def _depth_missing_reason(row: dict, depth_backend: str, camera: str, arrays: set[str]) -> str:
    has_source_depth = f"depth_m/{camera or row['primary_camera']}" in arrays
    if depth_backend == "dataset":
        return "source depth has no valid value" if has_source_depth else NO_DEPTH
    return "no metric depth to fit the model" if not has_source_depth else "depth model fit failed"


def _not_written(filtered: list[dict], quarantine: list[dict]) -> Counter:
    """Why each episode that is not in the manifest is not: one reason per episode."""
    first: dict[str, str] = {}
    for f in filtered:
        first.setdefault(f["episode_id"], "duplicate" if f["reason"] == "duplicate" else f"filtered: {f['reason']}")
    reasons = Counter(first.values())
    reasons.update(f"quarantined at {q.get('stage') or 'unknown stage'}" for q in quarantine)
    return reasons


def label_coverage(dataset_dir: str | Path) -> dict:
    root = Path(dataset_dir)
    rows = _read_table(root / MANIFEST)
    info = json.loads((root / DATASET_JSON).read_text()) if (root / DATASET_JSON).is_file() else {}
    labels_cfg = (info.get("config") or {}).get("labels") or {}
    not_written = _not_written(_read_table(root / FILTERED), _read_table(root / QUARANTINE))
    planned = (info.get("counts") or {}).get("planned") or len(rows) + sum(not_written.values())
    arrays = _shard_arrays(root, {r["shard"] for r in rows})
    depth_backend, camera = labels_cfg.get("depth", "dataset"), labels_cfg.get("camera") or ""

    missing: dict[str, Counter] = {label: Counter() for label, _ in LABELS}
    with_label: Counter = Counter()
    estimated = 0
    for r in rows:
        backends = json.loads(r.get("backends") or "{}")
        has_depth = (r.get("depth_kind") or "missing") != "missing"
        why_no_depth = "" if has_depth else _depth_missing_reason(r, depth_backend, camera, arrays[r["shard"]])
        present = {
            "2D point tracks": (r["anchor_count"] > 0, "no anchor steps"),
            "depth along tracks": (has_depth, why_no_depth),
            "3D scene flow": (has_depth, why_no_depth),
            "motion images": ("flow" in backends, "flow off in the config"),
            "latent action tokens": ("latent" in backends, "no latent checkpoint configured"),
        }
        for label, (ok, why) in present.items():
            if ok:
                with_label[label] += 1
            else:
                missing[label][why] += 1
        estimated += bool(r.get("intrinsics_estimated"))
    out = []
    for label, names in LABELS:
        reasons = Counter(missing[label])
        reasons.update(not_written)
        note = ""
        if label == "3D scene flow" and estimated:
            note = (f"no intrinsics in the source for {estimated} of {len(rows)} written: a "
                    f"{labels_cfg.get('fov_deg', 55.0):g} degree field of view is assumed")
        cause = missing[label].most_common(1)[0][0] if missing[label] else ""
        out.append({"label": label, "arrays": names, "episodes": with_label[label], "of": planned,
                    "missing": dict(reasons.most_common()), "cause": cause, "note": note})
    return {"planned": planned, "written": len(rows), "labels": out}


def coverage_table_rows(coverage: dict) -> list[dict]:
    """One printable row per label: how many have it, and why the others do not."""
    return [{"label": c["label"], "episodes": f"{c['episodes']} of {c['of']}",
             "without it, and why": ", ".join(f"{n} {why}" for why, n in c["missing"].items()) or "-",
             **({"note": c["note"]} if any(x["note"] for x in coverage["labels"]) else {})}
            for c in coverage["labels"]]


def missing_labels_line(coverage: dict) -> str:
    """A sentence naming the labels no written episode has ('' when all are there somewhere)."""
    absent = [c for c in coverage["labels"] if c["episodes"] == 0 and coverage["written"] > 0]
    if not absent:
        return ""
    parts = [f"{c['label']} ({c['cause'] or 'no episode written'})" for c in absent]
    return "Missing from every episode: " + "; ".join(parts) + "."


def coverage_markdown(coverage: dict) -> list[str]:
    """The card's lines on label coverage: the table, and the labels no episode has."""
    from curation.formats import markdown_table

    lines = [f"Per label, the episodes that have it (of {coverage['planned']} read from the source) and why the "
             "others do not:", "", markdown_table(coverage_table_rows(coverage))]
    line = missing_labels_line(coverage)
    return lines + (["", f"**{line}**"] if line else [])
