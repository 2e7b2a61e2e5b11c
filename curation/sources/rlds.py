"""Read any RLDS dataset directory (Open X-Embodiment, our simulator) into `Episode` records.

    source = RLDSSource("/data/openx/bridge_dataset/1.0.0", split="train")
    for unit in source.work_units(episodes_per_unit=64):   # what Beam / Ray fan out over
        for ep in source.read_unit(unit, on_error="yield"):
            ...                                            # Episode, or EpisodeError for a bad one

The directory (local path or any URL TF's gfile accepts, e.g. gs://gresearch/robotics/...) is
opened with `tfds.builder_from_directory`, which gives the features, the split and its TFDS
shards with their episode counts. Episodes are then read shard by shard straight from the
tfrecords and parsed in bulk with TFDS's own example parser (one call per episode gives every
step stacked: T encoded images, T x A actions), restricted to the keys the dataset config
needs. Images (cameras and Image-encoded depth) are decoded by each feature's own TFDS
decoder in one bulk call per camera and episode (curation/sources/rlds_decode.py): the pixels and
depths `builder.as_dataset()` would give, without its nested tf.data pipeline per step.
Reading shard by shard also
lets a truncated or corrupt tfrecord be reported with its file and first unreadable episode
while the other shards still read.

Per-dataset layouts come from curation/openx_registry.py; a dataset not in the registry is
read with keys inferred from its features.json (with a warning).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import numpy as np

from curation.sources.openx.registry import (
    LANG_CODEPOINTS,
    LANG_NONE,
    DatasetConfig,
    RawEpisode,
    get_dataset_config,
    infer_dataset_config,
)
from curation.sources.rlds_decode import FrameDecoder, feature_at, is_image_feature
from schemas.episode import CameraIntrinsics, EncodedFrames, Episode, EpisodeError, Provenance

log = logging.getLogger(__name__)

OnError = Literal["raise", "yield"]


@dataclass(frozen=True)
class WorkUnit:
    """A contiguous range of episodes [start, stop) of a split, inside one tfrecord file."""

    split: str
    start: int  # split-global episode index
    stop: int
    file: str

    @property
    def num_episodes(self) -> int:
        return self.stop - self.start

    @property
    def tfds_split(self) -> str:
        """The same range as a TFDS split string (for tfds.load / builder.as_dataset)."""
        return f"{self.split}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class ShardFile:
    path: str
    num_episodes: int
    start: int  # split-global index of its first episode


def _is_url(path: str) -> bool:
    return "://" in path


class RLDSSource:
    """One split of an RLDS dataset directory, readable by episode range."""

    def __init__(
        self,
        path_or_url: str,
        split: str = "train",
        config: Optional[DatasetConfig] = None,
        cameras: Optional[Sequence[str]] = None,
        decode_threads: Optional[int] = None,
    ):
        """`cameras`: read only these RGB cameras (default: every camera the config names that
        the dataset has); the primary camera is always read. `decode_threads`: image-decoding
        threads per episode (default: the CPU count, at most 4; runners that already run one
        reader per core should pass 1)."""
        import tensorflow_datasets as tfds

        self.path = str(path_or_url).rstrip("/")
        self.decode_threads = int(decode_threads or min(4, os.cpu_count() or 1))
        self.source_url = self.path
        try:
            self._builder = tfds.builder_from_directory(self.path)
        except Exception as e:  # noqa: BLE001 - any failure here means the directory is unusable
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            what = "cannot reach" if _is_url(self.path) else "cannot open"
            raise EpisodeError(self.path, f"{what} RLDS dataset directory ({type(e).__name__}: {reason})") from None
        info = self._builder.info
        self.name: str = info.name
        self.version: str = str(info.version)
        if split not in info.splits:
            raise EpisodeError(self.path, f"no split {split!r}; splits are {sorted(info.splits.keys())}")
        self.split = split
        self._features_json = _read_features_json(self.path, info)
        if config is None:
            config = get_dataset_config(self.name)
            if config is None:
                try:
                    config = infer_dataset_config(self._features_json, self.name)
                except ValueError as e:
                    raise EpisodeError(self.path, f"not in the Open-X registry and cannot infer its layout: {e}") from None
                log.warning(
                    "%s is not in the Open-X registry; inferred primary=%s cameras=%s depth=%s language=%s "
                    "actions=%s proprio=%s (control rate unknown)",
                    self.name, config.primary_camera, list(config.cameras), list(config.depth_keys),
                    config.language_key, list(config.action_keys), list(config.proprio_keys),
                )
        self.config = self._check_config(config, cameras)
        split_info = info.splits[split]
        paths = [str(p) for p in split_info.filepaths]
        lengths = [int(n) for n in split_info.shard_lengths]
        if len(paths) != len(lengths):
            raise EpisodeError(self.path, f"split {split}: {len(paths)} files but {len(lengths)} shard lengths")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        self._files = [ShardFile(p, n, int(o)) for p, n, o in zip(paths, lengths, offsets[:-1])]
        self._parse = None  # built lazily (a tf.function; not picklable, so not built in __init__)
        self._decoders: dict[str, FrameDecoder] = {}  # step key -> decoder, built with the parser

    # ------------------------------------------------------------------ metadata

    @property
    def num_episodes(self) -> int:
        return sum(f.num_episodes for f in self._files)

    @property
    def files(self) -> list[ShardFile]:
        """The split's tfrecord files with their episode counts (from dataset_info shard lengths)."""
        return list(self._files)

    @property
    def features(self) -> dict:
        """The features.json content."""
        return self._features_json

    def __repr__(self) -> str:
        return f"RLDSSource({self.path!r}, split={self.split!r}, episodes={self.num_episodes})"

    def __getstate__(self):  # picklable for Beam / Ray: drop the builder and the compiled parser
        state = dict(self.__dict__)
        state["_builder"] = None
        state["_parse"] = None
        state["_decoders"] = {}
        return state

    def _leaf_info(self) -> dict[str, dict]:
        from curation.sources.openx.registry import _leaf_features

        return _leaf_features(self._features_json)

    def _check_config(self, config: DatasetConfig, cameras: Optional[Sequence[str]]) -> DatasetConfig:
        """Drop optional keys the dataset does not have (with a warning); fail on required ones."""
        from dataclasses import replace

        leaves = self._leaf_info()
        have = {k[len("steps/"):] for k in leaves if k.startswith("steps/")}
        have_prefixes = {"/".join(k.split("/")[:i]) for k in have for i in range(1, k.count("/") + 2)}

        def present(step_key: str) -> bool:
            return step_key in have_prefixes

        where = f"{self.name}/{self.version} ({self.path})"
        if not present(f"observation/{config.primary_camera}"):
            raise EpisodeError(where, f"primary camera observation/{config.primary_camera} not in features.json")
        missing_actions = [k for k in config.action_keys if not present(k)]
        if missing_actions:
            raise EpisodeError(where, f"action keys {missing_actions} not in features.json")
        dropped = []

        def keep_cam(c: Optional[str]) -> Optional[str]:
            if c is None:
                return None
            if cameras is not None and c not in cameras and c != config.primary_camera:
                return None
            if not present(f"observation/{c}"):
                dropped.append(f"observation/{c}")
                return None
            return c

        secondary, wrist = keep_cam(config.secondary_camera), keep_cam(config.wrist_camera)
        extra = tuple(c for c in (keep_cam(c) for c in config.extra_cameras) if c)
        kept_cams = {config.primary_camera, secondary, wrist, *extra}
        depth = []
        for d in config.depth:
            if not present(d.key):
                dropped.append(d.key)
            elif d.camera in kept_cams:
                depth.append(d)
        proprio = tuple(k for k in config.proprio_keys if present(k))
        extra_steps = tuple(k for k in config.extra_step_keys if present(k))
        dropped += [k for k in config.proprio_keys + config.extra_step_keys if not present(k)]
        language_key = config.language_key
        if language_key and not present(language_key):
            dropped.append(language_key)
            language_key = None
        if dropped:
            log.warning("%s: keys in the dataset config but not in features.json, not read: %s", where, dropped)
        return replace(
            config, secondary_camera=secondary, wrist_camera=wrist, extra_cameras=extra, depth=tuple(depth),
            proprio_keys=proprio, extra_step_keys=extra_steps, language_key=language_key,
            language_kind=config.language_kind if language_key else LANG_NONE,
        )

    # ------------------------------------------------------------------ work units

    def work_units(self, episodes_per_unit: Optional[int] = None) -> list[WorkUnit]:
        """One unit per TFDS shard, or per range of at most `episodes_per_unit` episodes within a shard."""
        if episodes_per_unit is not None and episodes_per_unit < 1:
            raise ValueError(f"episodes_per_unit must be >= 1, got {episodes_per_unit}")
        units = []
        for f in self._files:
            step = episodes_per_unit or max(f.num_episodes, 1)
            for a in range(f.start, f.start + f.num_episodes, step):
                units.append(WorkUnit(self.split, a, min(a + step, f.start + f.num_episodes), f.path))
        return units

    # ------------------------------------------------------------------ reading

    def read(self, start: Optional[int] = None, stop: Optional[int] = None,
             on_error: OnError = "raise") -> Iterator[Episode | EpisodeError]:
        """Episodes [start, stop) of the split, in order.

        on_error="raise": the first bad episode raises EpisodeError.
        on_error="yield": a bad episode is yielded as an EpisodeError (naming file, episode and
        reason) and reading goes on; a truncated tfrecord yields one error for the first episode
        it could not read and reading goes on with the next file."""
        if on_error not in ("raise", "yield"):
            raise ValueError(f"on_error must be 'raise' or 'yield', got {on_error!r}")
        n = self.num_episodes
        start = 0 if start is None else (start + n if start < 0 else start)
        stop = n if stop is None else (stop + n if stop < 0 else min(stop, n))
        for f in self._files:
            a, b = max(start, f.start), min(stop, f.start + f.num_episodes)
            if a < b:
                yield from self._read_file(f.path, a - f.start, b - f.start, f.start, on_error)

    def read_unit(self, unit: WorkUnit, on_error: OnError = "raise") -> Iterator[Episode | EpisodeError]:
        if unit.split != self.split:
            raise ValueError(f"work unit is for split {unit.split!r}, this source reads {self.split!r}")
        return self.read(unit.start, unit.stop, on_error)

    def __iter__(self) -> Iterator[Episode]:
        return self.read()

    def _parser(self):
        if self._parse is None:
            import tensorflow as tf
            from tensorflow_datasets.core import example_parser

            if self._builder is None:  # unpickled on a worker
                import tensorflow_datasets as tfds

                self._builder = tfds.builder_from_directory(self.path)
            full = self._builder.info.features.get_serialized_info()
            wanted = self._wanted_step_keys()
            steps = _subset(full["steps"], wanted)
            spec = {"steps": steps}
            if "episode_metadata" in full:
                spec["episode_metadata"] = full["episode_metadata"]
            parser = example_parser.ExampleParser(spec)
            self._decoders = self._frame_decoders()
            self._parse = tf.function(parser.parse_example, input_signature=[tf.TensorSpec([], tf.string)])
        return self._parse

    def _frame_decoders(self) -> dict[str, FrameDecoder]:
        """A TFDS-exact decoder per Image feature the config reads (cameras and depth)."""
        features = self._builder.info.features
        named = [(f"observation/{cam}", f"camera {cam!r}") for cam in self.config.cameras]
        named += [(d.key, f"depth {d.key!r}") for d in self.config.depth]
        out = {}
        for key, what in named:
            feature = feature_at(features, key)
            if is_image_feature(feature):
                out[key] = FrameDecoder(feature, what, self.decode_threads)
        return out

    def _wanted_step_keys(self) -> list[str]:
        c = self.config
        keys = [f"observation/{cam}" for cam in c.cameras]
        keys += [d.key for d in c.depth] + list(c.action_keys) + list(c.proprio_keys) + list(c.extra_step_keys)
        if c.language_key:
            keys.append(c.language_key)
        return keys

    def _read_file(self, path: str, a: int, b: int, file_start: int, on_error: OnError):
        """Episodes a..b-1 (local to the file) of one tfrecord."""
        import tensorflow as tf

        parse = self._parser()
        records = tf.data.TFRecordDataset(path).skip(a).take(b - a)
        # No tf.data autotuning: this is a plain sequential read (decoding happens per episode
        # below), and tearing down an autotuned iterator waits for the autotuner's thread,
        # measured at ~1.2 s per work unit here (half of a 2-episode unit's time).
        opts = tf.data.Options()
        opts.autotune.enabled = False
        it = iter(records.with_options(opts))
        i = a
        while i < b:
            where = self._where(file_start + i, path)
            try:
                record = next(it)
            except StopIteration:
                err = EpisodeError(where, f"tfrecord ended after {i} episodes, dataset_info says "
                                          f"{self._file_length(path)} (truncated file)",
                                  provenance=self._provenance(file_start + i, path))
                if on_error == "raise":
                    raise err from None
                yield err
                return
            except (tf.errors.DataLossError, tf.errors.OpError) as e:
                if on_error == "raise":
                    raise EpisodeError(where, f"truncated or corrupt tfrecord ({_first_line(e)})",
                                       provenance=self._provenance(file_start + i, path)) from None
                # TensorFlow stops at the first damaged record: read the rest from the framing.
                yield from self._salvage_file(path, i, b, file_start, parse)
                return
            try:
                yield self._episode(record, file_start + i, path, parse)
            except EpisodeError as e:
                if on_error == "raise":
                    raise
                e.provenance = e.provenance or self._provenance(file_start + i, path)
                yield e
            i += 1

    def _salvage_file(self, path: str, a: int, b: int, file_start: int, parse):
        """Episodes a..b-1 of a damaged tfrecord: each intact record read, each damaged one an
        EpisodeError naming the byte offset and what is wrong (curation/sources/tfrecord_scan.py)."""
        import tensorflow as tf

        from curation.sources.tfrecord_scan import assign_indices, scan_records

        log.warning("%s: damaged tfrecord, reading its intact records from the framing", path)
        slots = assign_indices(scan_records(path), self._file_length(path))
        for i in range(a, b):
            data, reason = slots[i]
            if data is None:
                yield EpisodeError(self._where(file_start + i, path), reason,
                                   provenance=self._provenance(file_start + i, path))
                continue
            try:
                yield self._episode(tf.constant(data), file_start + i, path, parse)
            except EpisodeError as e:
                e.provenance = e.provenance or self._provenance(file_start + i, path)
                yield e

    def _file_length(self, path: str) -> int:
        return next((f.num_episodes for f in self._files if f.path == path), -1)

    def _provenance(self, index: int, path: str) -> Provenance:
        return Provenance(self.name, self.version, self.split, index, path, self.source_url)

    def _where(self, index: int, path: str) -> str:
        return self._provenance(index, path).describe()

    def _episode(self, record, index: int, path: str, parse) -> Episode:
        import tensorflow as tf

        where = self._where(index, path)
        try:
            parsed = parse(record)
        except tf.errors.InvalidArgumentError as e:
            raise EpisodeError(where, f"cannot parse episode: {_first_line(e)}") from None
        steps = _flatten(_to_numpy(parsed["steps"]))
        metadata = _flatten(_to_numpy(parsed.get("episode_metadata", {})))
        # A step key absent from the record parses as zero values: tell that apart from an empty episode.
        counts = {k: int(np.shape(v)[0]) for k, v in steps.items()}
        if len(set(counts.values())) > 1:
            T = max(counts.values())
            missing = sorted(f"steps/{k}" for k, c in counts.items() if c == 0)
            if missing:
                raise EpisodeError(where, f"missing key(s) {missing} (other step keys have {T} steps)")
            raise EpisodeError(where, f"step keys disagree on the number of steps: {counts}")
        raw = RawEpisode(steps=steps, metadata=metadata, where=where)
        try:
            if self.config.standardize is not None:
                raw = self.config.standardize(raw)
            episode = self._to_episode(raw, index, path)
            if self.config.finalize is not None:
                episode = self.config.finalize(episode, raw)
        except EpisodeError:
            raise
        except (KeyError, ValueError, TypeError, IndexError) as e:  # a layout the config did not expect
            raise EpisodeError(where, f"does not match the {self.config.name} layout: {type(e).__name__}: {e}") from None
        episode.check()
        return episode

    def _to_episode(self, raw: RawEpisode, index: int, path: str) -> Episode:
        c, where, steps = self.config, raw.where, raw.steps
        prov = Provenance(self.name, self.version, self.split, index, path, self.source_url)

        actions = _concat(steps, c.action_keys, where, "action")
        T = actions.shape[0]
        if T == 0:
            raise EpisodeError(where, "empty episode (0 steps)")
        if not np.all(np.isfinite(actions)):
            t, d = np.argwhere(~np.isfinite(actions))[0]
            raise EpisodeError(where, f"non-finite action (NaN/inf) at step {t} dim {d}")

        frames: dict[str, np.ndarray] = {}
        encoded: dict[str, EncodedFrames] = {}
        for cam in c.cameras:
            key = f"observation/{cam}"
            frames[cam] = _decode_rgb(steps[key], self._decoders.get(key), where, cam, bgr=cam in c.bgr_cameras)
            source_bytes = _source_bytes(steps[key], self._decoders.get(key), bgr=cam in c.bgr_cameras)
            if source_bytes is not None:
                encoded[cam] = source_bytes
            if frames[cam].shape[0] != T:
                raise EpisodeError(where, f"camera {cam!r} has {frames[cam].shape[0]} frames, actions {T} steps")
        blank = tuple(cam for cam, fr in frames.items() if not fr.any())

        depth_m: dict[str, np.ndarray] = {}
        for d in c.depth:
            depth_m[d.camera] = _decode_depth(steps[d.key], self._decoders.get(d.key), d, where,
                                              frames[d.camera].shape[1:3])

        proprio = None
        if c.proprio_keys:
            proprio = _concat(steps, c.proprio_keys, where, "proprio")

        intrinsics = {}
        for cam in frames:
            k = c.intrinsics_for(cam)
            if k is not None:
                H, W = frames[cam].shape[1:3]
                intrinsics[cam] = CameraIntrinsics(*map(float, k), int(W), int(H), estimated=False)

        return Episode(
            provenance=prov,
            language=_language(steps, c, where),
            frames=frames,
            actions=actions,
            action_encoding=c.action_encoding,
            control_hz=float(c.control_hz),
            primary_camera=c.primary_camera,
            depth_m=depth_m,
            proprio=proprio,
            proprio_encoding=c.proprio_encoding if proprio is not None else "",
            intrinsics=intrinsics,
            language_informative=c.language_informative,
            blank_cameras=blank,
            encoded_frames=encoded,
        )


