"""Sources (Open-X RLDS reader, Meta-World simulator), validation, curation and publishing."""
