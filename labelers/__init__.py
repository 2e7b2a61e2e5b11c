"""Labelers: pure functions or model-holding callables from arrays to arrays (no file I/O)."""
