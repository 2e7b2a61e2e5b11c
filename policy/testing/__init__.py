"""Test harness: synthetic triplet data for the policy."""
