"""The on-disk curated dataset: sharded Zarr v3 plus a Parquet manifest.

Layout of DATASET_DIR (see schemas/CONTRACT.md for the prose version):

    DATASET_DIR/
      dataset.json              contract version, config used, counts   (written last but one)
      manifest.parquet          one row per written episode             (written last)
      quarantine.parquet        one row per episode that failed
      filtered.parquet          one row per episode dropped by a filter or as a duplicate
      stats.json                training statistics
      README.md                 dataset card (+ card/*.png)
      shards/shard-NNNNN/       one Zarr v3 group per shard, written by exactly one worker,
                                committed by renaming shards/.tmp-shard-NNNNN-<uuid>/

Inside a shard group, arrays are concatenated over the shard's episodes along
axis 0: frame arrays over frames (offsets frame_start/frame_count in the
manifest), anchor arrays over anchors (anchor_start/anchor_count). All episodes
of a shard share camera set and each camera's image size; cameras of one episode
may differ in size (taco_play: rgb_static 150x200, rgb_gripper 84x84), so the
image symbols H and W are bound per camera.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# 3.x: arrays stored in the encodings of the ArraySpec table (compressed frames, fixed-point labels,
# each bound in the array's attributes). 2.x (every camera its own image size, the manifest's
# camera_sizes; arrays as float32/uint8 raw or zstd) has the same arrays and decoded dtypes, so it
# is still read; anything older or newer is refused by the reader and the validator.
# 3.1: every inner chunk ends in its crc32c (the Zarr v3 spec's `crc32c` codec, last of each
# array's inner codecs), which zarr checks as it decodes: readers verify chunks, not episodes.
CONTRACT_VERSION = "3.1.0"
READABLE_MAJORS = ("2", "3")
SHARDS_DIR = "shards"
# A unit's primary shard is shard-NNNNN; the sub-shards it lists (episodes of another array
# signature) are shard-NNNNN-KK-<attempt>: the attempt id keeps two attempts of one unit from
# ever sharing a directory. Datasets written before the attempt id have shard-NNNNN-KK.
SHARD_NAME_RE = re.compile(r"^shard-\d+(-\d+(-[0-9a-f]{12})?)?$")
_ATTEMPT_SUFFIX_RE = re.compile(r"^(shard-\d+-\d+)-[0-9a-f]{12}$")


def shard_key(name: str) -> str:
    """A shard's name without its attempt id: equal for the same shard of two runs of one job."""
    return _ATTEMPT_SUFFIX_RE.sub(r"\1", name)


def contract_problem(version) -> str:
    """Why a dataset written under contract `version` cannot be read by this code ("" = it can)."""
    v = str(version or "")
    if v.split(".")[0] in READABLE_MAJORS:
        return ""
    return (f"written under data contract {v or '(none)'}, this code reads contracts "
            f"{' and '.join(m + '.x' for m in READABLE_MAJORS)} (current {CONTRACT_VERSION}; schemas/CONTRACT.md: "
            f"per-camera image sizes since 2.0, encoded arrays since 3.0, chunk checksums since 3.1); "
            f"re-create it from its source with `curate run ... --overwrite`")


def _major_minor(version) -> tuple[int, int]:
    """(major, minor) of a version string; (0, 0) for anything unparsable."""
    parts = str(version or "").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def encoded_contract(version) -> bool:
    """Whether a dataset of contract `version` stores its arrays in the ArraySpec encodings (3.x)."""
    return _major_minor(version) >= (3, 0)


def chunk_checksum_contract(version) -> bool:
    """Whether every inner chunk of a dataset of contract `version` ends in its crc32c (3.1 on):
    zarr then verifies each chunk as it decodes it, and readers rely on that instead of
    recomputing the manifest's per-episode checksum."""
    return _major_minor(version) >= (3, 1)
MANIFEST = "manifest.parquet"
QUARANTINE = "quarantine.parquet"
FILTERED = "filtered.parquet"
DATASET_JSON = "dataset.json"
STATS_JSON = "stats.json"


@dataclass(frozen=True)
class ArraySpec:
    """An array of a shard group. Shape symbols: F frames, N anchors, H W image
    (bound per camera for `{camera}` arrays: frames/{camera} and depth_m/{camera}
    share their camera's H and W; motion_image has its own), K points, T horizon, L latent tokens, A action dim, P proprio dim.
    `nan_ok`: NaN is allowed (marks unknown); otherwise any NaN is a violation.
    `per`: "frame" or "anchor": which manifest offsets index axis 0.
    `optional`: absent when the label was not configured or not available.
    `encoding` (contract 3.x, curation/store/encodings.py): "image" (one encoded frame per inner
    chunk: the source's JPEG/PNG bytes, or PNG; decoded exactly as TFDS decodes the source),
    "fixed_point" (integers round(x * scale), NaN kept; error at most `max_abs_error` = 0.5 / scale
    in `units`, plus float32's own rounding of the decoded value, 6e-8 of it), "plain" (the dtype's bytes, exact); all but images then zstd (writer.compression).
    `scale`: fixed-point steps per unit, from the label's accuracy (a comment in the table)."""

    name: str  # may contain {camera}
    dtype: str
    shape: tuple[str, ...]
    per: str
    units: str
    nan_ok: bool = False
    optional: bool = False
    encoding: str = "plain"
    scale: float = 0.0

    @property
    def max_abs_error(self) -> float:
        """The largest difference between a decoded value and the value written (0 = exact)."""
        return 0.5 / self.scale if self.encoding == "fixed_point" else 0.0


