"""Per-frame metric depth for one camera.

The backend interface (`get_depth_backend(name, **params)`):

    backend(frames, metric_depth_m=None) -> DepthResult

    frames          T x H x W x 3 uint8 RGB
    metric_depth_m  T x H x W float32 metres or None: whatever metric depth the
                    episode offers (a dataset depth channel, possibly sparse:
                    NaN where unknown). It is the output of the "dataset"
                    backend and the anchor of the "depth-anything" fit.

    DepthResult.depth_m  T x H x W float32 metres along the optical axis, NaN
                         where unknown; None when no metric depth can be had
    DepthResult.kind     "metric"       the dataset's own (sensor / simulator) depth
                         "fitted"       a relative model fitted to metric anchors
                         "metric-model" a metric depth model's output, unfitted
                         "missing"      nothing metric: 3D labels must be marked missing

Backends
- "dataset": the episode's depth channel, cleaned: NaN, inf, zero, negative
  and values beyond `max_depth_m` become NaN (counted in `info`).
- "depth-anything": Depth Anything (V1/V2) through transformers, from a hub
  id or a local directory. Frames are resized as the original model expects:
  aspect kept, the SHORT side to `input_size` (518), both sides rounded up to a
  multiple of 14, bicubic; ImageNet normalisation from the checkpoint's image
  processor; prediction resized back bilinearly. A relative model predicts
  disparity up to an unknown scale a and shift b: metric depth = 1 / (a * pred
  + b), with (a, b) fitted by least squares in disparity space against the
  metric anchors (`fit="episode"`: one (a, b) for the whole clip, temporally
  consistent; `fit="frame"`: one per frame with enough anchors). A metric
  model (config depth_estimation_type == "metric", or `metric=True`) is used
  directly. A relative model with no anchors gives kind "missing".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np


@dataclass
class DepthResult:
    depth_m: Optional[np.ndarray]  # T H W float32 metres, NaN unknown; None when missing
    kind: str  # "metric" | "fitted" | "metric-model" | "missing"
    backend: str
    info: dict = field(default_factory=dict)

    @property
    def valid(self) -> Optional[np.ndarray]:
        """T H W bool: finite positive depth."""
        if self.depth_m is None:
            return None
        with np.errstate(invalid="ignore"):
            return np.isfinite(self.depth_m) & (self.depth_m > 0)


class DepthBackend(Protocol):
    name: str

    def __call__(self, frames: np.ndarray, metric_depth_m: Optional[np.ndarray] = None) -> DepthResult: ...


def clean_depth(depth_m: np.ndarray, max_depth_m: float = np.inf) -> tuple[np.ndarray, int]:
    """Copy of a depth array with every non-finite, non-positive or too-far value set
    to NaN; returns (cleaned float32, number of values masked that were not NaN already)."""
    d = np.array(depth_m, dtype=np.float32, copy=True)
    was_nan = np.isnan(d)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(d) | (d <= 0) | (d > max_depth_m)
    d[bad] = np.nan
    return d, int((bad & ~was_nan).sum())


class DatasetDepth:
    """The episode's own metric depth (already metres in Episode.depth_m)."""

    name = "dataset"
    loads_model = False  # labelers.backends.loads_model: building it loads no model

    def __init__(self, max_depth_m: float = np.inf):
        self.max_depth_m = float(max_depth_m)

    def __call__(self, frames: np.ndarray, metric_depth_m: Optional[np.ndarray] = None) -> DepthResult:
        if metric_depth_m is None:
            return DepthResult(None, "missing", self.name, {"reason": "the episode has no depth channel"})
        d = np.asarray(metric_depth_m)
        if d.ndim != 3 or d.shape != frames.shape[:3]:
            raise ValueError(f"depth shape {d.shape} does not match frames {frames.shape[:3]} (T x H x W)")
        cleaned, masked = clean_depth(d, self.max_depth_m)
        valid = np.isfinite(cleaned)
        if not valid.any():
            return DepthResult(None, "missing", self.name, {"reason": "the depth channel has no valid value", "masked": masked})
        return DepthResult(cleaned, "metric", self.name, {"masked_invalid": masked, "valid_share": float(valid.mean())})


