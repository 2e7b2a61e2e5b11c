"""Dense optical flow between frames t and t + gap, and its image encodings.

Backends (`get_flow_backend(name, **params)`), each a callable
`backend(frame0, frame1) -> flow_px` with frames H x W x 3 uint8 RGB and
flow_px H x W x 2 float32 (dx, dy) in pixels: the pixel at (x, y) in frame0
moves to (x + dx, y + dy) in frame1.

- "dis": OpenCV's DIS optical flow (Kroeger et al. 2016), the CPU default, at
  the "fine" preset (DIS_PRESETS: OpenCV's medium run to full resolution).
- "farneback": OpenCV's Farneback polynomial-expansion flow (no learning,
  weaker on large motion; kept as a second opinion).

Encodings
- `encode_motion_image` / `decode_motion_image`: the invertible fixed-scale
  encoding (LangToMo): per channel c = sign(f) * sqrt(|f| / s), s =
  MOTION_IMAGE_SCALE = 64 px, stored as uint8 q = 128 + round(127 c) so that
  zero flow is exactly 128. Channels: (c_u, c_v, (c_u + c_v) / 2). Flow is
  clipped to |f| <= s. The decode error per component is at most
  sqrt(|f| s) / 127 + s / (4 * 127^2) pixels (0.5 LSB of c through f = s c^2).
- `flow_to_color`: the Middlebury colour wheel (hue = direction, saturation =
  magnitude / max_radius) with a FIXED radius, for viewing.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from schemas.triplet import MOTION_IMAGE_SCALE

_Q = 127.0  # quantisation levels per sign of the encoded channel


class FlowBackend(Protocol):
    name: str

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray: ...


def to_gray(frame: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB (or H x W uint8) -> H x W uint8 luminance."""
    import cv2

    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _check_pair(frame0: np.ndarray, frame1: np.ndarray) -> None:
    if frame0.shape != frame1.shape:
        raise ValueError(f"optical flow needs frames of one size, got {frame0.shape} and {frame1.shape}")
    if frame0.dtype != np.uint8 or frame1.dtype != np.uint8:
        raise ValueError(f"optical flow needs uint8 frames, got {frame0.dtype} and {frame1.dtype}")
    if frame0.ndim not in (2, 3) or frame0.shape[0] < 2 or frame0.shape[1] < 2:
        raise ValueError(f"optical flow needs H x W (x 3) frames of at least 2 x 2 pixels, got {frame0.shape}")


# OpenCV's DIS presets by name (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST / _FAST / _MEDIUM; the ints
# keep cv2 out of module import).
_CV2_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
# The DIS setters a configuration may override: parameter name -> (cv2 setter suffix, type).
_DIS_SETTERS = {
    "finest_scale": ("FinestScale", int),
    "patch_size": ("PatchSize", int),
    "patch_stride": ("PatchStride", int),
    "gradient_descent_iterations": ("GradientDescentIterations", int),
    "variational_refinement_iterations": ("VariationalRefinementIterations", int),
    "variational_refinement_alpha": ("VariationalRefinementAlpha", float),
    "variational_refinement_delta": ("VariationalRefinementDelta", float),
    "variational_refinement_gamma": ("VariationalRefinementGamma", float),
    "use_mean_normalization": ("UseMeanNormalization", bool),
    "use_spatial_propagation": ("UseSpatialPropagation", bool),
}
# Named configurations: (OpenCV preset they start from, setter overrides). OpenCV's presets stop
# at a coarser pyramid level than the image (medium: finest scale 1, its flow upsampled from half
# resolution). "fine" runs medium down to full resolution (finest scale 0) with 20 variational-
# refinement iterations (medium: 5). Chosen with dev/dis_sweep.py on the choice tasks only
# (cli/bench/motion.CHOICE_TASKS, 128 px, 2 episodes each, anchors every 8 steps): EPE on moving
# pixels at gaps 1 / 4 / 8 of 0.361 / 0.859 / 1.964 px against medium's 0.455 / 1.056 / 2.282, the
# best of the configurations that improve every gap (patch 12 reached 0.334 at gap 1 but not gap
# 8); 19 ms per frame pair at 128 px on one core against medium's 2.8 (`curate bench labelers`).
# Held out it measures 0.299 / 0.918 / 2.022 px (medium 0.448 / 1.099 / 2.225; README).
DIS_PRESETS: dict[str, tuple[str, dict]] = {
    "ultrafast": ("ultrafast", {}),
    "fast": ("fast", {}),
    "medium": ("medium", {}),
    "fine": ("medium", {"finest_scale": 0, "variational_refinement_iterations": 20}),
}
DEFAULT_DIS_PRESET = "fine"


