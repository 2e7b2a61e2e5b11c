"""Benchmarks of the policy side (the loader's is cli/bench/loader.py): the
model (training steps/s per phase, latency of one action chunk incl. motion partial denoising)."""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import torch

from policy.config import LaMPConfig


def synthetic_batch(cfg: LaMPConfig, batch_size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    H, W = cfg.image_size
    K, T, C = cfg.motion_points, cfg.motion_horizon, cfg.chunk_size
    return {
        "image": torch.randint(0, 256, (batch_size, 3, H, W), generator=g, dtype=torch.uint8),
        "language": ["pick up the puck and place it at the goal"] * batch_size,
        "state": torch.randn(batch_size, cfg.state_dim, generator=g),
        "action": torch.randn(batch_size, C, cfg.action_dim, generator=g),
        "action_valid": torch.ones(batch_size, C, dtype=torch.bool),
        "motion": torch.randn(batch_size, K, T, cfg.motion_channels, generator=g),
        "motion_mask": torch.rand(batch_size, K, T, cfg.motion_channels, generator=g) > 0.2,
        "anchor_uv": torch.rand(batch_size, K, 2, generator=g) * 2 - 1,
    }


def bench_policy(cfg: Optional[LaMPConfig] = None, batch_size: int = 32, steps: int = 10, latency_reps: int = 10,
                 progress: bool = True) -> dict:
    """Training steps/s of both phases (wall clock, and the process CPU time per step, which is what
    a quiet machine would approach when others share the cores) (forward + backward + AdamW on a fixed batch: the model's cost,
    no data loading) and the latency of one action chunk for batch 1, partial denoising included."""
    from schemas.progress import progress_bar

    from policy.modeling_lamp import LaMPPolicy

    cfg = cfg or LaMPConfig()
    torch.manual_seed(0)
    policy = LaMPPolicy(cfg)
    batch = synthetic_batch(cfg, batch_size)
    rows = []
    bar = progress_bar(total=2 * (steps + 1) + latency_reps + 1, desc="bench policy", disable=not progress, leave=False)
    for phase in ("motion", "action"):
        policy.set_phase(phase)
        policy.train()
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        times, cpu = [], []
        for i in range(steps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            loss, _ = policy(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if i:  # the first step warms up allocators
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            bar.update(1)
        rows.append({"measure": f"train step, phase {phase}", "batch": batch_size, "seconds_median": float(np.median(times)),
                     "per_s": 1.0 / float(np.median(times)), "cpu_seconds_median": float(np.median(cpu)),
                     "trainable_params": sum(p.numel() for p in params)})
    policy.eval()
    obs = {k: v[:1] for k, v in batch.items() if k not in ("language",)}
    obs["language"] = batch["language"][:1]
    lat, lat_cpu = [], []
    with torch.no_grad():
        for i in range(latency_reps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            policy.predict_action_chunk(obs)
            if i:
                lat.append(time.perf_counter() - t0)
                lat_cpu.append(time.process_time() - c0)
            bar.update(1)
    bar.close()
    rows.append({"measure": f"action chunk latency (fusion {cfg.fusion}, {cfg.num_inference_steps} Euler steps)",
                 "batch": 1, "seconds_median": float(np.median(lat)), "per_s": 1.0 / float(np.median(lat)),
                 "cpu_seconds_median": float(np.median(lat_cpu)),
                 "trainable_params": None})
    return {"config": {"d_model": cfg.d_model, "image_size": list(cfg.image_size), "motion_points": cfg.motion_points,
                       "motion_horizon": cfg.motion_horizon, "fusion": cfg.fusion, "chunk_size": cfg.chunk_size},
            "parameters": policy.num_parameters(), "torch_threads": torch.get_num_threads(), "rows": rows}
