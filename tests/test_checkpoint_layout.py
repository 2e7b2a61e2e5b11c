"""schemas/checkpoint.py: the one checkpoint layout, atomic save and learning-rate schedule of both
trainers (policy/train.py, labelers/latent/train.py)."""

from __future__ import annotations

import math

import pytest
import torch

from schemas import checkpoint as layout


def test_step_layout_names_lists_and_prunes(tmp_path):
    files = layout.StepLayout(digits=8, suffix=".safetensors")
    for step in (3, 12, 7):
        layout.save_safetensors({"w": torch.full((2,), float(step))}, files.path(tmp_path, step))
    assert files.path(tmp_path, 7).name == "step-00000007.safetensors"
    assert [s for s, _ in files.list(tmp_path)] == [3, 7, 12]
    files.prune(tmp_path, keep=2)
    assert [s for s, _ in files.list(tmp_path)] == [7, 12]
    dirs = layout.StepLayout(digits=7)
    assert dirs.name(3) == "step-0000003" and dirs.list(tmp_path) == []  # other width: not listed


def test_last_pointer_and_atomic_write_leave_no_partial_file(tmp_path):
    assert layout.read_last(tmp_path) is None
    layout.point_last(tmp_path, "step-0000005")
    assert layout.read_last(tmp_path) == tmp_path / "checkpoints" / "step-0000005"
    target = tmp_path / "checkpoints" / "state.json"
    layout.write_text(target, "old\n")

    def fail_halfway(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        layout.atomic_write(target, fail_halfway)
    assert target.read_text() == "old\n"  # the previous content stays whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["LAST", "state.json"]  # no temporary left


def test_schedule_warmup_then_cosine_or_constant():
    lr, warmup, total = 3e-4, 10, 110
    assert layout.warmup_cosine_lr(0, lr, warmup, total, 0.1) == lr * 1 / warmup
    assert layout.warmup_cosine_lr(warmup, lr, warmup, total, 0.1) == pytest.approx(lr)
    assert layout.warmup_cosine_lr(warmup + 50, lr, warmup, total, 0.1) == pytest.approx(lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert layout.warmup_cosine_lr(total + 5, lr, warmup, total, 0.1) == pytest.approx(lr * 0.1)
    assert [layout.warmup_cosine_lr(s, lr, warmup, total, 1.0) for s in (warmup, warmup + 50, total + 5)] == [lr] * 3


def test_checkpoint_and_last_reach_the_disk_before_they_are_named(tmp_path, monkeypatch):
    """The checkpoint file is synced under its temporary name before the rename, the directory after,
    and LAST the same way: a power loss never leaves LAST naming an empty checkpoint."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    files = layout.StepLayout(digits=7, suffix=".safetensors")
    ckpt = files.path(tmp_path, 5)
    layout.save_safetensors({"w": torch.ones(3)}, ckpt)
    layout.point_last(tmp_path, ckpt.name)
    last = tmp_path / "checkpoints" / "LAST"
    i_ckpt, i_last = events.index(("replace", str(ckpt))), events.index(("replace", str(last)))
    synced_before = [p for k, p in events[:i_ckpt] if k == "fsync"]
    assert any(os.path.basename(p).startswith(f".{ckpt.name}.tmp-") for p in synced_before)
    assert ("fsync", str(ckpt.parent)) in events[i_ckpt:i_last]  # the rename itself, before LAST
    assert any(os.path.basename(p).startswith(".LAST.tmp-") for k, p in events[i_ckpt:i_last] if k == "fsync")
    assert ("fsync", str(last.parent)) in events[i_last:]