# ---------------------------------------------------------------- scale-and-shift fit


def fit_scale_shift_disparity(
    pred: np.ndarray, depth_m: np.ndarray, min_points: int = 16, robust_iters: int = 2, outlier_mads: float = 4.0
) -> Optional[tuple[float, float]]:
    """Least-squares (a, b) with a * pred + b ~= 1 / depth over the pixels where both are finite
    and depth > 0. Returns None when fewer than `min_points` anchors or a degenerate fit
    (constant prediction, or a <= 0: disparity must grow with the prediction).

    Sensor depth has gross outliers (flying pixels, multipath); after the first fit, up to
    `robust_iters` refits drop anchors whose disparity residual exceeds `outlier_mads`
    robust standard deviations (1.4826 MAD). Exact data is unaffected."""
    p = np.asarray(pred, np.float64).ravel()
    d = np.asarray(depth_m, np.float64).ravel()
    with np.errstate(invalid="ignore"):
        m = np.isfinite(p) & np.isfinite(d) & (d > 0)
    if m.sum() < min_points:
        return None
    x, y = p[m], 1.0 / d[m]
    if np.ptp(x) <= 1e-12:
        return None
    keep = np.ones(x.size, bool)
    for it in range(robust_iters + 1):
        A = np.stack([x[keep], np.ones(int(keep.sum()))], 1)
        (a, b), *_ = np.linalg.lstsq(A, y[keep], rcond=None)
        if it == robust_iters:
            break
        r = y - (a * x + b)
        scale = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        new_keep = np.abs(r) <= max(outlier_mads * scale, 1e-12 * (np.abs(y).max() + 1e-12))
        if new_keep.sum() < min_points or np.array_equal(new_keep, keep) or np.ptp(x[new_keep]) <= 1e-12:
            break
        keep = new_keep
    if not np.isfinite(a) or not np.isfinite(b) or a <= 0:
        return None
    return float(a), float(b)


def disparity_to_depth(pred: np.ndarray, a: float, b: float) -> np.ndarray:
    """1 / (a * pred + b); NaN where the fitted disparity is not positive."""
    disp = a * np.asarray(pred, np.float64) + b
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(disp > 1e-9, 1.0 / disp, np.nan)
    return out.astype(np.float32)


def resize_shape_short_side(height: int, width: int, short_side: int = 518, multiple: int = 14) -> tuple[int, int]:
    """(h, w) with the short side scaled to at least `short_side`, aspect kept, each side
    rounded up to a multiple of `multiple` (the original Depth Anything 'lower_bound' resize)."""
    scale = short_side / min(height, width)
    h = int(np.ceil(round(height * scale, 6) / multiple) * multiple)
    w = int(np.ceil(round(width * scale, 6) / multiple) * multiple)
    return max(h, multiple), max(w, multiple)