def read_episodes(path: str, split: str = "train", start: Optional[int] = None, stop: Optional[int] = None,
                  on_error: OnError = "raise", config: Optional[DatasetConfig] = None) -> Iterator[Episode | EpisodeError]:
    """Convenience: episodes [start, stop) of `split` of the dataset directory `path`."""
    return RLDSSource(path, split, config).read(start, stop, on_error)


# ---------------------------------------------------------------------- helpers


def _first_line(e: Exception) -> str:
    """The useful part of a TF error: no function-node prefix, no op suffix, one line."""
    import re

    s = getattr(e, "message", None) or str(e)
    s = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", s)
    s = re.sub(r"\s*\[Op:[^\]]*\].*$", "", s, flags=re.S)
    noise = ("Graph execution error", "Detected at node", "[[", "File ")
    lines = [ln.strip() for ln in s.strip().splitlines()
             if ln.strip() and not ln.startswith((" ", "\t")) and not ln.strip().startswith(noise)]
    return lines[0] if lines else type(e).__name__


def _subset(info: dict, keys: Sequence[str]) -> dict:
    """The part of a nested serialized-info dict that the slash paths `keys` select.

    Feature names may themselves contain "/" (kuka's "clip_function_input/base_pose_tool_reached"),
    so at each level the longest matching name wins."""
    out: dict = {}
    for key in keys:
        node, dst, rest = info, out, key.split("/")
        while rest:
            for n in range(len(rest), 0, -1):
                name = "/".join(rest[:n])
                if isinstance(node, dict) and name in node:
                    break
            else:
                raise KeyError(key)
            node, rest = node[name], rest[n:]
            if rest:
                dst = dst.setdefault(name, {})
            else:
                dst[name] = node
    return out


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return tree.numpy()


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _concat(steps: dict, keys: Sequence[str], where: str, what: str) -> np.ndarray:
    """Gather step keys (each T x ..., or a dict subtree) into one T x D float32 array."""
    parts = []
    for key in keys:
        if key in steps:
            arrs = [steps[key]]
        else:
            sub = sorted(k for k in steps if k.startswith(key + "/"))
            if not sub:
                raise EpisodeError(where, f"missing {what} key steps/{key}")
            arrs = [steps[k] for k in sub]
        for a in arrs:
            a = np.asarray(a)
            if a.dtype == object:
                raise EpisodeError(where, f"{what} key steps/{key} holds bytes, not numbers")
            parts.append(a.reshape(a.shape[0], int(np.prod(a.shape[1:]))).astype(np.float32))
    T = {p.shape[0] for p in parts}
    if len(T) > 1:
        raise EpisodeError(where, f"{what} keys {list(keys)} have different step counts {sorted(T)}")
    return np.concatenate(parts, axis=1) if parts else np.zeros((0, 0), np.float32)


