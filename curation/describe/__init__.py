"""Description of a dataset: training statistics and the dataset card."""
