"""Training checkpoints on disk, and the learning-rate schedule a resumed run must reproduce.

Both trainers (the policy, policy/train.py, and the latent action model, labelers/latent/train.py)
use this one mechanism. It lives in schemas because schemas is the one package both may import
(labelers may import only schemas; policy only schemas and curation's public reader,
tests/test_house.py), and because it is a contract like the shard format: the trainer writes it,
the labeler, the evaluator and a resumed run read it back.

Layout of a training output OUT:

    OUT/checkpoints/step-<step>[suffix]   one entry per saved step: a directory of files (the
                                          policy: model / optimizer safetensors + state.json) or
                                          one safetensors file (the latent action model)
    OUT/checkpoints/LAST                  the name of the newest complete entry, when the trainer
                                          keeps a pointer (the policy)

The step is zero-padded to a fixed width per trainer (StepLayout.digits: 7 for the policy, 8 for
the latent action model), the widths their checkpoints on disk already have.

Atomic save: every file is written under a temporary name in its final directory, flushed to disk
and renamed over the final name (os.replace), then the directory is synced; the LAST pointer is
written the same way after the files it names. An interrupted save leaves the previous checkpoint
whole and named; it never leaves a truncated file under a checkpoint's name.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from schemas.durable import replace_durably

CHECKPOINT_DIR = "checkpoints"
LAST = "LAST"


@dataclass(frozen=True)
class StepLayout:
    """Names of the per-step entries under OUT/checkpoints."""

    digits: int
    suffix: str = ""  # "" for a directory per step, ".safetensors" for one file per step

    def name(self, step: int) -> str:
        return f"step-{int(step):0{self.digits}d}{self.suffix}"

    def path(self, out: str | os.PathLike, step: int) -> Path:
        return Path(out) / CHECKPOINT_DIR / self.name(step)

    def list(self, out: str | os.PathLike) -> list[tuple[int, Path]]:
        """(step, path) of every entry, oldest first."""
        pattern = re.compile(rf"step-(\d{{{self.digits}}}){re.escape(self.suffix)}$")
        d = Path(out) / CHECKPOINT_DIR
        found = [(int(m.group(1)), p) for p in d.iterdir() if (m := pattern.match(p.name))] if d.is_dir() else []
        return sorted(found)

    def prune(self, out: str | os.PathLike, keep: int) -> None:
        """Delete all but the newest `keep` file entries (keep <= 0: delete none)."""
        for _, old in self.list(out)[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the file's content to a temporary path beside `path`; then it is synced
    and renamed over `path`, and the directory synced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    """torch tensors -> a safetensors file at `path`, atomically (safetensors' own save_file)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict, dict[str, str]]:
    """(torch tensors, metadata) of a safetensors file; `what` names the kind of file in the
    errors: FileNotFoundError when absent, ValueError naming the file when it is not readable
    (truncated, foreign). Loading never unpickles."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def point_last(out: str | os.PathLike, name: str) -> None:
    """Name `name` (an entry of OUT/checkpoints) the newest checkpoint."""
    write_text(Path(out) / CHECKPOINT_DIR / LAST, name + "\n")


def read_last(out: str | os.PathLike) -> Optional[Path]:
    """The entry OUT/checkpoints/LAST names, or None without a pointer."""
    f = Path(out) / CHECKPOINT_DIR / LAST
    return Path(out) / CHECKPOINT_DIR / f.read_text().strip() if f.exists() else None


def warmup_cosine_lr(step: int, lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The learning rate of update `step` (0-based): linear warmup to `lr` over `warmup_steps`
    updates, then a cosine from `lr` down to `lr * min_ratio` at `total_steps` (min_ratio 1: constant
    after the warmup)."""
    if step < warmup_steps:
        return lr * (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
