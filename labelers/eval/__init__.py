"""Ground truth from the simulator and the metrics that score labels against it."""
