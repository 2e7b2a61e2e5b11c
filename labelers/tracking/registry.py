"""Tracker backends by name (`LabelConfig.tracker`): "lk", "flow", "learned", "cotracker"."""

from __future__ import annotations

from typing import Callable

from labelers.tracking.common import Tracker
from labelers.tracking.flow import FlowTracker
from labelers.tracking.lk import LKTracker


TRACKERS: dict[str, Callable[..., Tracker]] = {"lk": LKTracker, "flow": FlowTracker}


TRACKER_NAMES: list[str] = sorted([*TRACKERS, "cotracker", "learned"])  # these import torch: loaded on demand


def tracker_class(name: str) -> Callable[..., Tracker]:
    """The tracker class registered under `name` (not built)."""
    if name == "cotracker":
        from labelers.tracking.cotracker import CoTrackerTracker

        return CoTrackerTracker
    if name == "learned":
        from labelers.tracking.learned import LearnedTracker

        return LearnedTracker
    try:
        return TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose one of {TRACKER_NAMES}") from None


def built_class(name: str, params: dict) -> Callable[..., Tracker]:
    """The class get_tracker(name, **params) builds: "lk" in mode "chain" (the default) is
    labelers.tracking.lk_refined.RefinedLKTracker (LK plus a static-point test and re-solves
    against older frames); the plain LKTracker in other modes."""
    if name == "lk" and params.get("mode", "chain") == "chain":
        from labelers.tracking.lk_refined import RefinedLKTracker

        return RefinedLKTracker
    return tracker_class(name)


def get_tracker(name: str, **params) -> Tracker:
    """The tracker registered under `name` ("lk", "flow", "cotracker"), built with `params`."""
    return built_class(name, params)(**params)
