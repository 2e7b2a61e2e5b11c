"""The code a plan's steps run on: per wave, a git worktree frozen at the commit the wave began on.

    code:          # in the plan file: wave -> git revision
      0: 6736f05   # every step first needed by a wave-0 variant
      1: 94c39a8

A wave's results stay comparable only if all its steps run on the same code, while the runner
itself (scheduling, landing, results) is today's. A step of wave W runs on WORKDIR/code/<rev>, a
detached worktree of the runner's own repository, made on first use: on a fresh
machine it is made again, nothing to set up by hand. A wave without an entry runs on the runner's
own checkout; `curate policy experiment --code DIR` puts every step on DIR instead.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from policy.experiment_plan import Plan, Step


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def ensure_worktree(repo: Path, rev: str, where: Path) -> Path:
    """WHERE/REV: a detached worktree of `repo` at `rev`, made if missing. Raises ValueError
    when the revision is unknown or a checkout already there is at another commit."""
    want = _git("-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}")
    path = where / rev
    if path.exists():
        head = _git("-C", str(path), "rev-parse", "HEAD")
        if head != want:
            raise ValueError(f"{path}: a checkout at {head}, where the plan's wave runs on {rev} ({want})")
        return path
    where.mkdir(parents=True, exist_ok=True)
    _git("-C", str(repo), "worktree", "prune")  # forget worktrees of a workdir that is gone
    _git("-C", str(repo), "worktree", "add", "--detach", str(path), want)
    return path


class StepCode:
    """Which checkout each step runs on (None: the runner's own)."""

    def __init__(self, plan: Plan, override: Optional[Path] = None, repo: Optional[Path] = None):
        self.plan, self.override = plan, override
        self.repo = repo or Path(__file__).resolve().parents[1]  # the checkout this runner is
        self.paths: dict[int, Path] = {}

    def __call__(self, step: Step) -> Optional[Path]:
        if self.override is not None:
            return self.override
        rev = self.plan.code.get(step.wave)
        if rev is None:
            return None
        if step.wave not in self.paths:
            self.paths[step.wave] = ensure_worktree(self.repo, rev, self.plan.workdir.resolve() / "code")
        return self.paths[step.wave]
