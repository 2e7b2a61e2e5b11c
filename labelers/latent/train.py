"""Training loop of the latent action model: seeded, checkpointed, resumable.

    out_dir/
      config.json                      model config + training settings (human-readable)
      model.safetensors                latest weights (what the labeler loads)
      checkpoints/step-XXXXXXXX.safetensors   full training state (model, Adam, RNGs, step)
      train_log.jsonl                  one line per `log_every` steps: loss, codes used

Reproducibility: the model is initialised from `seed`, batches are drawn by a dedicated
torch.Generator seeded from `seed`, and NSVQ's noise and dead-code replacement draw from
torch's global generator; both generators are saved in every checkpoint. Rerunning into the
same out_dir resumes from the newest checkpoint, and a run interrupted and resumed ends
with the same weights as an uninterrupted one (same machine, same thread count). The
learning rate depends only on the step (linear warmup, then constant), so `--steps` can be
raised on a rerun to train further.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from labelers.latent import checkpoint as ckpt
from labelers.latent.config import LAMConfig
from labelers.latent.data import FrameStore
from labelers.latent.model import LatentActionModel
from labelers.latent.nsvq import is_replacement_step
from schemas.checkpoint import warmup_cosine_lr

log = logging.getLogger(__name__)

# Settings that must agree between a checkpoint and the run resuming it.
_MUST_MATCH = ("batch", "gap", "seed", "lr", "grad_clip", "warmup")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 3000
    batch: int = 32
    gap: int = 4  # frames between t and t+gap
    seed: int = 0
    lr: float = 5e-4  # Adam; LAPA used 1e-4 at batch 64 for the paper-scale model
    grad_clip: float = 0.5  # LAPA's value
    warmup: int = 100
    checkpoint_every: int = 250
    keep: int = 2  # training states kept on disk
    log_every: int = 10

    def __post_init__(self):
        for name in ("steps", "batch", "gap", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ResumeMismatch(ValueError):
    """The checkpoint in out_dir was made with other settings than the ones asked for."""


def lr_at(step: int, s: TrainSettings) -> float:
    """Update `step` (1-based): linear warmup over s.warmup updates, then constant (the shared
    schedule of schemas.checkpoint with no decay)."""
    return warmup_cosine_lr(step - 1, s.lr, s.warmup, s.steps, min_ratio=1.0)


def batch_tensors(frames: torch.Tensor, first: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """frames F H W 3 uint8, first B global frame indices -> (frame t, frame t+gap) B 3 H W in [0, 1]."""
    x_t = frames[first].permute(0, 3, 1, 2).float().div_(255.0)
    x_tg = frames[first + gap].permute(0, 3, 1, 2).float().div_(255.0)
    return x_t, x_tg


def _reset_adam_rows(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, rows: torch.Tensor) -> None:
    """A replaced code starts fresh: clear its Adam moments so stale momentum does not move it."""
    state = optimizer.state.get(param)
    if state:
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0


def train_lam(
    store: FrameStore,
    out_dir: str | Path,
    config: LAMConfig,
    settings: TrainSettings,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train (or resume training) into out_dir; returns a summary dict.

    `on_step(step, info)` is called after every optimiser update with the loss, the codes the
    batch used and, at replacement steps, the replaced code indices (tests hook in here)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if store.frames.shape[1:3] != (config.image_size, config.image_size):
        raise ValueError(f"frames are {store.frames.shape[1:3]}, model expects {config.image_size} px")
    pairs = store.pairs(settings.gap)
    if len(pairs) == 0:
        raise ValueError(f"no frame pairs with gap {settings.gap}: every episode is shorter than {settings.gap + 1} steps")

    torch.manual_seed(settings.seed)
    model = LatentActionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_at(1, settings))
    sampler = torch.Generator().manual_seed(settings.seed + 1)
    start = _resume(out, model, optimizer, sampler, config, settings)
    (out / "config.json").write_text(json.dumps({"model": json.loads(config.to_json()), "train": asdict(settings)}, indent=2) + "\n")
    _truncate_log(out / "train_log.jsonl", start)

    frames = torch.from_numpy(store.frames)
    first = torch.from_numpy(pairs[:, 2])
    replacements: list[dict] = []
    losses: list[float] = []
    window_codes: set[int] = set()
    t0 = time.perf_counter()
    bar = _progress_bar(settings.steps, start) if progress else None
    model.train()
    step = start
    try:
        while step < settings.steps:
            step += 1
            info = _update(step, model, optimizer, sampler, frames, first, settings)
            losses.append(info["loss"])
            window_codes.update(info["codes"])
            if "replaced" in info:
                replacements.append({"step": step, "replaced": info["replaced"]})
            if on_step is not None:
                on_step(step, info)
            if step % settings.log_every == 0:
                recent = losses[-settings.log_every:]
                with (out / "train_log.jsonl").open("a") as f:
                    f.write(json.dumps({"step": step, "loss": float(np.mean(recent)), "codes_used": len(window_codes)}) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean(recent):.5f}", codes=len(window_codes))
                window_codes = set()
            if bar is not None:
                bar.update(1)
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                _save(out, step, model, optimizer, sampler, config, settings)
    except KeyboardInterrupt:
        # The update of `step` may be half done; the last complete one is step - 1 at worst.
        log.warning("interrupted at step %d; rerun into %s to resume from the last checkpoint", step, out)
        raise
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    return {
        "out": str(out),
        "resumed_from": start,
        "steps": step,
        "steps_run": step - start,
        "seconds": elapsed,
        "steps_per_s": (step - start) / elapsed if elapsed > 0 else float("nan"),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "replacements": replacements,
        "pairs": int(len(pairs)),
        "episodes": store.num_episodes,
    }


def _progress_bar(total: int, initial: int):
    from schemas.progress import progress_bar

    return progress_bar(total=total, initial=initial, desc="latent train", unit="step", dynamic_ncols=True)


def _resume(out: Path, model, optimizer, sampler, config: LAMConfig, settings: TrainSettings) -> int:
    """Restore the newest training state in `out` (model, optimiser, sampler in place) and return
    its step; 0 when there is none. ResumeMismatch when it was made with another config or settings."""
    latest = ckpt.latest_training_state(out)
    if latest is None:
        return 0
    saved_config, _, _ = ckpt.load_weights(latest)
    if saved_config != config:
        raise ResumeMismatch(f"{latest}: trained with config {saved_config.to_json()}, asked for {config.to_json()}; use a new --out")
    try:
        start, saved = ckpt.load_training_state(latest, model, optimizer, sampler)
    except (RuntimeError, KeyError) as e:  # written by another version of the model code
        raise ResumeMismatch(f"{latest}: cannot resume, the checkpoint does not fit this model ({str(e).splitlines()[0]}); use a new --out") from e
    wanted = asdict(settings)
    diff = {k: (saved.get(k), wanted[k]) for k in _MUST_MATCH if saved.get(k) != wanted[k]}
    if diff:
        raise ResumeMismatch(f"{latest}: settings differ from the checkpoint (saved, asked): {diff}; use a new --out")
    log.info("resuming from %s (step %d)", latest, start)
    return start


def _update(step: int, model, optimizer, sampler: torch.Generator, frames: torch.Tensor, first: torch.Tensor,
            settings: TrainSettings) -> dict:
    """One optimiser update on a sampled batch (frames F H W 3 uint8, first P pair starts);
    -> {"loss", "codes" the batch used, "replaced" code indices at replacement steps}."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, settings)
    pick = torch.randint(0, len(first), (settings.batch,), generator=sampler)
    x_t, x_tg = batch_tensors(frames, first[pick], settings.gap)  # B 3 H W each
    result = model(x_t, x_tg)
    optimizer.zero_grad(set_to_none=True)
    result["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer.step()
    loss = float(result["loss"].detach())
    if not math.isfinite(loss):
        raise FloatingPointError(f"latent train: loss became {loss} at step {step}")
    info = {"loss": loss, "codes": torch.unique(result["indices"]).tolist()}
    if is_replacement_step(step):
        dead = model.vq.replace_unused(candidates=result["latents"].detach())
        _reset_adam_rows(optimizer, model.vq.codebook, dead)
        info["replaced"] = dead.tolist()
    return info


def _save(out: Path, step: int, model, optimizer, sampler, config: LAMConfig, settings: TrainSettings) -> None:
    ckpt.save_training_state(out, step, model, optimizer, sampler, config, asdict(settings), keep=settings.keep)
    ckpt.save_weights(model, config, out / ckpt.WEIGHTS_FILE, extra={"step": step, **asdict(settings)})


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the step we resume from (they were written after the last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