def _decode_rgb(encoded: np.ndarray, decoder: Optional[FrameDecoder], where: str, cam: str,
                bgr: bool) -> np.ndarray:
    """A camera's T frames as stored (encoded Image or a pixel Tensor) -> T x H x W x 3 uint8 RGB.

    `bgr`: the dataset stored the channels swapped (TFDS hands them over as stored; we flip).
    A single-channel camera is repeated to 3 channels, an alpha channel is dropped."""
    if decoder is None:  # a pixel Tensor feature, not an Image
        arr = np.asarray(encoded)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise EpisodeError(where, f"camera {cam!r}: expected T x H x W x 3 uint8, got {arr.shape} {arr.dtype}")
    else:
        arr = decoder(encoded, where)  # T H W C, the feature's dtype
        if arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3, 4):
            raise EpisodeError(where, f"camera {cam!r}: an Image of {arr.dtype} x {arr.shape[-1]} channels is not RGB")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
    return np.ascontiguousarray(arr[..., ::-1]) if bgr else arr


def _source_bytes(encoded, decoder: Optional[FrameDecoder], bgr: bool) -> Optional[EncodedFrames]:
    """A camera's encoded frames as stored, when they decode to its RGB frames unchanged: a 3-channel
    uint8 Image of JPEG frames, or of 8-bit RGB PNGs (curation.store.encodings decodes both as
    TFDS does); None for pixel Tensors, BGR cameras and anything else."""
    from curation.store.encodings import image_format, png_is_rgb8

    if decoder is None or bgr or decoder.dtype != np.uint8 or decoder.feature.shape[-1] != 3 or not len(encoded):
        return None
    blobs = tuple(bytes(b) for b in encoded)
    fmt = image_format(blobs[0])
    if not fmt or any(image_format(b) != fmt for b in blobs):
        return None
    if fmt == "png" and not all(png_is_rgb8(b) for b in blobs):
        return None
    return EncodedFrames(fmt, blobs)


