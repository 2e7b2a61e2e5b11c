"""Progress in a log file: whole lines, a few of them, not one redraw per update."""

from __future__ import annotations

import io
import os

from schemas.progress import LOG_INTERVAL_S, LineWriter, progress_bar


class _Clock:
    """tqdm's clock, advanced by hand: a fast loop that 'takes' a known time."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_log_file_gets_one_line_every_interval(monkeypatch):
    log = io.StringIO()  # not a terminal
    clock = _Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    monkeypatch.setattr("schemas.progress._clock", clock)
    bar = progress_bar(total=1700, desc="latent train", unit="step", file=log)
    for step in range(1700):  # 1,700 steps of 0.1 s each: 170 s
        clock.t += 0.1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=1.0 / (step + 1))  # a forced redraw, as the trainers do
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # the first line, one per LOG_INTERVAL_S of the 170 s, and the last
    assert 170 / LOG_INTERVAL_S - 1 <= len(lines) <= 170 / LOG_INTERVAL_S + 2
    assert lines[0].startswith("latent train:   0%") and lines[-1].startswith("latent train: 100%")
    assert "1700/1700" in lines[-1]


def test_a_terminal_keeps_the_live_bar():
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        bar = progress_bar(total=3, file=tty)
        assert not isinstance(bar.fp, LineWriter) and bar.mininterval == 0.1  # tqdm's own default
        bar.close()
    os.close(master)


def test_bars_that_leave_nothing_write_no_empty_lines():
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="stats", leave=False, file=log):
        pass
    assert all(line.strip() for line in log.getvalue().splitlines())
