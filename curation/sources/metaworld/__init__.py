"""The Meta-World simulator: scene, scripted rollouts with ground truth, worker processes."""
