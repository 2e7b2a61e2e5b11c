"""Progress bars that suit where they are written: `progress_bar(...)` takes tqdm's arguments.

On a terminal it is tqdm's bar, redrawn in place. Anywhere else (a log file, a CI log, a
pipe) an in-place redraw is a new record per update: a training loop of 1,700 steps
wrote 1,700 of them. There the bar is printed as whole lines, at most one every
LOG_INTERVAL_S seconds, the first and the last included.

It lives with the contract because every layer (labelers, curation, pipelines, policy)
draws progress and this package is the one they all may import; it imports only tqdm.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Optional, TextIO

# A batch log gets a line every 10 s: a 10-minute job writes about 60 lines, enough to see
# the rate and the time left without the log being mostly progress.
LOG_INTERVAL_S = 10.0


_clock = time.monotonic  # seconds; tests advance their own


class LineWriter:
    """A file for tqdm that turns its redraws ("\\r" + bar + padding) into whole lines, at
    most one every LOG_INTERVAL_S seconds (tqdm also redraws on every `set_postfix`). The
    bar's last state is written when tqdm closes it (its closing "\\n")."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._last_t: Optional[float] = None
        self._pending = ""

    @property
    def encoding(self) -> Optional[str]:  # tqdm picks its bar characters from it
        return getattr(self.stream, "encoding", None)

    def write(self, text: str) -> None:
        if text == "\n":  # tqdm closing a bar it leaves: its final state
            self._emit(self._pending)
            return
        line = text.replace("\r", "").strip()
        if not line:
            return
        if self._last_t is None or _clock() - self._last_t >= LOG_INTERVAL_S:
            self._emit(line)
        else:
            self._pending = line

    def _emit(self, line: str) -> None:
        if line:
            self.stream.write(line + "\n")
            self._last_t = _clock()
        self._pending = ""

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Optional[Iterable] = None, **kwargs: Any):
    """tqdm(iterable, **kwargs) on stderr (or kwargs["file"]): a live bar on a terminal,
    a line every LOG_INTERVAL_S seconds elsewhere."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs["dynamic_ncols"] = False  # no terminal to measure
    return tqdm(iterable, file=LineWriter(stream), **kwargs)
