"""Benchmarks of the policy side: the loader (triplets/s by worker count vs memory) and the
model (training steps/s per phase, latency of one action chunk incl. motion partial denoising)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from policy.config import LaMPConfig
from policy.loader import TripletStream, collate, make_loader

LAFP_BENCH_CODES = 8  # V of the `small` latent action model (labelers/latent/config.py) when no checkpoint is given


def bench_loader(ref: Any, cfg: Optional[LaMPConfig] = None, num_triplets: int = 256, batch_size: int = 16,
                 workers: tuple[int, ...] = (0, 1, 2), seed: int = 0, progress: bool = True) -> dict:
    """Triplets/s of TripletStream through a DataLoader with each worker count, and of the same
    transform + collate over the same triplets held in memory (raw arrays, already read)."""
    from schemas.progress import progress_bar

    from policy.train import config_for_data

    ds = ref if hasattr(ref, "iter_triplets") else None
    if ds is None:
        from curation import open_dataset

        ds = open_dataset(str(ref))
    cfg = config_for_data(ds, cfg or LaMPConfig())
    stream = TripletStream(ds if not isinstance(ref, str) else ref, cfg, seed=seed, shuffle_buffer=64, epochs=None)
    rows = []
    for nw in progress_bar(workers, desc="bench loader", unit="config", disable=not progress, leave=False):
        loader = make_loader(stream, batch_size, nw, seed=seed)
        it = iter(loader)
        # worker start-up, the first read and the batches already prefetched are not throughput
        for _ in range(1 + 4 * nw):
            next(it)
        n, t0 = 0, time.perf_counter()
        while n < num_triplets:
            n += len(next(it)["language"])
        dt = time.perf_counter() - t0
        del it, loader
        rows.append({"source": f"loader, {nw} workers", "workers": nw, "triplets": n, "seconds": dt, "triplets_per_s": n / dt})
    # memory baseline: the same triplets, already read, through the same transform + collate
    raw = []
    for tr in ds.iter_triplets(shards=stream.shards):
        raw.append(tr)
        if len(raw) >= num_triplets:
            break
    t0, n = time.perf_counter(), 0
    while n < num_triplets:
        for i in range(0, len(raw), batch_size):
            collate([stream.transform(tr) for tr in raw[i : i + batch_size]])
            n += len(raw[i : i + batch_size])
            if n >= num_triplets:
                break
    dt = time.perf_counter() - t0
    mem = n / dt
    rows.append({"source": "memory (same arrays)", "workers": 0, "triplets": n, "seconds": dt, "triplets_per_s": mem})
    for r in rows:
        r["ratio_vs_memory"] = r["triplets_per_s"] / mem
    return {"dataset": getattr(stream, "version", "?"), "batch_size": batch_size, "image_size": list(cfg.image_size),
            "rows": rows}


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
        **variant_fields(cfg, batch_size, g),
    }


def variant_fields(cfg: LaMPConfig, batch_size: int, g: torch.Generator) -> dict:
    """The extra batch entries of cfg.variant (drawn after the base entries, which stay as they are)."""
    if cfg.variant == "motion_image":
        G = cfg.motion_image_grid
        return {"motion_image": torch.randn(batch_size, G, G, 2, generator=g),
                "motion_image_valid": torch.ones(batch_size, G, G, 2, dtype=torch.bool)}
    if cfg.variant == "action_prior":
        return {"past_actions": torch.randn(batch_size, cfg.prior_history, cfg.action_dim, generator=g),
                "past_actions_valid": torch.ones(batch_size, cfg.prior_history, dtype=torch.bool)}
    if cfg.variant == "lafp":  # latent tokens B L, 1 in 8 anchors invalid (no frame t + gap)
        tokens = torch.randint(0, cfg.latent_codes, (batch_size, cfg.latent_tokens), generator=g)
        valid = torch.arange(batch_size) % 8 != 7
        return {"latent_tokens": torch.where(valid[:, None], tokens, -1), "latent_valid": valid}
    return {}


def variant_config(cfg: LaMPConfig, variant: str) -> LaMPConfig:
    """cfg for `variant`. lafp conditions on latents, not motion (fusion none), and needs a codebook:
    cfg's (`--latent-checkpoint`) or unit vectors of the configured size (the values cost nothing)."""
    if variant != "lafp":
        return dataclasses.replace(cfg, variant=variant)
    codebook = cfg.latent_codebook or torch.nn.functional.normalize(
        torch.randn(LAFP_BENCH_CODES, cfg.latent_dim, generator=torch.Generator().manual_seed(0)), dim=-1).tolist()
    return dataclasses.replace(cfg, variant=variant, fusion="none", latent_codebook=codebook)


