"""Every `curate bench` target."""