# Fixed-point steps: tracks in 1/32 px (error <= 1/64 px, under the 0.05 px and far
# under any tracker's error, ~1 px on the simulator's ground truth, README "Accuracy"); metres in
# millimetres (error <= 0.5 mm, under the 1 mm of a depth sensor's quantisation).
TRACK_SCALE = 32.0  # steps per pixel
METRE_SCALE = 1000.0  # steps per metre

SHARD_ARRAYS: tuple[ArraySpec, ...] = (
    ArraySpec("frames/{camera}", "uint8", ("F", "H", "W", "3"), "frame", "RGB", encoding="image"),
    ArraySpec("depth_m/{camera}", "float32", ("F", "H", "W"), "frame", "metres", nan_ok=True, optional=True,
              encoding="fixed_point", scale=METRE_SCALE),
    ArraySpec("actions", "float32", ("F", "A"), "frame", "dataset action encoding"),
    ArraySpec("proprio", "float32", ("F", "P"), "frame", "dataset proprio encoding", optional=True),
    ArraySpec("anchor_step", "int32", ("N",), "anchor", "step index within the episode"),
    ArraySpec("tracks_px", "float32", ("N", "K", "T", "2"), "anchor", "pixels (x, y)", nan_ok=True,
              encoding="fixed_point", scale=TRACK_SCALE),
    ArraySpec("visible", "bool", ("N", "K", "T"), "anchor", "mask"),
    ArraySpec("in_range", "bool", ("N", "T"), "anchor", "mask"),
    ArraySpec("depth_track_m", "float32", ("N", "K", "T"), "anchor", "metres", nan_ok=True, optional=True,
              encoding="fixed_point", scale=METRE_SCALE),
    ArraySpec("points_cam_m", "float32", ("N", "K", "T", "3"), "anchor", "metres, camera frame, OpenCV axes", nan_ok=True,
              optional=True, encoding="fixed_point", scale=METRE_SCALE),
    ArraySpec("valid_3d", "bool", ("N", "K", "T"), "anchor", "mask", optional=True),
    ArraySpec("motion_image", "uint8", ("N", "H", "W", "3"), "anchor", "flow, sqrt encoding s=64", optional=True),
    ArraySpec("flow_valid", "bool", ("N",), "anchor", "mask", optional=True),
    ArraySpec("latent_tokens", "int16", ("N", "L"), "anchor", "codebook index, -1 pad", optional=True),
    ArraySpec("latent_valid", "bool", ("N",), "anchor", "mask", optional=True),
)


def spec_for(name: str) -> "ArraySpec | None":
    """The ArraySpec of a concrete array name (`frames/image_0` -> `frames/{camera}`), or None
    for a name the contract does not define. The one name-to-spec lookup of the code."""
    for spec in SHARD_ARRAYS:
        if spec.name == name:
            return spec
        if "{camera}" in spec.name:
            prefix = spec.name.split("{")[0]
            camera = name[len(prefix):]
            if name.startswith(prefix) and camera and "/" not in camera:
                return spec
    return None

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("episode_index", pa.int64(), nullable=False),
        pa.field("source_file", pa.string()),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("frame_start", pa.int64(), nullable=False),
        pa.field("frame_count", pa.int64(), nullable=False),
        pa.field("anchor_start", pa.int64(), nullable=False),
        pa.field("anchor_count", pa.int64(), nullable=False),
        pa.field("language", pa.string()),
        pa.field("language_informative", pa.bool_()),  # False: the dataset's placeholder language (kuka)
        pa.field("primary_camera", pa.string(), nullable=False),
        pa.field("cameras", pa.list_(pa.string()), nullable=False),
        pa.field("height", pa.int32(), nullable=False),  # of the primary camera
        pa.field("width", pa.int32(), nullable=False),
        pa.field("camera_sizes", pa.list_(pa.list_(pa.int32(), 2)), nullable=False),  # [H, W] per `cameras` entry
        pa.field("action_dim", pa.int32(), nullable=False),
        pa.field("action_encoding", pa.string()),
        pa.field("proprio_dim", pa.int32()),
        pa.field("control_hz", pa.float32()),
        pa.field("intrinsics", pa.list_(pa.float32(), 4)),  # fx fy cx cy
        pa.field("intrinsics_estimated", pa.bool_()),
        pa.field("depth_kind", pa.string()),
        pa.field("backends", pa.string()),  # JSON {label: backend}
        pa.field("success", pa.bool_()),
        pa.field("mean_visibility", pa.float32()),  # quality figures
        pa.field("motion_px", pa.float32()),  # median track displacement over the horizon, pixels
        pa.field("checksum", pa.string(), nullable=False),  # sha256 over the episode's array slices
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("episode_index", pa.int64()),
        pa.field("source_file", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
    ]
)

FILTERED_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("split", pa.string()),
        pa.field("episode_index", pa.int64()),
        pa.field("source_file", pa.string()),
        pa.field("reason", pa.string(), nullable=False),  # a curation.filters reason, or "duplicate"
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),  # the kept episode_id when reason == "duplicate"
    ]
)


def episode_checksum(arrays: dict[str, np.ndarray]) -> str:
    """The manifest's `checksum`: sha256 over an episode's array slices, in sorted name order,
    each prefixed by its name, dtype and shape: independent of where the episode sits in a shard."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()
