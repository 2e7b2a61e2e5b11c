"""The Open-X registry: per-dataset keys, encodings and quirks, and their standardisation."""
