"""Small synthetic episodes, labels and written datasets for the curation and
publishing tests. Shards are written by the job's own shard writer
(curation.store.writer); the manifest and dataset.json are assembled here so the
tests need no labelers or sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from schemas.dataset import CONTRACT_VERSION, DATASET_JSON, FILTERED, MANIFEST, MANIFEST_SCHEMA
from schemas.episode import Episode, Provenance
from schemas.triplet import EpisodeLabels, anchor_steps


def make_episode(
    index: int = 0,
    T: int = 16,
    size: int = 32,
    language: str = "put the red block in the bowl",
    seed: int | None = None,
    dataset: str = "synth",
    split: str = "train",
    moving: bool = True,
    action_dim: int = 7,
) -> Episode:
    """A textured background (from `seed`) with a bright square moving right by
    one pixel a step (or standing still)."""
    rng = np.random.default_rng(index if seed is None else seed)
    # smooth background: upsampled noise, so perceptual hashes are stable under small noise
    coarse = rng.integers(0, 256, size=(size // 8, size // 8, 3)).astype(np.uint8)
    bg = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))
    frames = np.repeat(bg[None], T, axis=0).copy()
    for t in range(T):
        x = 2 + (t if moving else 0) % (size - 8)
        frames[t, 10:16, x : x + 6] = 255
    actions = rng.normal(0, 0.1, size=(T, action_dim)).astype(np.float32)
    proprio = rng.normal(0, 1, size=(T, 5)).astype(np.float32)
    return Episode(
        provenance=Provenance(dataset, "1.0.0", split, index, file=f"{dataset}-{split}.tfrecord-00000-of-00001"),
        language=language,
        frames={"image": frames},
        actions=actions,
        action_encoding="eef_delta_xyz_rpy_gripper",
        control_hz=5.0,
        primary_camera="image",
        proprio=proprio,
    )


def make_labels(ep: Episode, K: int = 9, horizon: int = 8, stride: int = 4, speed_px: float = 1.0, visibility: float = 1.0, seed: int = 0) -> EpisodeLabels:
    """Tracks on a 3x3 grid moving right at `speed_px` per step; a `visibility`
    share of the (point, step) pairs visible; 3D points at 1 m depth."""
    rng = np.random.default_rng(seed)
    anchors = anchor_steps(ep.num_steps, stride)
    N = len(anchors)
    side = int(round(np.sqrt(K)))
    gx, gy = np.meshgrid(np.linspace(4, 28, side), np.linspace(4, 28, side))
    q = np.stack([gx.ravel(), gy.ravel()], -1).astype(np.float32)  # K 2
    j = np.arange(horizon, dtype=np.float32)
    tracks = np.repeat(q[None, :, None, :], N, 0).repeat(horizon, 2)  # N K T 2
    tracks[..., 0] += speed_px * j[None, None, :]
    in_range = (anchors[:, None] + np.arange(horizon)[None, :]) < ep.num_steps  # N T
    tracks[~np.broadcast_to(in_range[:, None, :], tracks.shape[:3])] = np.nan
    visible = (rng.random((N, K, horizon)) < visibility) & in_range[:, None, :]
    visible[:, :, 0] = visibility > 0  # query step visible unless the test wants nothing visible
    visible &= in_range[:, None, :]
    depth = np.where(in_range[:, None, :], 1.0 + 0.01 * j, np.nan).astype(np.float32) * np.ones((N, K, 1), np.float32)
    fx = 30.0
    pts = np.stack([(tracks[..., 0] - 16) / fx * depth, (tracks[..., 1] - 16) / fx * depth, depth], -1).astype(np.float32)
    valid = visible & np.isfinite(depth)
    motion = np.full((N, ep.frames[ep.primary_camera].shape[1], ep.frames[ep.primary_camera].shape[2], 3), 128, np.uint8)
    return EpisodeLabels(
        anchors=anchors,
        tracks_px=tracks.astype(np.float32),
        visible=visible,
        in_range=in_range,
        depth_m=depth,
        points_cam_m=pts,
        valid_3d=valid,
        motion_image=motion,
        flow_valid=(anchors + 1) < ep.num_steps,
        intrinsics=np.array([fx, fx, 16, 16], np.float32),
        intrinsics_estimated=False,
        depth_kind="metric",
        backends={"tracks": "synthetic", "depth": "synthetic"},
    )


def _episode_arrays(ep: Episode, lab: EpisodeLabels) -> dict[str, np.ndarray]:
    arrays = {f"frames/{cam}": fr for cam, fr in ep.frames.items()}
    arrays["actions"] = ep.actions.astype(np.float32)
    arrays["proprio"] = ep.proprio.astype(np.float32)
    arrays["anchor_step"] = lab.anchors.astype(np.int32)
    arrays["tracks_px"] = lab.tracks_px
    arrays["visible"] = lab.visible
    arrays["in_range"] = lab.in_range
    arrays["depth_track_m"] = lab.depth_m
    arrays["points_cam_m"] = lab.points_cam_m
    arrays["valid_3d"] = lab.valid_3d
    arrays["motion_image"] = lab.motion_image
    arrays["flow_valid"] = lab.flow_valid
    return arrays


def _row(ep: Episode, lab: EpisodeLabels) -> dict:
    H, W = ep.frames[ep.primary_camera].shape[1:3]
    return {
        "episode_id": ep.episode_id,
        "dataset": ep.provenance.dataset,
        "version": ep.provenance.version,
        "split": ep.provenance.split,
        "episode_index": ep.provenance.episode_index,
        "source_file": ep.provenance.file,
        "language": ep.language,
        "primary_camera": ep.primary_camera,
        "cameras": ep.cameras,
        "camera_sizes": [list(ep.frames[c].shape[1:3]) for c in ep.cameras],
        "height": int(H),
        "width": int(W),
        "action_dim": int(ep.actions.shape[1]),
        "action_encoding": ep.action_encoding,
        "proprio_dim": int(ep.proprio.shape[1]),
        "control_hz": ep.control_hz,
        "intrinsics": lab.intrinsics.tolist(),
        "intrinsics_estimated": lab.intrinsics_estimated,
        "depth_kind": lab.depth_kind,
        "backends": json.dumps(lab.backends),
        "success": True,
        "mean_visibility": float(lab.visible.mean()),
        "motion_px": 1.0,
    }


FILTERED_SCHEMA_FIELDS = [("episode_id", "string"), ("dataset", "string"), ("split", "string"),
                          ("episode_index", "int64"), ("reason", "string"), ("detail", "string")]


def write_dataset(root: Path, pairs: list[tuple[Episode, EpisodeLabels]], episodes_per_shard: int = 2, filtered: list[dict] | None = None) -> Path:
    """Write `pairs` as a curated dataset directory with the job's shard writer
    (curation.store.writer.commit_unit), then the manifest and dataset.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.store.writer import EpisodePayload, commit_unit, iter_manifest_rows

    root = Path(root)
    records = []
    for s in range(0, len(pairs), episodes_per_shard):
        payloads = [EpisodePayload(_episode_arrays(ep, lab), _row(ep, lab)) for ep, lab in pairs[s : s + episodes_per_shard]]
        records.append(commit_unit(root, s // episodes_per_shard, payloads, {}))
    rows = iter_manifest_rows(records)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / MANIFEST)
    filtered = filtered or []
    schema = pa.schema([(n, getattr(pa, t)()) for n, t in FILTERED_SCHEMA_FIELDS])
    pq.write_table(pa.Table.from_pylist(filtered, schema=schema), root / FILTERED)
    (root / DATASET_JSON).write_text(
        json.dumps(
            {
                "contract_version": CONTRACT_VERSION,
                "config": {"filters": {"min_steps": 8}, "labelers": {"tracks": "synthetic"}},
                "counts": {"read": len(pairs) + len(filtered), "written": len(pairs), "filtered": {}, "quarantined": {}},
            },
            indent=1,
        )
    )
    return root


def small_dataset(root: Path, n: int = 4, T: int = 12, **kw) -> Path:
    pairs = []
    for i in range(n):
        ep = make_episode(i, T=T, language=["pick up the cup", "open the drawer"][i % 2], **kw)
        pairs.append((ep, make_labels(ep, seed=i)))
    return write_dataset(root, pairs)
