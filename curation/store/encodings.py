"""How each shard array is encoded on disk (contract 3.x): the two codecs of our own, and the
writer's choice of codecs per array.

Every array is a Zarr v3 array whose codecs decode it to the contract's dtype and shape, so any
reader that has the codecs gets the decoded values with a plain `array[...]`:

- `curator.fixed_point` (array -> array): a float array stored as integers, `round(x * scale)`,
  NaN as the integer type's minimum; decoding gives `q / scale` in float32, NaN where the
  sentinel is. The largest error is `0.5 / scale` (tracks 1/32 px -> 1/64 px; metres in
  millimetres -> 0.5 mm). The writer picks int16 when every value fits, else int32.
- `curator.image` (array -> bytes): one frame per inner chunk, the chunk being one encoded image
  (JPEG or PNG), normally the source's own bytes. JPEG is decoded exactly as TFDS decodes it
  (`tf.io.decode_jpeg`, libjpeg's fast integer DCT: TFDS's default; PIL and OpenCV use the slow
  one and differ by up to 14 grey levels on 81 % of the pixels of the Bridge frames), PNG by
  OpenCV (lossless, so every decoder agrees).

Both are registered with zarr-python through the `zarr.codecs` entry points of this package
(pyproject.toml), so `zarr.open_array(...)[...]` decodes them wherever triplet-curator is
installed; `register()` does the same in a process that imported us without the entry points.
Everything else uses codecs of the Zarr v3 spec (sharding_indexed, bytes, zstd, crc32c), which
tensorstore and every v3 reader also open. `ENCODINGS` says, per array, which readers can.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import numpy as np
from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec as ChunkSpec

    from schemas.dataset import ArraySpec as DatasetArraySpec

FIXED_POINT = "curator.fixed_point"
IMAGE = "curator.image"
IMAGE_FORMATS = ("jpeg", "png")
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# The default lossy JPEG quality of `writer.frames=jpeg` (libjpeg's scale; 95 keeps the
# re-encoded Bridge frames above 40 dB against their decoded source, `curate bench storage`).
DEFAULT_JPEG_QUALITY = 95


# ---------------------------------------------------------------------------------------
# Fixed point
# ---------------------------------------------------------------------------------------

def _sentinel(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).min)


def quantize(x: np.ndarray, scale: float, dtype: str) -> np.ndarray:
    """float array -> integers round(x * scale), NaN -> the dtype's minimum. Values that do not
    fit (|x * scale| past the dtype's maximum) are an error, never wrapped."""
    dt = np.dtype(dtype)
    nan = np.isnan(x)
    q = np.rint(np.where(nan, 0, x).astype(np.float64) * scale)
    limit = np.iinfo(dt).max
    if q.size and np.abs(q).max() > limit:
        raise ValueError(f"{FIXED_POINT}: value {float(np.abs(x[~nan]).max())} does not fit {dtype} at scale {scale}")
    q = q.astype(dt)
    q[nan] = _sentinel(dt)
    return q


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """Integers of `quantize` -> float32 values (NaN at the sentinel)."""
    out = q.astype(np.float32) / np.float32(scale)
    out[q == _sentinel(q.dtype)] = np.nan
    return out


def bound_slack(x: np.ndarray) -> np.ndarray:
    """What float32 itself adds to a fixed-point bound: the decoded value q / scale is rounded to
    the nearest float32, up to half its spacing away (6e-8 of the value)."""
    return np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)


