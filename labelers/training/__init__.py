"""Training the labelers' learned models on simulator ground truth.

Kept apart from the labelers themselves: training reads ground truth (labelers/eval), the
labelers (labelers/tracking) must not, so that evaluation can measure them without a cycle.

Modules: track_refiner (the learned tracker's refiner, `curate tracker train`).
"""
