"""The local engine: stages run one after another in this process (debugging, tests,
and the reference the Beam and Ray engines must match)."""

from __future__ import annotations

import traceback
from typing import Any, Callable, Iterable, Iterator


class Failure:
    """A work item whose stage raised: the dead-letter record of that item.
    `config_error`: the one-line message when the stage raised a ConfigError (the job's
    config cannot work, so every other item would fail the same way), else ''."""

    def __init__(self, error: str, config_error: str = ""):
        self.error = error
        self.config_error = config_error

    def to_record(self) -> dict:
        return {"error": self.error, "config_error": self.config_error}

    @classmethod
    def from_record(cls, d: dict) -> "Failure":
        return cls(d["error"], d["config_error"])

    def __repr__(self) -> str:
        return f"Failure({self.error.splitlines()[-1] if self.error else ''})"


def apply_or_fail(fn: Callable[[Any], Any], item: Any) -> Any:
    """fn(item), or a Failure carrying the traceback: the dead-letter pattern every
    engine uses, so one bad unit never fails the job."""
    from pipelines.config import ConfigError

    try:
        return fn(item)
    except Exception as exc:  # noqa: BLE001
        return Failure(traceback.format_exc()[-4000:], str(exc) if isinstance(exc, ConfigError) else "")


class LocalEngine:
    name = "local"

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self) -> "LocalEngine":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def labeler(self, cfg):
        return None  # ProcessUnit builds its own, once per process

    def parallelism(self) -> int:
        return 1

    def map_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, apply_or_fail(fn, item)

    def stats(self) -> dict:
        return {}
