"""Per-episode curation filters: decide whether an episode is kept, and why not.

Each filter is a small pure function `(episode, labels, cfg) -> bool` (True =
the episode trips it) registered under a stable reason name. The job calls
`apply_filters` twice: before labeling with `labels=None` (only the cheap
filters that need no labels run, and "static" falls back to frame
differences), and after labeling with the labels (track-based filters run).

Reason names (stable; they appear in filtered.parquet, job summaries, cards):

    too_short       fewer than `min_steps` steps
    static          nothing moves: with labels, the `static_quantile` quantile of
                    the per-point track displacement (pixels, visible and in
                    range) stays below `static_motion_px` at every anchor;
                    without labels, fewer than `static_changed_fraction` of the
                    primary camera's pixels change by more than
                    `static_pixel_delta` grey levels between any frame and the first
    no_language     missing or blank instruction; with `drop_uninformative_language`
                    also a dataset's known placeholder language (kuka's "pick
                    anything": Episode.language_informative False), which is
                    otherwise kept (motion labels need no informative language)
                    and flagged in the manifest's language_informative column
    low_visibility  mean track visibility over in-range steps < `min_track_visibility`
    bad_actions     NaN/inf actions, or |action| > `max_abs_action` in any dimension
    blank_camera    the primary camera is blank (declared blank by the reader, or
                    at least `blank_frame_fraction` of its frames are flat)

Every threshold is a field of FilterConfig; a filter is switched off by naming
it in `disabled` (or by its own off-value documented at the field).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from schemas.config import check_keys
from schemas.episode import Episode
from schemas.triplet import EpisodeLabels

REASONS = ("too_short", "static", "no_language", "low_visibility", "bad_actions", "blank_camera")


@dataclass
class FilterConfig:
    """Thresholds of every filter. `disabled` names filters that are off."""

    min_steps: int = 8  # too_short: episodes with fewer steps are dropped
    static_motion_px: float = 1.0  # static (labels): displacement below this many pixels = no motion
    static_quantile: float = 0.95  # static (labels): which quantile of per-point displacement counts
    static_pixel_delta: float = 12.0  # static (no labels): grey-level change that counts as a change (above JPEG noise)
    static_changed_fraction: float = 0.002  # static (no labels): share of pixels that must change at some frame
    require_language: bool = True  # no_language: False switches it off
    drop_uninformative_language: bool = False  # no_language: True also drops placeholder language
    min_track_visibility: float = 0.2  # low_visibility: mean visibility of in-range track steps
    max_abs_action: Optional[float] = 1.0e3  # bad_actions: bound on |a|; None checks only NaN/inf
    blank_std: float = 2.0  # blank_camera: a frame whose pixel std is below this is flat
    blank_frame_fraction: float = 0.5  # blank_camera: share of flat frames that makes the camera blank
    disabled: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.disabled) - set(REASONS))
        if unknown:
            raise ValueError(f"unknown filter(s) in disabled: {unknown}; known: {list(REASONS)}")
        self.disabled = tuple(self.disabled)

    def enabled(self, reason: str) -> bool:
        return reason not in self.disabled

    def to_dict(self) -> dict:
        d = asdict(self)
        d["disabled"] = list(self.disabled)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "FilterConfig":
        d = check_keys(cls, d, "filter option(s)")
        if "disabled" in d:
            d["disabled"] = tuple(d["disabled"] or ())
        return cls(**d)


# --- the filters: (episode, labels, cfg) -> True when the episode must be dropped ---


def too_short(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    return ep.num_steps < cfg.min_steps


def no_language(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    if not cfg.require_language:
        return False
    if not (ep.language or "").strip():
        return True
    return cfg.drop_uninformative_language and not ep.language_informative


def bad_actions(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    a = np.asarray(ep.actions)
    if a.size == 0:
        return False  # too_short reports empty episodes
    if not np.all(np.isfinite(a)):
        return True
    return cfg.max_abs_action is not None and float(np.abs(a).max()) > cfg.max_abs_action


MAX_FRAMES_EXAMINED = 64  # frame-based filters look at most at this many evenly spaced frames


def _sample_steps(T: int) -> np.ndarray:
    """At most MAX_FRAMES_EXAMINED evenly spaced steps, always the first and last:
    bounded cost and memory for long, high-resolution episodes."""
    if T <= MAX_FRAMES_EXAMINED:
        return np.arange(T)
    return np.unique(np.linspace(0, T - 1, MAX_FRAMES_EXAMINED).round().astype(int))


def _flat_frame_share(frames: np.ndarray, blank_std: float) -> float:
    # T H W 3 uint8 -> share of (sampled) frames whose pixel std is below blank_std
    steps = _sample_steps(frames.shape[0])
    flat = [float(frames[t].std()) < blank_std for t in steps]  # one frame at a time: no T x H x W float copy
    return float(np.mean(flat))


def blank_camera(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    if ep.primary_camera in ep.blank_cameras:
        return True
    frames = ep.frames.get(ep.primary_camera)
    if frames is None or frames.size == 0:
        return True
    return _flat_frame_share(frames, cfg.blank_std) >= cfg.blank_frame_fraction


def track_displacement_px(labels: EpisodeLabels) -> np.ndarray:
    """Per anchor and point, the largest displacement (pixels) from the query
    position over the visible, in-range steps: N K float32, NaN where the point
    is never visible after its query step."""
    tracks = labels.tracks_px  # N K T 2
    ok = labels.visible & labels.in_range[:, None, :]  # N K T
    disp = np.linalg.norm(tracks - tracks[:, :, :1, :], axis=-1)  # N K T
    disp = np.where(ok & np.isfinite(disp), disp, -np.inf)
    best = disp.max(axis=-1)
    return np.where(np.isfinite(best), best, np.nan).astype(np.float32)


def motion_px(labels: EpisodeLabels, quantile: float = 0.95) -> float:
    """The episode's motion figure: the largest, over anchors, of the `quantile`
    quantile of per-point displacement (pixels). 0.0 when nothing is tracked."""
    disp = track_displacement_px(labels)
    per_anchor = [np.quantile(d[np.isfinite(d)], quantile) for d in disp if np.isfinite(d).any()]
    return float(max(per_anchor)) if per_anchor else 0.0


def changed_pixel_share(frames: np.ndarray, pixel_delta: float) -> float:
    """Largest share, over (sampled) frames, of pixels differing from the first
    frame by more than `pixel_delta` grey levels (any channel)."""
    if frames.shape[0] < 2:
        return 0.0
    first = frames[0].astype(np.int16)
    best = 0.0
    for t in _sample_steps(frames.shape[0])[1:]:  # frame by frame: no T x H x W x 3 int16 copy
        diff = np.abs(frames[t].astype(np.int16) - first).max(axis=-1)
        best = max(best, float((diff > pixel_delta).mean()))
    return best


def static(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    if labels is not None and labels.num_anchors > 0:
        return motion_px(labels, cfg.static_quantile) < cfg.static_motion_px
    frames = ep.frames.get(ep.primary_camera)
    if frames is None or frames.shape[0] < 2:
        return False  # nothing to compare; too_short / blank_camera speak for it
    return changed_pixel_share(frames, cfg.static_pixel_delta) < cfg.static_changed_fraction


def low_visibility(ep: Episode, labels: EpisodeLabels | None, cfg: FilterConfig) -> bool:
    if labels is None or labels.num_anchors == 0:
        return False
    return mean_visibility(labels) < cfg.min_track_visibility


def mean_visibility(labels: EpisodeLabels) -> float:
    """Mean of `visible` over in-range steps (all anchors and points)."""
    in_range = np.broadcast_to(labels.in_range[:, None, :], labels.visible.shape)
    n = int(in_range.sum())
    return float(labels.visible[in_range].sum() / n) if n else 0.0


# name -> (filter, needs labels). Order = the order reasons are reported in.
FILTERS: dict[str, tuple[Callable[[Episode, Optional[EpisodeLabels], FilterConfig], bool], bool]] = {
    "too_short": (too_short, False),
    "blank_camera": (blank_camera, False),
    "bad_actions": (bad_actions, False),
    "no_language": (no_language, False),
    "static": (static, False),  # frame differences without labels, tracks with them
    "low_visibility": (low_visibility, True),
}
assert set(FILTERS) == set(REASONS)


def apply_filters(episode: Episode, labels: EpisodeLabels | None, cfg: FilterConfig | None = None) -> list[str]:
    """The reasons `episode` is dropped, in FILTERS order; [] keeps it.

    With labels=None only the filters that need no labels run (the job's
    pre-labeling pass); with labels every enabled filter runs."""
    cfg = cfg or FilterConfig()
    reasons = []
    for name, (fn, needs_labels) in FILTERS.items():
        if not cfg.enabled(name) or (needs_labels and labels is None):
            continue
        if fn(episode, labels, cfg):
            reasons.append(name)
    return reasons
