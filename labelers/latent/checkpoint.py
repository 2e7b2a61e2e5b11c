"""Checkpoints of the latent action model, in safetensors only (loading never unpickles).

Two kinds of file, both with the model config as JSON in the safetensors metadata:

- weights  (`model.safetensors`): the model's state dict; what the labeler loads.
- training state (`checkpoints/step-XXXXXXXX.safetensors`): weights under `model/`,
  Adam's per-parameter tensors under `optim/<param index>/<name>`, the RNG states under
  `rng/` (torch's global CPU generator and the batch sampler's generator), and in the
  metadata the step, the optimiser's hyper-parameters and the training settings.

Training states are OUT/checkpoints/step-XXXXXXXX.safetensors, one file per step, in the one
checkpoint layout of schemas.checkpoint, which also writes every file atomically (temporary name,
fsync, rename), so an interrupted write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from labelers.latent.config import LAMConfig
from schemas import checkpoint as layout

FORMAT_WEIGHTS = "lam-weights/1"
FORMAT_TRAIN = "lam-train-state/1"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_DIR = layout.CHECKPOINT_DIR
STEPS = layout.StepLayout(digits=8, suffix=".safetensors")


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    layout.save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata=metadata)


WHAT = "latent-action checkpoint"  # how errors name these files


def save_weights(model: torch.nn.Module, config: LAMConfig, path: str | os.PathLike, extra: dict | None = None) -> Path:
    path = Path(path)
    meta = {"format": FORMAT_WEIGHTS, "config": config.to_json(), "extra": json.dumps(extra or {})}
    _atomic_save(dict(model.state_dict()), meta, path)
    return path


def resolve_weights(path: str | os.PathLike) -> Path:
    """A checkpoint directory (its model.safetensors, else its newest training state) or a file."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return path / WEIGHTS_FILE
        latest = latest_training_state(path)
        if latest is None:
            raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} and no {CHECKPOINT_DIR}/step-*.safetensors")
        return latest
    return path


def load_weights(path: str | os.PathLike) -> tuple[LAMConfig, dict[str, torch.Tensor], dict]:
    """-> (config, model state dict, extra metadata) from weights or a training state."""
    file = resolve_weights(path)
    tensors, meta = layout.read_safetensors(file, WHAT)
    fmt = meta.get("format")
    if fmt == FORMAT_WEIGHTS:
        state = tensors
    elif fmt == FORMAT_TRAIN:
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    else:
        raise ValueError(f"{file}: not a latent-action checkpoint (format {fmt!r})")
    extra = json.loads(meta.get("extra", "{}"))
    if fmt == FORMAT_TRAIN:
        extra = {"step": int(meta["step"]), **json.loads(meta.get("settings", "{}"))}
    return LAMConfig.from_json(meta["config"]), state, extra


def training_state_path(out_dir: str | os.PathLike, step: int) -> Path:
    return STEPS.path(out_dir, step)


def list_training_states(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    return STEPS.list(out_dir)


def latest_training_state(out_dir: str | os.PathLike) -> Path | None:
    states = list_training_states(out_dir)
    return states[-1][1] if states else None


def save_training_state(
    out_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: torch.Generator,
    config: LAMConfig,
    settings: dict,
    keep: int = 2,
) -> Path:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim/{idx}/{name}"] = t.reshape(-1) if t.dim() == 0 else t
    tensors["rng/torch_cpu"] = torch.get_rng_state()
    tensors["rng/sampler"] = sampler.get_state()
    meta = {
        "format": FORMAT_TRAIN,
        "config": config.to_json(),
        "step": str(int(step)),
        "settings": json.dumps(settings, sort_keys=True),
        "param_groups": json.dumps(opt["param_groups"]),
        "scalar_optim_keys": json.dumps(
            sorted({f"{i}/{n}" for i, s in opt["state"].items() for n, v in s.items() if not torch.is_tensor(v) or v.dim() == 0})
        ),
    }
    path = training_state_path(out_dir, step)
    _atomic_save(tensors, meta, path)
    STEPS.prune(out_dir, keep)
    return path


def load_training_state(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: torch.Generator
) -> tuple[int, dict]:
    """Restore model, optimiser and RNG states in place; -> (step, settings)."""
    path = Path(path)
    tensors, meta = layout.read_safetensors(path, WHAT)
    if meta.get("format") != FORMAT_TRAIN:
        raise ValueError(f"{path}: not a latent-action training state (format {meta.get('format')!r})")
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    scalars = set(json.loads(meta["scalar_optim_keys"]))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value.reshape(()) if f"{idx}/{name}" in scalars else value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng/torch_cpu"])
    sampler.set_state(tensors["rng/sampler"])
    return int(meta["step"]), json.loads(meta["settings"])
