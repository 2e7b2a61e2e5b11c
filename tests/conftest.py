"""Shared fixtures. The simulated dataset is made once per test session (small:
two tasks, short episodes) and reused by every test that needs ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
BRIDGE_DIR = REPO.parent / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"


@pytest.fixture(scope="session")
def bridge_dir() -> Path:
    """The real Open-X fixture (25 BridgeData episodes, 10 steps each)."""
    assert BRIDGE_DIR.is_dir(), f"shared Bridge episodes not found at {BRIDGE_DIR}"
    return BRIDGE_DIR


@pytest.fixture(scope="session")
def sim_dataset_dir(tmp_path_factory) -> Path:
    """A small simulated Meta-World dataset with ground truth, in Open-X RLDS format:
    pick-place-v3 and drawer-open-v3, 2 episodes each, 24 steps, 64 px."""
    from curation.sources.metaworld.rollout import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    return Path(
        simulate_dataset(
            root, tasks=["pick-place-v3", "drawer-open-v3"], episodes_per_task=2, size=64, max_steps=24, seed=0
        )
    )


@pytest.fixture(scope="session")
def curated_dir(tmp_path_factory, sim_dataset_dir) -> Path:
    """The simulated fixture curated by our pipeline (`curate run`, local runner, one episode a
    shard), made once: the trainer, loader and experiment tests read it and never write to it."""
    from cli.main import main

    out = tmp_path_factory.mktemp("curated") / "ds"
    assert main(["run", str(sim_dataset_dir), "--out", str(out), "--runner", "local", "--shard-episodes", "1",
                 "--no-progress"]) == 0
    return out


@pytest.fixture
def one_torch_thread():
    """The CI/dev machine is small and shared: one torch intra-op thread is several times faster here."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
