"""Sources: the Open-X RLDS reader and writer, the Open-X registry, the Meta-World simulator."""