class DepthAnythingDepth:
    """Depth Anything via transformers. `model`: hub id or local directory.

    Parameters: device ("cpu"), batch_size (8), input_size (518, short side),
    metric (None: read from the model config), fit ("episode" or "frame"),
    min_anchor_points (16), max_depth_m (clip of the output; None = model's own).
    `model_obj` / `processor_obj` inject an already-built model (tests, reuse).
    """

    name = "depth-anything"
    loads_model = True  # building it loads the network: config checks read its signature instead

    def __init__(
        self,
        model: str = "depth-anything/Depth-Anything-V2-Small-hf",
        device: str = "cpu",
        batch_size: int = 8,
        input_size: int = 518,
        metric: Optional[bool] = None,
        fit: str = "episode",
        min_anchor_points: int = 16,
        max_depth_m: Optional[float] = None,
        model_obj=None,
        processor_obj=None,
    ):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        if fit not in ("episode", "frame"):
            raise ValueError(f"fit must be 'episode' or 'frame', got {fit!r}")
        self.model_id = str(model)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.input_size = int(input_size)
        self.fit = fit
        self.min_anchor_points = int(min_anchor_points)
        try:
            self.model = model_obj if model_obj is not None else AutoModelForDepthEstimation.from_pretrained(self.model_id)
            processor = processor_obj if processor_obj is not None else AutoImageProcessor.from_pretrained(self.model_id)
        except OSError as e:
            raise ValueError(
                f"cannot load Depth Anything from {self.model_id!r} (a hub id needs network or a cached copy; "
                f"give a local directory made with save_pretrained): {e}"
            ) from e
        self.model.to(self.device).eval()
        self.mean = np.asarray(getattr(processor, "image_mean", [0.485, 0.456, 0.406]), np.float32)
        self.std = np.asarray(getattr(processor, "image_std", [0.229, 0.224, 0.225]), np.float32)
        cfg = self.model.config
        self.metric = bool(metric) if metric is not None else getattr(cfg, "depth_estimation_type", "relative") == "metric"
        self.max_depth_m = max_depth_m if max_depth_m is not None else (getattr(cfg, "max_depth", None) if self.metric else None)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Raw model output resized to the frames: T x H x W float32 (disparity-like for a
        relative model, metres for a metric one)."""
        import cv2
        import torch
        import torch.nn.functional as F

        T, H, W = frames.shape[:3]
        h, w = resize_shape_short_side(H, W, self.input_size)
        out = np.empty((T, H, W), np.float32)
        for s in range(0, T, self.batch_size):
            batch = frames[s : s + self.batch_size]
            x = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in batch]).astype(np.float32) / 255.0
            x = (x - self.mean) / self.std
            pix = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(self.device)  # B 3 h w
            with torch.no_grad():
                pred = self.model(pixel_values=pix).predicted_depth  # B h' w'
            pred = F.interpolate(pred[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0]
            out[s : s + len(batch)] = pred.cpu().numpy()
        return out

    def __call__(self, frames: np.ndarray, metric_depth_m: Optional[np.ndarray] = None) -> DepthResult:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be T x H x W x 3 uint8, got {frames.shape} {frames.dtype}")
        pred = self.predict(frames)
        info: dict = {"model": self.model_id}
        if self.metric:
            d, masked = clean_depth(pred, self.max_depth_m if self.max_depth_m else np.inf)
            info["masked_invalid"] = masked
            return DepthResult(d, "metric-model", self.name, info)
        anchors = None
        if metric_depth_m is not None:
            anchors, _ = clean_depth(metric_depth_m)
            if anchors.shape != pred.shape:
                raise ValueError(f"anchor depth {anchors.shape} does not match frames {pred.shape}")
        if anchors is None or np.isfinite(anchors).sum() < self.min_anchor_points:
            info["reason"] = "relative model and no metric anchors to fit scale and shift"
            return DepthResult(None, "missing", self.name, info)
        depth = np.full(pred.shape, np.nan, np.float32)
        if self.fit == "episode":
            ab = fit_scale_shift_disparity(pred, anchors, self.min_anchor_points)
            if ab is None:
                info["reason"] = "scale-and-shift fit failed (degenerate prediction or anchors)"
                return DepthResult(None, "missing", self.name, info)
            depth = disparity_to_depth(pred, *ab)
            info["scale_shift"] = [list(ab)]
        else:
            fits = []
            for t in range(pred.shape[0]):
                ab = fit_scale_shift_disparity(pred[t], anchors[t], self.min_anchor_points)
                fits.append(ab)
                if ab is not None:
                    depth[t] = disparity_to_depth(pred[t], *ab)
            info["scale_shift"] = [list(ab) if ab else None for ab in fits]
            if all(ab is None for ab in fits):
                info["reason"] = "no frame had enough anchors for a fit"
                return DepthResult(None, "missing", self.name, info)
        if self.max_depth_m:
            depth[depth > self.max_depth_m] = np.nan
        return DepthResult(depth, "fitted", self.name, info)


DEPTH_BACKENDS: dict[str, Callable[..., DepthBackend]] = {"dataset": DatasetDepth, "depth-anything": DepthAnythingDepth}


def depth_class(name: str) -> Callable[..., DepthBackend]:
    """The depth backend class registered under `name` (not built)."""
    try:
        return DEPTH_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown depth backend {name!r}; choose one of {sorted(DEPTH_BACKENDS)}") from None


def get_depth_backend(name: str, **params) -> DepthBackend:
    """The depth backend registered under `name` ("dataset", "depth-anything")."""
    return depth_class(name)(**params)