def within_bound(got: np.ndarray, want: np.ndarray, bound: float) -> np.ndarray:
    """Where decoded `got` equals `want` within `bound` (+ float32 rounding); NaN matches NaN only."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):
        close = np.abs(g - w) <= bound + bound_slack(want)
    return np.where(np.isnan(g) | np.isnan(w), np.isnan(g) & np.isnan(w), close)


def fixed_point_dtype(x: np.ndarray, scale: float) -> str:
    """int16 when every finite value fits at `scale` (the sentinel aside), else int32."""
    finite = x[np.isfinite(x)]
    peak = float(np.abs(finite).max()) * scale if finite.size else 0.0
    return "int16" if peak < np.iinfo(np.int16).max - 1 else "int32"


@dataclass(frozen=True)
class FixedPointCodec(ArrayArrayCodec):
    """float32 <-> int16/int32 fixed point with a NaN sentinel (module docstring)."""

    is_fixed_size = True
    scale: float
    dtype: str

    def __init__(self, *, scale: float, dtype: str = "int16") -> None:
        if np.dtype(dtype) not in (np.dtype("int16"), np.dtype("int32")):
            raise ValueError(f"{FIXED_POINT}: dtype {dtype!r} is not int16 or int32")
        object.__setattr__(self, "scale", float(scale))
        object.__setattr__(self, "dtype", str(np.dtype(dtype)))

    @classmethod
    def from_dict(cls, data: dict) -> "FixedPointCodec":
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict:
        return {"name": FIXED_POINT, "configuration": {"scale": self.scale, "dtype": self.dtype}}

    def resolve_metadata(self, chunk_spec: "ChunkSpec") -> "ChunkSpec":
        from zarr.core.dtype import parse_dtype

        return replace(chunk_spec, dtype=parse_dtype(np.dtype(self.dtype), zarr_format=3), fill_value=0)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: "ChunkSpec") -> int:
        return input_byte_length * np.dtype(self.dtype).itemsize // 4

    def _decode_sync(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> NDBuffer:
        out = dequantize(chunk.as_numpy_array(), self.scale)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> Optional[NDBuffer]:
        q = quantize(chunk.as_numpy_array(), self.scale, self.dtype)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(q)

    async def _decode_single(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> NDBuffer:
        return self._decode_sync(chunk, chunk_spec)

    async def _encode_single(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> Optional[NDBuffer]:
        return self._encode_sync(chunk, chunk_spec)


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------

def image_format(blob: bytes) -> str:
    """"jpeg", "png" or "" from an encoded image's first bytes."""
    if blob[:3] == JPEG_MAGIC:
        return "jpeg"
    if blob[:8] == PNG_MAGIC:
        return "png"
    return ""


def png_is_rgb8(blob: bytes) -> bool:
    """An 8-bit truecolour PNG without alpha (IHDR bit depth 8, colour type 2): the PNGs whose
    pixels every decoder returns unchanged as RGB."""
    return len(blob) > 26 and blob[12:16] == b"IHDR" and blob[24] == 8 and blob[25] == 2


def decode_image(blob: bytes, fmt: str) -> np.ndarray:
    """One encoded frame -> H x W x 3 uint8 RGB, as TFDS decodes it (module docstring).
    The one place frames are decoded: the codec and the writer's check both call it."""
    if fmt == "jpeg":
        import tensorflow as tf

        return tf.io.decode_jpeg(blob, channels=3, dct_method="INTEGER_FAST").numpy()
    if fmt == "png":
        import cv2

        # OpenCV >= 4.11 decodes straight to RGB; before, BGR and a flip (a copy of the frame)
        rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)
        img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR if rgb is None else rgb)
        if img is None:
            raise ValueError(f"{IMAGE}: undecodable PNG ({len(blob)} bytes)")
        return np.ascontiguousarray(img[..., ::-1]) if rgb is None else img
    raise ValueError(f"{IMAGE}: unknown image format {fmt!r} (one of {IMAGE_FORMATS})")