def _step_times(policy, batch: dict, phase: str, steps: int, bar) -> dict:
    """Median wall and CPU seconds of one forward + backward + AdamW step of `phase` on `batch`."""
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
    return {"seconds_median": float(np.median(times)), "per_s": 1.0 / float(np.median(times)),
            "cpu_seconds_median": float(np.median(cpu)), "trainable_params": sum(p.numel() for p in params)}


def _chunk_latency(policy, batch: dict, reps: int, bar) -> dict:
    """Median wall and CPU seconds of one action chunk for batch 1 (what acting runs, nothing else)."""
    policy.eval()
    obs = {k: v[:1] for k, v in batch.items() if k != "language"}
    obs["language"] = batch["language"][:1]
    lat, lat_cpu = [], []
    with torch.no_grad():
        for i in range(reps + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            policy.predict_action_chunk(obs)
            if i:
                lat.append(time.perf_counter() - t0)
                lat_cpu.append(time.process_time() - c0)
            bar.update(1)
    return {"seconds_median": float(np.median(lat)), "per_s": 1.0 / float(np.median(lat)),
            "cpu_seconds_median": float(np.median(lat_cpu)), "trainable_params": None}


def variant_phases(policy) -> tuple[str, ...]:
    """The phases a variant trains: the base's two for lamp; stage 2 and its own phases otherwise
    (a variant's motion phase is lamp's)."""
    return ("motion", "action") if policy.extra is None else (*policy.extra.phases, "action")


def bench_policy(cfg: Optional[LaMPConfig] = None, batch_size: int = 32, steps: int = 10, latency_reps: int = 10,
                 progress: bool = True, variants: Optional[Sequence[str]] = None) -> dict:
    """Per variant (default: cfg's): training steps/s of each phase it trains (wall clock, and the
    process CPU time per step, which is what a quiet machine would approach when others share the
    cores; forward + backward + AdamW on a fixed batch: the model's cost, no data loading) and the
    latency of one action chunk for batch 1, partial denoising included."""
    from schemas.progress import progress_bar

    from policy.modeling_lamp import LaMPPolicy

    cfg = cfg or LaMPConfig()
    rows, parameters = [], {}
    bar = progress_bar(desc="bench policy", disable=not progress, leave=False)
    for variant in variants or [cfg.variant]:
        vcfg = variant_config(cfg, variant)
        torch.manual_seed(0)
        policy = LaMPPolicy(vcfg)
        parameters[variant] = policy.num_parameters()
        batch = synthetic_batch(vcfg, batch_size)
        for phase in variant_phases(policy):
            rows.append({"variant": variant, "measure": f"train step, phase {phase}", "batch": batch_size,
                         **_step_times(policy, batch, phase, steps, bar)})
        euler = f"{vcfg.num_inference_steps} Euler steps" + (f" + {vcfg.latent_inference_steps} latent" if variant == "lafp" else "")
        rows.append({"variant": variant, "measure": f"action chunk latency (fusion {vcfg.fusion}, {euler})",
                     "batch": 1, **_chunk_latency(policy, batch, latency_reps, bar)})
    bar.close()
    return {"config": {"d_model": cfg.d_model, "image_size": list(cfg.image_size), "motion_points": cfg.motion_points,
                       "motion_horizon": cfg.motion_horizon, "fusion": cfg.fusion, "chunk_size": cfg.chunk_size},
            "parameters": parameters[(variants or [cfg.variant])[0]], "parameters_per_variant": parameters,
            "torch_threads": torch.get_num_threads(), "rows": rows}
