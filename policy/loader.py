"""Training data: a PyTorch IterableDataset streaming normalised samples from a curated dataset.

    open_dataset(ref) ─► shards, permuted per epoch (seed) ─► this rank/worker's share
        ─► iter_triplets(shards) ─► TripletTransform (pure: normalise, subsample, chunk)
        ─► shuffle buffer (seed, epoch, worker) ─► samples ─► DataLoader(collate_fn=collate; in a
            worker the batch goes into a reused shared slot, policy/batch_transport.py)

Work split. Global worker g = rank * num_workers + worker_id of G = world_size * num_workers.
With at least G shards each worker reads shards g, g + G, ... of the epoch's permutation
(shard-level split, no wasted reads); with fewer shards but at least G episodes, episodes g,
g + G, ... of the epoch's permutation of all episodes; with fewer episodes than workers every
worker reads all of them in the same order and keeps triplets i with i % G == g. Either way each
triplet of an epoch is yielded by exactly one worker, and the stream is a pure function of
(seed, epoch, rank, world_size, num_workers).

Read order. A reader with episode-level reads (`episodes_of(shard)`, `iter_triplets(episodes=)`,
as curation's) is read one episode at a time, decoded in the DataLoader worker, a few episodes
ahead (the reader's prefetch thread): a worker's shards are taken INTERLEAVE_SHARDS at a time
and the episodes of those shards are read in a random order (seed, epoch, worker), so
neighbouring samples come from several shards and episodes before the shuffle buffer mixes them
further. A reader with only `iter_triplets(shards=)` is read shard by shard in the epoch's order.

The one reader. Triplets come from curation.open_dataset (or any object with the
same interface: `shard_names`, `stats`, `manifest`, `iter_triplets(shards=...)`, optionally
`episodes_of` and `iter_triplets(episodes=...)`); nothing here reads Zarr. Its read-side
verification stays on unless `verify=False` is asked for.

Sample (numpy, one triplet; see modeling_lamp for the batched form):
  image        3 H W uint8     the policy camera at the anchor
  language     str
  episode_id   str, anchor int   identity of the triplet (for checks and debugging)
  state        P float32       proprio, normalised
  action       C A float32     action chunk from the anchor, normalised; action_valid C bool
  motion       K T M float32   uvd: (du px, dv px, d depth m), xyz: camera-frame metres or uv:
                               (du px, dv px), relative to the anchor step (j = 0), horizon steps
                               1..T_data-1 strided to T, normalised; 0 where invalid
  motion_mask  K T M bool      visible & in range at j and at the anchor (+ valid depth for 3D)

Motion-only mode (stage 1 on action-free video): the reader is asked for frames, language and
motion only (its action and proprio arrays are never read), the statistics need no action entry,
and samples carry no state / action / action_valid.
  anchor_uv    K 2 float32     anchor pixel position of each point, in [-1, 1]
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from policy.batch_transport import Batches, SlotCollate
from policy.config import MOTION_CHANNELS, LaMPConfig
from schemas.triplet import PRIMARY_CAMERA
from policy.action_history import with_action_history
from policy.normalize import center_scale
from policy.variants import action_history_length, sample_fields, variant_labels

# Shards whose episodes a worker reads in one random order (see the module docstring); a published
# version holds the verified files of this many shards in memory per worker (the reader's
# open_shards is raised to it).
INTERLEAVE_SHARDS = 4


def source_stats(stats: Mapping[str, Any], dataset_name: Optional[str] = None,
                 needs: str = "actions") -> tuple[str, dict]:
    """The per-source entry of stats.json (`datasets.<name>`); the only one holding `needs`
    when not named."""
    per = stats.get("datasets", stats)
    if dataset_name:
        if dataset_name not in per:
            raise KeyError(f"no statistics for dataset {dataset_name!r}; have {sorted(per)}")
        return dataset_name, per[dataset_name]
    names = sorted(k for k, v in per.items() if isinstance(v, dict) and needs in v)
    if len(names) != 1:
        raise ValueError(f"dataset holds several sources {names}: pick one with dataset_name")
    return names[0], per[names[0]]


def subsample_points(K: int, k: int) -> np.ndarray:
    """k of K point indices, spread evenly; a sub-grid when both are square grids (20x20 -> 10x10)."""
    if k > K:
        raise ValueError(f"model wants {k} motion points but the data has {K}")
    g, h = int(round(math.sqrt(K))), int(round(math.sqrt(k)))
    if g * g == K and h * h == k:
        rows = np.round(np.linspace(0, g - 1, h)).astype(np.int64)
        return (rows[:, None] * g + rows[None, :]).reshape(-1)
    return np.round(np.linspace(0, K - 1, k)).astype(np.int64)


def subsample_horizon(T: int, t: int) -> np.ndarray:
    """t of the horizon steps 1..T-1 (step 0 is the anchor itself: its delta is always 0)."""
    if t > T - 1:
        raise ValueError(f"model wants horizon {t} but the data has {T} steps (T - 1 = {T - 1} future steps)")
    return np.round(np.linspace(1, T - 1, t)).astype(np.int64)


class TripletTransform:
    """Triplet -> sample dict. Pure and picklable: all state is normalisation arrays and indices."""

    def __init__(self, cfg: LaMPConfig, stats_entry: Mapping[str, Any], data_points: int, data_horizon: int,
                 motion_only: bool = False):
        mode = cfg.normalization
        self.cfg = cfg
        self.motion_only = motion_only
        if not motion_only:
            self.action_center, self.action_scale = center_scale(stats_entry["actions"], mode)
        if cfg.state_dim and stats_entry.get("proprio"):
            self.state_center, self.state_scale = center_scale(stats_entry["proprio"], mode)
        else:
            self.state_center = np.zeros(cfg.state_dim, np.float32)
            self.state_scale = np.ones(cfg.state_dim, np.float32)
        self.motion_center, self.motion_scale = motion_center_scale(stats_entry, cfg.motion_repr, mode)
        self.k_idx = subsample_points(data_points, cfg.motion_points)
        self.t_idx = subsample_horizon(data_horizon, cfg.motion_horizon)
        self.steps = np.concatenate([[0], self.t_idx])  # the anchor step and the model's horizon steps

    def __call__(self, tr) -> dict[str, Any]:
        return self.many([tr])[0]

    def many(self, trs: Sequence[Any]) -> list[dict[str, Any]]:
        """The samples of triplets of one episode (same K, T, camera), equal to one by one: the
        motion, state and actions of all N in one vectorised pass (the per-call cost of the small
        numpy operations is most of a sample's, so an episode's anchors share it)."""
        cfg = self.cfg
        out = [{"image": self.image(tr), "language": tr.language or "", "episode_id": str(tr.episode_id),
                "anchor": int(tr.anchor)} for tr in trs]
        if not self.motion_only:
            self.add_state_and_actions(out, trs)
        # the model's points and steps (plus the anchor step 0 they are relative to) first: the
        # motion is elementwise in (point, step), so this equals subsampling the full result
        sub = subsample_motion_many([tr.motion for tr in trs], self.k_idx, self.steps)
        motion, mask, anchor_px = relative_motion(sub, cfg.motion_repr)  # N k t+1 M, N k t+1 M, N k 2
        motion, mask = motion[:, :, 1:], mask[:, :, 1:]
        motion = np.where(mask, (motion - self.motion_center) / self.motion_scale, np.float32(0))  # float32
        cam = self.camera_of(trs[0])
        Hd, Wd = img_size_of(trs[0], cam)
        uv = np.nan_to_num(anchor_px / np.array([Wd, Hd], np.float32) * 2.0 - 1.0).astype(np.float32)
        for i, (sample, tr) in enumerate(zip(out, trs)):
            sample.update(motion=motion[i], motion_mask=mask[i], anchor_uv=uv[i])
            if cfg.variant != "lamp":
                sample.update(sample_fields(cfg, self, tr))
        return out

    def camera_of(self, tr) -> str:
        return self.cfg.camera or tr.meta.get("primary_camera") or next(iter(tr.images))

    def image(self, tr) -> np.ndarray:
        """3 H W uint8: the policy camera's anchor frame at the model's size."""
        img = np.asarray(tr.images[self.camera_of(tr)])
        H, W = self.cfg.image_size
        if img.shape[:2] != (H, W):
            import cv2

            img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def add_state_and_actions(self, out: list[dict], trs: Sequence[Any]) -> None:
        """Each sample's normalised proprio `state` P and action chunk `action` C A with its
        `action_valid` C (zeros / False past the triplet's chunk or where not finite)."""
        cfg = self.cfg
        N, P, C, A = len(trs), cfg.state_dim, cfg.chunk_size, cfg.action_dim
        state = np.zeros((N, P), np.float32)
        chunk = np.zeros((N, C, A), np.float32)
        valid = np.zeros((N, C), bool)
        has_prop = np.zeros(N, bool)
        for i, tr in enumerate(trs):
            prop = np.asarray(tr.proprio, np.float32).reshape(-1)
            has_prop[i] = prop.size > 0
            if P and prop.size:
                state[i] = prop[:P]
            ac = np.asarray(tr.action_chunk, np.float32)[:C, :A]
            chunk[i, : len(ac), : ac.shape[1]] = ac
            valid[i, : len(ac)] = np.asarray(tr.action_chunk_valid, bool)[: len(ac)]
        state = np.where(has_prop[:, None], (state - self.state_center[:P]) / self.state_scale[:P], 0.0)
        state = np.nan_to_num(state).astype(np.float32, copy=False)
        valid &= np.all(np.isfinite(chunk), axis=-1)
        chunk = np.where(valid[..., None], (chunk - self.action_center[:A]) / self.action_scale[:A], 0.0)
        chunk = chunk.astype(np.float32, copy=False)
        for i, sample in enumerate(out):  # views: collate copies them into the batch
            sample.update(state=state[i], action=chunk[i], action_valid=valid[i])


def transform_samples(transform: TripletTransform, triplets: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """transform's samples of `triplets` in their order, each run of one episode's triplets
    transformed together (TripletTransform.many)."""
    import itertools

    for _, run in itertools.groupby(triplets, key=lambda tr: tr.episode_id):
        yield from transform.many(list(run))


# The anchor arrays each motion representation's relative_motion reads; the reader fetches and
# decodes only these (and a variant's own, policy.variants.variant_labels).
MOTION_LABELS = {"uvd": ("tracks_px", "visible", "in_range", "depth_track_m", "valid_3d"),
                 "uv": ("tracks_px", "visible", "in_range"),
                 "xyz": ("tracks_px", "visible", "in_range", "points_cam_m", "valid_3d")}


def labels_read(cfg: LaMPConfig) -> tuple[str, ...]:
    """The anchor arrays a sample of `cfg` is made from (the reader's `labels`)."""
    return MOTION_LABELS[cfg.motion_repr] + variant_labels(cfg)


def cameras_read(cfg: LaMPConfig) -> Sequence[str] | str:
    """The cameras a sample of `cfg` is made from (the reader's `cameras`): cfg.camera, else
    each episode's primary camera."""
    return [cfg.camera] if cfg.camera else PRIMARY_CAMERA


# Motion arrays relative_motion reads, with their (point, step) axes first; in_range is per step.
MOTION_POINT_STEP_ARRAYS = ("tracks_px", "visible", "valid_3d", "depth_track_m", "depth_m", "points_cam_m")


def subsample_motion(m: Mapping[str, np.ndarray], k_idx: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays relative_motion reads at points k_idx (k) and steps `steps` (s):
    K T ... -> k s ..., in_range T -> s."""
    out = {n: np.asarray(m[n]).take(k_idx, 0).take(steps, 1) for n in MOTION_POINT_STEP_ARRAYS if m.get(n) is not None}
    if m.get("in_range") is not None:
        out["in_range"] = np.asarray(m["in_range"]).reshape(-1)[steps]
    return out


def subsample_motion_many(ms: Sequence[Mapping[str, np.ndarray]], k_idx: np.ndarray,
                          steps: np.ndarray) -> dict[str, np.ndarray]:
    """subsample_motion of N triplets' motion (the same arrays in each), stacked:
    N K T ... -> N k s ..., in_range N s."""
    out = {n: np.stack([np.asarray(m[n]) for m in ms]).take(k_idx, 1).take(steps, 2)
           for n in MOTION_POINT_STEP_ARRAYS if ms[0].get(n) is not None}
    if ms[0].get("in_range") is not None:
        out["in_range"] = np.stack([np.asarray(m["in_range"]).reshape(-1) for m in ms])[:, steps]
    return out


def img_size_of(tr, cam: str) -> tuple[int, int]:
    im = tr.images[cam]
    return int(im.shape[0]), int(im.shape[1])


def relative_motion(m: Mapping[str, np.ndarray], repr_: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Motion relative to the anchor step j = 0 -> (values ... K T M, mask ... K T M, anchor
    pixels ... K 2), for one triplet's arrays (K T ...) or N stacked ones (N K T ..., in_range N T).
    Values are 0 where the mask is False.

    uvd: (u_j - u_0, v_j - v_0) pixels where the point is visible and in range at j and 0;
         depth_j - depth_0 metres where, in addition, both depths are valid (valid_3d).
    xyz: points_cam_m_j - points_cam_m_0 where valid_3d at j and 0 (all three channels).
    uv:  the two pixel channels of uvd.
    Each channel is computed as its own contiguous ... K T array and stacked once at the end:
    the loader runs this for every sample, and strided writes into a last axis of 3 cost more
    than the arithmetic."""
    tracks = np.asarray(m["tracks_px"], np.float32)  # ... K T 2
    T = tracks.shape[-2]
    vis = np.asarray(m["visible"], bool)  # ... K T
    in_range = np.asarray(m["in_range"], bool)[..., None, :T] if m.get("in_range") is not None else np.ones(T, bool)
    ok2 = vis & in_range  # ... K T
    ok2 = ok2 & ok2[..., :1]
    ok2 &= np.isfinite(tracks[..., 0]) & np.isfinite(tracks[..., 1])
    v3 = m.get("valid_3d")
    ok3 = np.asarray(v3, bool) & in_range if v3 is not None else np.zeros(vis.shape, bool)
    ok3 = ok3 & ok3[..., :1]
    zero = np.float32(0)
    if repr_ == "xyz":
        pts = m.get("points_cam_m")
        if pts is None:
            return np.zeros(vis.shape + (3,), np.float32), np.zeros(vis.shape + (3,), bool), tracks[..., 0, :]
        pts = np.asarray(pts, np.float32)  # ... K T 3
        with np.errstate(invalid="ignore"):
            d = pts - pts[..., :1, :]
        ok3 &= np.isfinite(d).all(-1)
        chans, masks = [np.where(ok3, d[..., c], zero) for c in range(3)], [ok3] * 3
    else:
        with np.errstate(invalid="ignore"):
            chans = [np.where(ok2, tracks[..., c] - tracks[..., :1, c], zero) for c in range(2)]
        masks = [ok2, ok2]
        if repr_ == "uvd":
            depth = m.get("depth_track_m", m.get("depth_m"))
            dz = np.zeros(vis.shape, np.float32)
            if depth is not None:
                depth = np.asarray(depth, np.float32)  # ... K T
                with np.errstate(invalid="ignore"):
                    dz = depth - depth[..., :1]
            ok3 &= ok2 & np.isfinite(dz)
            chans.append(np.where(ok3, dz, zero))
            masks.append(ok3)
    return np.stack(chans, -1), np.stack(masks, -1), tracks[..., 0, :]


def motion_center_scale(entry: Mapping[str, Any], repr_: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (center, scale) of the relative motion from stats.json's motion entries:
    uvd uses motion/tracks_px_delta (du, dv) and the z of motion/points_cam_m_delta (d depth,
    z is depth along the optical axis); xyz uses motion/points_cam_m_delta.

    Motion is not centred and is scaled by its RMS, sqrt(mean^2 + std^2), whatever `mode`:
    most query points lie on the static background, so q01 = q99 = 0 is common and a
    quantile range would blow the moving points up. Missing entries fall back to fixed
    scales (16 px, 5 cm) so a dataset without 3D labels still trains."""
    scale = np.array([16.0, 16.0, 0.05], np.float32) if repr_ != "xyz" else np.full(3, 0.05, np.float32)

    def rms(stat) -> np.ndarray:
        return np.sqrt(np.asarray(stat["mean"], np.float64) ** 2 + np.asarray(stat["std"], np.float64) ** 2)

    px = entry.get("motion/tracks_px_delta")
    p3 = entry.get("motion/points_cam_m_delta")
    if repr_ != "xyz":
        if px:
            scale[:2] = rms(px)[:2]
        if p3:
            scale[2] = rms(p3)[2]
    elif p3:
        scale[:] = rms(p3)[:3]
    scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0).astype(np.float32)
    M = MOTION_CHANNELS[repr_]
    return np.zeros(M, np.float32), scale[:M]


def dist_rank_world(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """(rank, world_size): explicit values win, else torch.distributed when initialised, else (0, 1)."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shuffle_buffer(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Reservoir-style shuffle: fill a buffer of `size`, then emit a random element per new one."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


class TripletStream(IterableDataset):
    """Normalised samples from a curated dataset, split over ranks and DataLoader workers.

    ref: dataset directory, fsspec URL, URL/NAME@V, or an already-open dataset object.
    epochs: None streams forever (epoch e reshuffles with seed + e); an int stops after that many.
    verify: the reader's read-side verification (curation.store.reader); False only for storage
    that is trusted. interleave_shards: shards whose episodes a worker reads in one random order.
    """

    def __init__(self, ref: Any, cfg: LaMPConfig, *, seed: int = 0, shuffle_buffer: int = 512,
                 epochs: Optional[int] = None, rank: Optional[int] = None, world_size: Optional[int] = None,
                 dataset_name: Optional[str] = None, shards: Optional[Sequence[str]] = None, read_chunk: int = 10,
                 motion_only: bool = False, verify: bool = True, interleave_shards: int = INTERLEAVE_SHARDS):
        super().__init__()
        self.ref = ref
        self.verify = bool(verify)
        self.interleave = max(1, int(interleave_shards))
        self.cfg = cfg
        self.seed = int(seed)
        self.buffer = int(shuffle_buffer)
        self.epochs = epochs
        self.rank, self.world_size = rank, world_size
        self.read_chunk = read_chunk
        self.motion_only = bool(motion_only)
        ds = self.dataset()
        self.shards = list(shards) if shards is not None else list(ds.shard_names)
        if not self.shards:
            raise ValueError(f"{ref}: dataset has no shards")
        needs = "motion/tracks_px_delta" if self.motion_only else "actions"
        self.dataset_name, self.stats_entry = source_stats(ds.stats, dataset_name, needs=needs)
        self.version = dataset_version(ds)
        first = next(iter(self.read(ds, self.shards[:1], chunk=1)))
        K, T = np.asarray(first.motion["tracks_px"]).shape[:2]
        self.data_points, self.data_horizon = int(K), int(T)
        self.transform = TripletTransform(cfg, self.stats_entry, self.data_points, self.data_horizon, self.motion_only)
        self.query_uv = self.transform(first)["anchor_uv"]  # K 2: the grid asked about at inference

    def dataset(self):
        if not isinstance(self.ref, (str, bytes)) and hasattr(self.ref, "iter_triplets"):
            return self.ref
        # a forked DataLoader worker inherits the parent's open dataset, whose filesystem (s3fs:
        # an event loop) must not be used across a fork: each process opens its own
        if getattr(self, "_ds", None) is None or getattr(self, "_ds_pid", None) != os.getpid():
            from curation import open_dataset

            self._ds, self._ds_pid = open_dataset(self.ref, verify=self.verify), os.getpid()
            self._ds.open_shards = max(self._ds.open_shards, self.interleave)
        return self._ds

    def read(self, ds, shards: Sequence[str], chunk: int, episodes: Optional[Sequence[str]] = None):
        """The reader's triplets of `shards` (or of `episodes`, in that order); in motion-only mode
        without actions or proprio. A variant that needs past actions has them attached here, before
        any shuffle, while each episode's anchors still come in order."""
        # only the camera the transform uses and the labels it reads are fetched and decoded
        kwargs: dict[str, Any] = {"chunk": chunk, "cameras": cameras_read(self.cfg), "labels": labels_read(self.cfg)}
        if episodes is not None:
            kwargs["episodes"] = list(episodes)
        else:
            kwargs["shards"] = shards
        if self.motion_only:
            return ds.iter_triplets(**kwargs, motion_only=True)
        history = action_history_length(self.cfg)
        if history:
            return with_action_history(ds.iter_triplets(**kwargs), history)
        return ds.iter_triplets(**kwargs)

    def __getstate__(self):  # workers reopen the dataset lazily
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def worker_slot(self) -> tuple[int, int]:
        """(global worker id, total workers) of the calling process."""
        rank, world = dist_rank_world(self.rank, self.world_size)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def epoch_triplets(self, epoch: int):
        """This worker's triplets of one epoch, in read order (before the shuffle buffer)."""
        g, G = self.worker_slot()
        order = [self.shards[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))]
        ds = self.dataset()
        if not hasattr(ds, "episodes_of"):  # a reader without episode-level reads
            if len(order) >= G:
                yield from self.read(ds, order[g::G], self.read_chunk)
            else:
                yield from (tr for i, tr in enumerate(self.read(ds, order, self.read_chunk)) if i % G == g)
            return
        episodes = self.epoch_episodes(ds, order, epoch, g, G)
        if episodes is not None:
            yield from self.read(ds, (), self.read_chunk, episodes=episodes)
            return
        everything = [e for shard in order for e in ds.episodes_of(shard)]
        for i, tr in enumerate(self.read(ds, (), self.read_chunk, episodes=everything)):
            if i % G == g:
                yield tr

    def epoch_episodes(self, ds, order: Sequence[str], epoch: int, g: int, G: int) -> Optional[list[str]]:
        """Episode ids worker g of G reads in `epoch` (shards in the epoch's `order`), or None when
        there are fewer episodes than workers (the caller splits triplets instead)."""
        rng = np.random.default_rng([self.seed, epoch, g, 2])
        if len(order) >= G:
            mine, out = list(order[g::G]), []
            for i in range(0, len(mine), self.interleave):
                window = [e for shard in mine[i: i + self.interleave] for e in ds.episodes_of(shard)]
                out += [window[j] for j in rng.permutation(len(window))]
            return out
        everything = [e for shard in order for e in ds.episodes_of(shard)]
        if len(everything) < G:
            return None
        perm = np.random.default_rng([self.seed, epoch, 2]).permutation(len(everything))  # the same in every worker
        return [everything[j] for j in perm[g::G]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        g, _ = self.worker_slot()
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, epoch, g, 1])
            samples = transform_samples(self.transform, self.epoch_triplets(epoch))
            yield from shuffle_buffer(samples, self.buffer, rng)
            epoch += 1


def dataset_version(ds) -> str:
    """The published reference (URL/NAME@VERSION) a dataset was opened by, else NAME@VERSION of
    the curated dataset from its info or manifest (dataset, version columns)."""
    if getattr(ds, "version", None) and "@" in str(getattr(ds, "ref", "")):
        return str(ds.ref)
    info = getattr(ds, "info", None) or {}
    if isinstance(info, dict) and info.get("name") and info.get("version"):
        return f"{info['name']}@{info['version']}"
    try:
        man = ds.manifest
        names = sorted(set(man.column("dataset").to_pylist()))
        versions = sorted(set(man.column("version").to_pylist()))
        return f"{'+'.join(names)}@{'+'.join(versions)}"
    except Exception:  # noqa: BLE001 - a version string is informational
        return "unknown"


def collate(samples: list[dict[str, Any]]) -> Any:
    """List of samples -> batch of tensors (language, episode_id, anchor stay lists). In
    make_loader's workers the same batch is packed into a shared slot instead
    (policy/batch_transport.py) and reaches the trainer as these tensors."""
    batch: dict[str, Any] = {}
    for key, first in samples[0].items():
        if isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
        else:
            batch[key] = [s[key] for s in samples]
    return batch


PREFETCH_FACTOR = 4  # batches a worker has outstanding; its ring of shared slots holds 2 more


def make_loader(stream: TripletStream, batch_size: int, num_workers: int = 0, seed: int = 0) -> Batches:
    """Batches of a DataLoader over the stream; worker seeds derive from `seed` so runs repeat
    exactly."""
    from torch.utils.data import DataLoader

    slots = SlotCollate(collate, slots=PREFETCH_FACTOR + 2) if num_workers else None
    return Batches(DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=slots or collate,
                              generator=torch.Generator().manual_seed(seed), persistent_workers=False,
                              prefetch_factor=PREFETCH_FACTOR if num_workers else None), slots)
