"""Tracker backends by name (`LabelConfig.tracker`): "lk", "flow", "cotracker"."""

from __future__ import annotations

from typing import Callable

from labelers.tracking.common import Tracker
from labelers.tracking.flow import FlowTracker
from labelers.tracking.lk import LKTracker


TRACKERS: dict[str, Callable[..., Tracker]] = {"lk": LKTracker, "flow": FlowTracker}


def get_tracker(name: str, **params) -> Tracker:
    """The tracker registered under `name` ("lk", "cotracker"), built with `params`."""
    if name == "cotracker":
        from labelers.tracking.cotracker import CoTrackerTracker

        return CoTrackerTracker(**params)
    try:
        factory = TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose one of {sorted([*TRACKERS, 'cotracker'])}") from None
    return factory(**params)
