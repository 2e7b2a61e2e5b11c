"""Configs are strict: a key that names no field is an error, never silently dropped (a typo
in a job, label or training config would otherwise run with the default). The one `from_dict`
rule of every config dataclass (job, labels, filters, dedup, latent model, policy)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, TypeVar

T = TypeVar("T")


def check_keys(cls: type, d: Optional[dict], what: str) -> dict[str, Any]:
    """A copy of `d` (None: empty) whose keys are all fields of dataclass `cls`; else ValueError
    naming `what` (e.g. "writer config keys"), the unknown keys and the known ones."""
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {unknown} (known: {sorted(known)})")
    return d


def strict_from_dict(cls: type[T], d: Optional[dict], what: str) -> T:
    """`cls(**d)` after check_keys."""
    return cls(**check_keys(cls, d, what))