def _decode_depth(raw, decoder: Optional[FrameDecoder], spec, where: str, hw: tuple[int, int]) -> np.ndarray:
    """Depth as stored -> T x H x W float32 metres, NaN = unknown.

    Stored as an Image (uint16 PNG, float32 bitcast PNG, uint8) it is decoded as TFDS decodes
    it, then its first channel is the reading; a Tensor (T x H x W or T x H x W x 1) is used as is."""
    arr = decoder(raw, where) if decoder is not None else np.asarray(raw)
    if arr.ndim == 4:
        arr = arr[..., 0]
    if arr.ndim != 3 or arr.dtype == object:
        raise EpisodeError(where, f"depth {spec.key!r}: expected T x H x W numbers, got {arr.shape} {arr.dtype}")
    depth = arr.astype(np.float32) * np.float32(spec.scale_to_m)
    if spec.zero_is_invalid:
        depth[arr == 0] = np.nan
    depth[~np.isfinite(depth)] = np.nan
    if depth.shape[1:3] != tuple(hw):
        raise EpisodeError(where, f"depth {spec.key!r} is {depth.shape[1:3]}, its camera {spec.camera!r} is {tuple(hw)}")
    return depth


def _language(steps: dict, c: DatasetConfig, where: str) -> str:
    if not c.language_key or c.language_kind == LANG_NONE:
        return ""
    values = steps.get(c.language_key)
    if values is None:
        raise EpisodeError(where, f"missing language key steps/{c.language_key}")
    if c.language_kind == LANG_CODEPOINTS:
        texts = ["".join(chr(int(cp)) for cp in np.asarray(row).reshape(-1) if cp != 0) for row in values]
    else:
        texts = [bytes(v).decode("utf-8", errors="replace") for v in values]
    for text in texts:  # first non-empty instruction (Open-X repeats it on every step)
        if text.strip():
            return text.strip()
    return ""


def dataset_summary_features(source: RLDSSource) -> dict:
    """Feature-level facts for reports: camera shapes, depth keys and units."""
    leaves = source._leaf_info()
    cams = {}
    for cam in source.config.cameras:
        node = leaves.get(f"steps/observation/{cam}", {})
        spec = node.get("image") or node.get("tensor") or {}
        cams[cam] = [int(d) for d in spec.get("shape", {}).get("dimensions", [])]
    return {
        "cameras": cams,
        "depth": {d.key: {"camera": d.camera, "units": d.units, "scale_to_m": d.scale_to_m} for d in source.config.depth},
        "control_hz": None if math.isnan(source.config.control_hz) else source.config.control_hz,
    }


def _read_features_json(path: str, info) -> dict:
    """<dir>/features.json as a dict (local or URL); rebuilt from the builder when absent."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(f"{path}/features.json") as f:
            return json.load(f)
    except (tf.errors.OpError, ValueError):
        from google.protobuf import json_format

        return json_format.MessageToDict(info.features.to_proto())
