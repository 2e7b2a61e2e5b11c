"""Two-phase training of the dual-expert policy.

    phase motion:  VL encoder + Motion Expert          (stage 1, LaMP's motion pre-training)
    phase action:  fusion block + Action Expert (+ VL)  (stage 2; Motion Expert frozen, --init from stage 1)

AdamW, linear warmup then cosine decay, gradient clipping, tqdm with loss and steps/s,
metrics as JSON lines (OUT/metrics.jsonl), checkpoints OUT/checkpoints/step-NNNNNNN/:
  model.safetensors      weights (+ metadata: config, train config, dataset version, step)
  optimizer.safetensors  AdamW moments and step counts, flattened
  state.json             configs, dataset version, step, RNG states (torch global, flow-matching generator)
OUT/checkpoints/LAST names the newest. Training again into the same OUT resumes from it; the
data stream is rebuilt for the same seed and the batches already seen are skipped, so a resumed
run equals an uninterrupted one (tested, single process).

Distributed: under torchrun (torch.distributed initialised) the model is wrapped in
DistributedDataParallel, each rank streams its own share of the shards (policy.loader) with its own
flow-matching noise, and rank 0 alone writes metrics and checkpoints. A resumed multi-rank run restores
rank 0's noise generator on every rank, so it is not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch

from policy.config import ACTION_FREE_PHASES, STAGE2_FIELDS, VARIANT_FIELDS, LaMPConfig, TrainConfig, config_to_dict, policy_config_from_dict, train_config_from_dict
from policy.loader import TripletStream, dist_rank_world, make_loader
from policy.modeling_lamp import LaMPPolicy
from schemas import checkpoint as layout

log = logging.getLogger(__name__)

# OUT/checkpoints/step-NNNNNNN/ directories with a LAST pointer (schemas.checkpoint).
STEPS = layout.StepLayout(digits=7)


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to tc.lr over warmup_steps, then cosine to lr * min_lr_ratio at tc.steps."""
    return layout.warmup_cosine_lr(step, tc.lr, tc.warmup_steps, tc.steps, tc.min_lr_ratio)


