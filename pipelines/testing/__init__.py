"""Test harness: a local multi-node Ray cluster with fault injection."""
