"""One thread limit for the labelers' libraries (OpenCV's and torch's own thread pools).

One engine worker per core scales only if each worker's libraries keep to its share of the
machine instead of each spreading a thread pool over every core; benchmarks pin to one thread
to report per-core figures."""

from __future__ import annotations


def limit_threads(n: int) -> None:
    """OpenCV and torch each use at most `n` (>= 1) threads in this process."""
    import cv2
    import torch

    n = max(1, int(n))
    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
