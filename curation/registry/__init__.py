"""Versions: immutable, checksummed published datasets on any fsspec URL."""
