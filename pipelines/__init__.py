"""The curation job: one stage graph run by local, Beam or Ray engines."""