def encode_image(rgb: np.ndarray, fmt: str, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """H x W x 3 uint8 RGB -> PNG (lossless) or JPEG at `quality`, by OpenCV."""
    import cv2

    bgr = np.ascontiguousarray(rgb[..., ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"{IMAGE}: OpenCV could not encode a {rgb.shape} frame as {fmt}")
    return buf.tobytes()


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """uint8 (1, H, W, 3) chunks <-> one encoded image each (module docstring)."""

    is_fixed_size = False
    format: str
    quality: int

    def __init__(self, *, format: str = "png", quality: int = DEFAULT_JPEG_QUALITY) -> None:  # noqa: A002
        if format not in IMAGE_FORMATS:
            raise ValueError(f"{IMAGE}: format {format!r} is not one of {IMAGE_FORMATS}")
        object.__setattr__(self, "format", format)
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict) -> "ImageCodec":
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict:
        return {"name": IMAGE, "configuration": {"format": self.format, "quality": self.quality}}

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: "ChunkSpec") -> int:
        """zarr's codec interface: a codec whose output size depends on the data (an image codec,
        like zarr's own zstd and gzip codecs) answers with NotImplementedError, which tells zarr
        not to plan fixed-size chunks around it. Complete as it is, not a stub."""
        raise NotImplementedError(f"{IMAGE}: encoded frames vary in size, as compressed bytes do")

    def _decode_sync(self, chunk: Buffer, chunk_spec: "ChunkSpec") -> NDBuffer:
        img = decode_image(chunk.to_bytes(), self.format)
        if (1,) + img.shape != tuple(chunk_spec.shape):
            raise ValueError(f"{IMAGE}: decoded frame is {img.shape}, the array's chunk is {chunk_spec.shape}")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(img.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> Optional[Buffer]:
        frames = chunk.as_numpy_array()
        if frames.shape[0] != 1:
            raise ValueError(f"{IMAGE}: chunks hold one frame, got {frames.shape}")
        return chunk_spec.prototype.buffer.from_bytes(encode_image(frames[0], self.format, self.quality))

    async def _decode_single(self, chunk: Buffer, chunk_spec: "ChunkSpec") -> NDBuffer:
        return self._decode_sync(chunk, chunk_spec)

    async def _encode_single(self, chunk: NDBuffer, chunk_spec: "ChunkSpec") -> Optional[Buffer]:
        return self._encode_sync(chunk, chunk_spec)


# ---------------------------------------------------------------------------------------
# A stored array against its ArraySpec
# ---------------------------------------------------------------------------------------

def inner_codecs(arr) -> list:
    """The codecs of an array's inner chunks (inside sharding_indexed, or the array's own)."""
    from zarr.codecs import ShardingCodec

    codecs = list(arr.metadata.codecs)
    return list(codecs[0].codecs) if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) else codecs


def encoding_problems(name: str, arr, spec: "DatasetArraySpec") -> list[str]:
    """How a contract-3.x array's stored encoding departs from its ArraySpec ([] = as specified):
    the codecs in its zarr.json and the encoding and bound in its attributes."""
    out = []
    attrs = dict(arr.attrs)
    if attrs.get("encoding") != spec.encoding:
        out.append(f"attribute encoding {attrs.get('encoding')!r}, contract says {spec.encoding!r}")
    if attrs.get("max_abs_error") != spec.max_abs_error:
        out.append(f"attribute max_abs_error {attrs.get('max_abs_error')!r}, contract says {spec.max_abs_error}")
    codecs = inner_codecs(arr)
    fixed = [c for c in codecs if isinstance(c, FixedPointCodec)]
    images = [c for c in codecs if isinstance(c, ImageCodec)]
    if spec.encoding == "fixed_point":
        if len(fixed) != 1 or fixed[0].scale != spec.scale:
            got = [c.scale for c in fixed]
            out.append(f"codecs {[c.to_dict()['name'] for c in codecs]} (fixed-point scales {got}), contract says "
                       f"one curator.fixed_point at scale {spec.scale}")
    elif fixed:
        out.append(f"fixed-point codec on an array the contract stores {spec.encoding}")
    if (spec.encoding == "image") != bool(images):
        out.append(f"codecs {[c.to_dict()['name'] for c in codecs]}, contract says encoding {spec.encoding!r}")
    return out


def register() -> None:
    """Make both codecs known to zarr-python in this process (the entry points do it for any
    process where the package is installed)."""
    from zarr.registry import register_codec

    register_codec(FIXED_POINT, FixedPointCodec)
    register_codec(IMAGE, ImageCodec)


register()