# ----------------------------------------------------------------------------- checkpoints
def _rng_b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _rng_from_b64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def save_checkpoint(out: Path, policy: LaMPPolicy, tc: TrainConfig, step: int, dataset_version: str,
                    optimizer: Optional[torch.optim.Optimizer] = None, generator: Optional[torch.Generator] = None) -> Path:
    d = STEPS.path(out, step)
    meta = {"policy_config": json.dumps(config_to_dict(policy.config)), "train_config": json.dumps(config_to_dict(tc)),
            "dataset_version": dataset_version, "step": str(step), "phase": tc.phase}
    state = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    layout.save_safetensors(state, d / "model.safetensors", metadata=meta)
    extra: dict[str, Any] = {"policy_config": config_to_dict(policy.config), "train_config": config_to_dict(tc),
                             "dataset_version": dataset_version, "step": step, "phase": tc.phase,
                             "torch_rng": _rng_b64(torch.get_rng_state())}
    if generator is not None:
        extra["generator_rng"] = _rng_b64(generator.get_state())
    if optimizer is not None:
        flat, names = {}, {id(p): n for n, p in policy.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, val in optimizer.state.get(p, {}).items():
                    flat[f"{names[id(p)]}::{key}"] = torch.as_tensor(val).detach().clone().contiguous()
        layout.save_safetensors(flat, d / "optimizer.safetensors")
    layout.write_text(d / "state.json", json.dumps(extra, indent=2) + "\n")
    layout.point_last(out, d.name)  # after the files it names
    return d


def state_digest(policy: torch.nn.Module) -> str:
    """sha1 of every tensor of the model's state (replicas and reruns compare by it)."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(policy.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def last_checkpoint(out: Path) -> Optional[Path]:
    d = layout.read_last(out)
    return d if d is not None and (d / "model.safetensors").exists() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training OUT dir (its LAST checkpoint)."""
    p = Path(path)
    if (p / "model.safetensors").exists():
        return p
    last = last_checkpoint(p)
    if last is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint directory nor a training output with checkpoints")
    return last


def load_policy(path: str | Path, overrides: Optional[dict] = None) -> tuple[LaMPPolicy, dict]:
    """Policy from a checkpoint (directory or training OUT dir) -> (policy, state.json dict)."""
    from safetensors.torch import load_file

    d = resolve_checkpoint(path)
    state = json.loads((d / "state.json").read_text())
    cfg_d = dict(state["policy_config"])
    cfg_d.update(overrides or {})
    policy = LaMPPolicy(policy_config_from_dict(cfg_d))
    load_weights(policy, load_file(str(d / "model.safetensors")), strict=not overrides)
    return policy, state


def load_weights(policy: LaMPPolicy, weights: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Copy matching weights; returns the names of the model's tensors left at their init
    (absent or of another shape, e.g. another fusion variant). strict: none may be left."""
    own = policy.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    if strict and skipped:
        raise ValueError(f"checkpoint does not match the model: {skipped[:5]} ...")
    policy.load_state_dict(usable, strict=False)
    return skipped


def _load_optimizer(optimizer: torch.optim.Optimizer, policy: LaMPPolicy, d: Path) -> None:
    from safetensors.torch import load_file

    flat = load_file(str(d / "optimizer.safetensors"))
    params = dict(policy.named_parameters())
    for key, val in flat.items():
        name, field = key.split("::")
        optimizer.state[params[name]][field] = val.clone()


# ----------------------------------------------------------------------------- training
def build_policy(stream: TripletStream, cfg: LaMPConfig) -> LaMPPolicy:
    # a motion-only stream has no action statistics to normalise by (stage 2 sets its own)
    policy = LaMPPolicy(cfg, stats=None if stream.motion_only else stream.stats_entry)
    policy.set_query_uv(torch.from_numpy(stream.query_uv))
    return policy


def config_for_data(ds, cfg: LaMPConfig, motion_only: bool = False) -> LaMPConfig:
    """Fill the data-given fields (image size, action/state dims) from the dataset's first triplet.
    motion_only: the camera and image size only (the action/state dims stay as configured; the
    action phase that starts from this run takes them from its own data)."""
    import numpy as np

    shards = list(ds.shard_names)[:1]
    first = next(iter(ds.iter_triplets(shards=shards, chunk=1, motion_only=True) if motion_only
                      else ds.iter_triplets(shards=shards, chunk=1)))
    cam = cfg.camera or first.meta.get("primary_camera") or next(iter(first.images))
    H, W = np.asarray(first.images[cam]).shape[:2]
    if motion_only:
        return dataclasses.replace(cfg, camera=cam, image_size=(int(H), int(W)))
    A = int(np.asarray(first.action_chunk).shape[-1])
    P = int(np.asarray(first.proprio).reshape(-1).shape[0])
    return dataclasses.replace(cfg, camera=cam, image_size=(int(H), int(W)), action_dim=A, state_dim=P)


def config_from_init(init: str, cfg: LaMPConfig, ds) -> LaMPConfig:
    """Stage 2's config from a stage-1 checkpoint: the architecture of the checkpoint, the stage-2
    choices of `cfg` (STAGE2_FIELDS: fusion, chunk execution, Euler steps, LAFP strength) and the action/state dims of the action
    data (stage 1 may have read no actions). The image size must agree."""
    init_state = json.loads((resolve_checkpoint(init) / "state.json").read_text())
    arch = dict(init_state["policy_config"])
    for key in STAGE2_FIELDS:
        arch[key] = getattr(cfg, key)
    arch.update(variant_fields(cfg, arch))
    data_cfg = config_for_data(ds, policy_config_from_dict(arch))
    if tuple(data_cfg.image_size) != tuple(arch["image_size"]):
        raise ValueError(f"init {init}: stage 1 saw {tuple(arch['image_size'])} px images, the action data has "
                         f"{tuple(data_cfg.image_size)}")
    return data_cfg


def variant_fields(cfg: LaMPConfig, arch: dict) -> dict:
    """The variant and its own fields, taken from `cfg` over a stage-1 architecture `arch`. When
    stage 1 trained the same variant its parts must have the same shape: a field that differs is
    an error (the init would silently leave those parts untrained)."""
    fields = {"variant": cfg.variant, **{k: getattr(cfg, k) for k in VARIANT_FIELDS.get(cfg.variant, ())}}
    if arch.get("variant", "lamp") == cfg.variant:
        differ = sorted(k for k, v in fields.items() if k in arch and json.dumps(arch[k]) != json.dumps(v))
        if differ:
            raise ValueError(f"the init checkpoint's {cfg.variant} parts differ from the config in {differ}")
    return fields


def _resume_configs(resume: Path, tc: TrainConfig) -> tuple[dict, LaMPConfig, TrainConfig]:
    """The checkpoint's state and its own configs: they win over what was passed, so a resume
    cannot drift (only the DataLoader worker count may change)."""
    st = json.loads((resume / "state.json").read_text())
    cfg = policy_config_from_dict(st["policy_config"])
    saved_tc = train_config_from_dict(st["train_config"])
    if dataclasses.replace(saved_tc, num_workers=tc.num_workers) != dataclasses.replace(tc, num_workers=tc.num_workers):
        log.warning("resuming %s with its saved train config (ignoring the one given)", resume)
    return st, cfg, dataclasses.replace(saved_tc, num_workers=tc.num_workers)


def _step(model, batch, optimizer, params, generator, lr: float, grad_clip: float) -> tuple[float, torch.Tensor, dict]:
    """One optimisation step at learning rate `lr`: (loss, gradient norm before clipping, logs)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    loss, logs = model(batch, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach()), grad_norm, logs


def _load_start(policy: LaMPPolicy, stream: TripletStream, generator: torch.Generator, resume: Optional[Path],
                st: Optional[dict], init: Optional[str]) -> int:
    """Weights and random state to start from; returns the first step. A resume restores the
    checkpoint exactly; `init` loads what the checkpoint has (new tensors keep their init) and
    takes this data's statistics and query grid."""
    from safetensors.torch import load_file

    if resume is not None:
        load_weights(policy, load_file(str(resume / "model.safetensors")))
        torch.set_rng_state(_rng_from_b64(st["torch_rng"]))
        generator.set_state(_rng_from_b64(st["generator_rng"]))
        return int(st["step"])
    if init:
        skipped = load_weights(policy, load_file(str(resolve_checkpoint(init) / "model.safetensors")), strict=False)
        if skipped:
            log.info("init %s: %d tensors not in the checkpoint (new for this variant): %s", init, len(skipped), skipped[:4])
        policy.set_stats(stream.stats_entry)
        policy.set_query_uv(torch.from_numpy(stream.query_uv))
    return 0


def _optimizer_and_model(policy: LaMPPolicy, tc: TrainConfig, resume: Optional[Path], world: int):
    """The phase's trainable parameters, AdamW over them (restored on a resume), and the module
    to call: the policy, wrapped in DistributedDataParallel when torchrun started several ranks."""
    policy.set_phase(tc.phase, train_vl=tc.train_vl_in_action_phase)
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    if resume is not None:
        _load_optimizer(optimizer, policy, resume)
    model = policy
    if world > 1:  # torch.distributed initialised by the launcher (torchrun): average gradients over ranks
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(policy)
    return params, optimizer, model


def _open(data: Any):
    """A dataset object as is; a reference (directory, URL, URL/NAME@V) opened by the public reader."""
    if not isinstance(data, (str, Path)):
        return data
    from curation import open_dataset

    return open_dataset(str(data))


def train(data: Any, out: str | Path, cfg: LaMPConfig, tc: TrainConfig, init: Optional[str] = None,
          progress: bool = True, stop_after: Optional[int] = None, dataset_name: Optional[str] = None) -> dict:
    """Train one phase into `out` (resuming from its last checkpoint when there is one).
    stop_after: stop (with a checkpoint) after this many steps of this call, to test resume.
    Returns a summary dict (final loss, steps/s, checkpoint path)."""
    from schemas.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(out)
    if resume is not None:
        st, cfg, tc = _resume_configs(resume, tc)

    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)
    torch.manual_seed(tc.seed)
    ds = _open(data)
    motion_only = tc.phase in ACTION_FREE_PHASES  # stage 1 reads frames, language and labels; never actions
    if resume is None:
        cfg = config_from_init(init, cfg, ds) if init else config_for_data(ds, cfg, motion_only=motion_only)
    stream = TripletStream(ds if not isinstance(data, (str, Path)) else str(data), cfg, seed=tc.seed,
                           shuffle_buffer=tc.shuffle_buffer, dataset_name=dataset_name, motion_only=motion_only)
    policy = build_policy(stream, cfg)
    rank, world = dist_rank_world()
    generator = torch.Generator().manual_seed(tc.seed + 1 + 1000 * rank)  # distinct flow-matching noise per rank
    start = _load_start(policy, stream, generator, resume, st if resume is not None else None, init)
    if tc.phase == "action" and cfg.uses_motion and not init and resume is None:
        log.warning("phase action with fusion %s but no --init: the Motion Expert is untrained", cfg.fusion)

    params, optimizer, model = _optimizer_and_model(policy, tc, resume, world)
    is_main = rank == 0
    loader = make_loader(stream, tc.batch_size, tc.num_workers, seed=tc.seed)
    batches = iter(loader)
    for _ in range(start):  # skip what the interrupted run already consumed
        next(batches)

    metrics_path = out / "metrics.jsonl"
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)
    bar = progress_bar(total=tc.steps, initial=start, desc=f"train {tc.phase}", unit="step", disable=not (progress and is_main),
               dynamic_ncols=True)
    t0, last_t, last_step, loss_val = time.perf_counter(), time.perf_counter(), start, float("nan")
    sps, interval_losses = float("nan"), []
    with open(metrics_path if is_main else os.devnull, "a") as mf:
        for step in range(start, end):
            batch = next(batches)
            policy.at_step(step, tc.steps)
            lr = lr_at(step, tc)
            loss_val, grad_norm, logs = _step(model, batch, optimizer, params, generator, lr, tc.grad_clip)
            interval_losses.append(loss_val)
            bar.update(1)
            done = step + 1
            if done % tc.log_every == 0 or done == end:
                now = time.perf_counter()
                sps = (done - last_step) / max(now - last_t, 1e-9)
                last_t, last_step = now, done
                # loss: mean over the steps since the last record (single-batch losses are noisy)
                rec = {"step": done, "phase": tc.phase, "loss": sum(interval_losses) / len(interval_losses),
                       "loss_last": loss_val, "lr": lr, "grad_norm": float(grad_norm), "steps_per_s": sps,
                       "samples_per_s": sps * tc.batch_size, "wall_s": now - t0, **logs}
                interval_losses = []
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{sps:.2f}")
            if done % tc.checkpoint_every == 0 and done != end and is_main:
                save_checkpoint(out, policy, tc, done, stream.version, optimizer, generator)
    bar.close()
    ckpt = STEPS.path(out, end)
    if is_main:
        ckpt = save_checkpoint(out, policy, tc, end, stream.version, optimizer, generator)
    if world > 1:
        torch.distributed.barrier()
    elapsed = time.perf_counter() - t0
    return {"phase": tc.phase, "steps": end, "rank": rank, "world_size": world, "state_sha1": state_digest(policy), "final_loss": loss_val, "wall_s": elapsed,
            "steps_per_s": (end - start) / max(elapsed, 1e-9), "checkpoint": str(ckpt),
            "dataset_version": stream.version, "fusion": cfg.fusion, "variant": cfg.variant, "parameters": policy.num_parameters(),
            "trainable_parameters": sum(p.numel() for p in params)}


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, key: str = "loss") -> Path:
    """Training curves (loss vs step) of several runs in one PNG; runs: label -> OUT dir or metrics file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, path in runs.items():
        recs = [r for r in read_metrics(path) if key in r]
        ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