class DISFlow:
    """OpenCV DIS optical flow (cv2.DISOpticalFlow_create + setters).

    `preset`: a name of DIS_PRESETS (OpenCV's "ultrafast", "fast", "medium",
    or ours); every other argument (the keys of _DIS_SETTERS) overrides the
    preset's value when given. `upscale` > 1 runs DIS on frames resized by that
    factor (bilinear) and returns the flow averaged back to the input grid
    and divided by the factor.
    """

    name = "dis"
    loads_model = False  # labelers.backends.loads_model: building it loads no model

    def __init__(
        self,
        preset: str = DEFAULT_DIS_PRESET,
        upscale: int = 1,
        finest_scale: int | None = None,
        patch_size: int | None = None,
        patch_stride: int | None = None,
        gradient_descent_iterations: int | None = None,
        variational_refinement_iterations: int | None = None,
        variational_refinement_alpha: float | None = None,
        variational_refinement_delta: float | None = None,
        variational_refinement_gamma: float | None = None,
        use_mean_normalization: bool | None = None,
        use_spatial_propagation: bool | None = None,
    ):
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
        if int(upscale) != upscale or upscale < 1:
            raise ValueError(f"DIS upscale must be an integer >= 1, got {upscale}")
        given = dict(locals())
        overrides = {k: given[k] for k in _DIS_SETTERS if given[k] is not None}
        self.preset = preset
        self.upscale = int(upscale)
        base, preset_params = DIS_PRESETS[preset]
        self._cv2_preset = _CV2_PRESETS[base]
        # The parameters this instance sets on the cv2 object: the preset's, then the overrides.
        self.params = {**preset_params, **overrides}
        self._build()

    def _build(self) -> None:
        import cv2

        self._dis = cv2.DISOpticalFlow_create(self._cv2_preset)
        for key, value in self.params.items():
            setter, kind = _DIS_SETTERS[key]
            getattr(self._dis, f"set{setter}")(kind(value))

    def settings(self) -> dict:
        """Every DIS parameter as the cv2 object reports it (its getters), by our parameter name."""
        return {key: getattr(self._dis, f"get{setter}")() for key, (setter, _kind) in _DIS_SETTERS.items()}

    # OpenCV objects do not pickle; runners (Beam, Ray) ship labelers between processes.
    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_dis", None)
        state.pop("_shape", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build()

    def flow_gray(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        """The same flow from H x W uint8 grey frames (skips the colour conversion)."""
        # OpenCV's DIS instance keeps pyramid settings derived from earlier, smaller images
        # (seen with OpenCV 5.0: a 32 px pair changes later 64 px results), so a worker's
        # labels would depend on which episodes it saw before. One instance per frame size.
        if gray0.shape != getattr(self, "_shape", None):
            self._build()
            self._shape = gray0.shape
        if self.upscale == 1:
            return self._dis.calc(gray0, gray1, None)
        return self._upscaled_flow(gray0, gray1)

    def _upscaled_flow(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        """DIS on both frames resized by `upscale`; the (uH x uW x 2) flow is area-averaged back to
        H x W (pixel centres line up under cv2.resize) and divided by the factor."""
        import cv2

        H, W = gray0.shape
        size = (W * self.upscale, H * self.upscale)
        big0 = cv2.resize(gray0, size, interpolation=cv2.INTER_LINEAR)
        big1 = cv2.resize(gray1, size, interpolation=cv2.INTER_LINEAR)
        flow = self._dis.calc(big0, big1, None)
        return cv2.resize(flow, (W, H), interpolation=cv2.INTER_AREA) / np.float32(self.upscale)

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        _check_pair(frame0, frame1)
        return self.flow_gray(to_gray(frame0), to_gray(frame1))


class FarnebackFlow:
    """OpenCV Farneback flow with explicit parameters (defaults suit 128-256 px)."""

    name = "farneback"
    loads_model = False  # labelers.backends.loads_model: building it loads no model

    def __init__(
        self,
        pyr_scale: float = 0.5,
        levels: int = 4,
        winsize: int = 9,
        iterations: int = 3,
        poly_n: int = 5,
        poly_sigma: float = 1.1,
    ):
        self.params = dict(
            pyr_scale=float(pyr_scale),
            levels=int(levels),
            winsize=int(winsize),
            iterations=int(iterations),
            poly_n=int(poly_n),
            poly_sigma=float(poly_sigma),
            flags=0,
        )

    def flow_gray(self, gray0: np.ndarray, gray1: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.calcOpticalFlowFarneback(gray0, gray1, None, **self.params)

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        _check_pair(frame0, frame1)
        return self.flow_gray(to_gray(frame0), to_gray(frame1))


FLOW_BACKENDS: dict[str, Callable[..., FlowBackend]] = {"dis": DISFlow, "farneback": FarnebackFlow}


def flow_class(name: str) -> Callable[..., FlowBackend]:
    """The flow backend class registered under `name` (not built)."""
    try:
        return FLOW_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown flow backend {name!r}; choose one of {sorted(FLOW_BACKENDS)}") from None


def get_flow_backend(name: str, **params) -> FlowBackend:
    """The flow backend registered under `name`, built with `params`."""
    return flow_class(name)(**params)


# ---------------------------------------------------------------- encodings


def encode_motion_image(flow_px: np.ndarray, scale: float = MOTION_IMAGE_SCALE) -> np.ndarray:
    """H x W x 2 flow (pixels) -> H x W x 3 uint8 invertible motion image.

    NaN flow (unknown) encodes as zero motion (128); keep a separate mask for it.
    """
    flow = np.asarray(flow_px, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be H x W x 2, got {flow.shape}")
    flow = np.nan_to_num(flow, nan=0.0, posinf=scale, neginf=-scale)
    f = np.clip(flow / np.float32(scale), -1.0, 1.0)
    c = np.sign(f) * np.sqrt(np.abs(f))  # H W 2 in [-1, 1]
    c = np.concatenate([c, c.mean(axis=-1, keepdims=True)], axis=-1)
    return (np.rint(c * _Q) + 128.0).astype(np.uint8)


def decode_motion_image(image: np.ndarray, scale: float = MOTION_IMAGE_SCALE) -> np.ndarray:
    """Inverse of `encode_motion_image`: H x W x 3 uint8 -> H x W x 2 float32 flow (pixels).
    Uses the first two channels; the third (their mean) is redundant."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"motion image must be H x W x 3 uint8, got {img.shape} {img.dtype}")
    c = np.clip((img[..., :2].astype(np.float32) - 128.0) / _Q, -1.0, 1.0)
    return (np.sign(c) * c * c * np.float32(scale)).astype(np.float32)


def motion_image_error_bound(flow_px: np.ndarray, scale: float = MOTION_IMAGE_SCALE) -> np.ndarray:
    """Per-component bound on |decode(encode(f)) - f| for |f| <= scale (pixels)."""
    f = np.minimum(np.abs(np.asarray(flow_px, dtype=np.float64)), scale)
    return np.sqrt(f * scale) / _Q + scale / (4.0 * _Q * _Q)


def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel: 55 RGB hues (red, yellow, green, cyan, blue, magenta)."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for n, start, end in segments:
        t = np.arange(n, dtype=np.float64)[:, None] / n
        rows.append(np.asarray(start, np.float64) * (1 - t) + np.asarray(end, np.float64) * t)
    return np.concatenate(rows)  # 55 x 3


_WHEEL = _colour_wheel()


def flow_to_color(flow_px: np.ndarray, max_radius: float = 8.0) -> np.ndarray:
    """H x W x 2 flow -> H x W x 3 uint8 RGB (Middlebury colour coding).

    Hue is the direction, saturation the magnitude divided by the FIXED
    `max_radius` (pixels), so colours compare across images; magnitudes above
    it are drawn darker. NaN flow is black.
    """
    if max_radius <= 0:
        raise ValueError(f"max_radius must be > 0, got {max_radius}")
    flow = np.asarray(flow_px, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be H x W x 2, got {flow.shape}")
    unknown = ~np.isfinite(flow).all(axis=-1)
    u = np.where(unknown, 0.0, flow[..., 0]) / max_radius
    v = np.where(unknown, 0.0, flow[..., 1]) / max_radius
    rad = np.sqrt(u * u + v * v)
    angle = np.arctan2(-v, -u) / np.pi  # -1 .. 1
    k = (angle + 1.0) / 2.0 * (len(_WHEEL) - 1)
    k0 = np.floor(k).astype(np.int64)
    k1 = (k0 + 1) % len(_WHEEL)
    w = (k - k0)[..., None]
    col = ((1 - w) * _WHEEL[k0] + w * _WHEEL[k1]) / 255.0
    r = rad[..., None]
    inside = r <= 1.0
    col = np.where(inside, 1.0 - np.minimum(r, 1.0) * (1.0 - col), col * 0.75)
    out = np.floor(255.0 * col).astype(np.uint8)
    out[unknown] = 0
    return out
