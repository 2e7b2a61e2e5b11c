"""`curate demo`: the main job end to end on an embedded default, no arguments.

1. simulate a small Meta-World dataset with ground truth (three tasks);
2. inspect it and the shared real Open-X (Bridge) episodes through the same reader;
3. curate both with the Ray engine into sharded Zarr triplet datasets;
4. validate them against the data contract;
5. publish each as version 0.1.0 to a local registry directory;
6. print where the dataset cards are.

Each step is the `curate` command a user would type, run as its own process
(MuJoCo's software renderer and TensorFlow are kept in separate processes), so
the demo doubles as a walkthrough of the command line.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BRIDGE = REPO.parent / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"
DEMO_TASKS = ("pick-place-v3", "drawer-open-v3", "button-press-topdown-v3")


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="run the whole main job on an embedded default (simulate, curate with Ray, validate, publish)")
    p.add_argument("--out", default="demo-out", help="working directory for the demo (default ./demo-out)")
    p.add_argument("--bridge", default=str(DEFAULT_BRIDGE), help="Open-X dataset directory to curate beside the simulated one")
    p.add_argument("--episodes", type=int, default=3, help="simulated episodes per task")
    p.add_argument("--size", type=int, default=128, help="simulated image size (pixels)")
    p.add_argument("--runner", default="ray", choices=["local", "beam", "ray"], help="engine for the curation job")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_demo)


def _curate(*args: str) -> None:
    cmd = [sys.executable, "-m", "cli.main", *args]
    print(f"\n$ curate {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"curate demo: step failed (exit {proc.returncode}): curate {' '.join(args)}")
    print(f"({time.perf_counter() - t0:.1f}s)", flush=True)


def cmd_demo(args) -> int:
    out = Path(args.out).resolve()
    sim_root = out / "sim"
    sim_dir = sim_root / "metaworld_sim" / "1.0.0"
    registry = out / "registry"
    t0 = time.perf_counter()
    # The demo is rerunnable: its own datasets and registry from an earlier run (possibly made by
    # other code, so another config hash and other published content) are replaced, not resumed.
    for old in (out / "datasets", registry):
        if old.is_dir():
            print(f"removing the previous demo's {old}", flush=True)
            shutil.rmtree(old)

    sim_args = ["simulate", "--episodes", str(args.episodes), "--size", str(args.size), "--max-steps", "50", "--out", str(sim_root)]
    for task in DEMO_TASKS:
        sim_args += ["--task", task]
    _curate(*sim_args)

    sources = {"metaworld_sim": sim_dir}
    bridge = Path(args.bridge)
    if bridge.is_dir():
        sources["bridge"] = bridge
    else:
        print(f"note: Bridge episodes not found at {bridge}; curating the simulated dataset only", flush=True)

    for name, src in sources.items():
        _curate("inspect", str(src), "--split", "train")

    cards = []
    for name, src in sources.items():
        ds = out / "datasets" / name
        _curate("run", str(src), "--out", str(ds), "--runner", args.runner, "--workers", str(args.workers))
        _curate("validate", str(ds))
        _curate("publish", str(ds), "--name", name, "--version", "0.1.0", "--to", str(registry))
        _curate("verify", f"{registry}/{name}@0.1.0")
        cards.append(ds / "README.md")

    print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
    print(f"published versions: {registry}")
    for card in cards:
        print(f"dataset card: {card}")
    return 0
