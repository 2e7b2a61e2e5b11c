"""The module moves of the house layout (issue 11), and the import rewrite that goes with them.

    python dev/house_moves.py move      # git mv every file of MOVES, then rewrite imports
    python dev/house_moves.py rewrite [FILE...]   # only rewrite old module names to new ones

`rewrite` also follows the names that left a moved module later (NAME_MOVES). It is idempotent; run it on a branch merged after the move to carry its imports (and
module-name strings such as `monkeypatch.setattr("curation.simulate.X", ...)`) to the new layout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# old file -> new file (relative to the repository root)
MOVES = {
    # labelers: tracking/, latent/, eval/
    "labelers/tracks.py": "labelers/tracking/lk.py",
    "labelers/cotracker.py": "labelers/tracking/cotracker.py",
    "labelers/lam/__init__.py": "labelers/latent/__init__.py",
    "labelers/lam/README.md": "labelers/latent/README.md",
    "labelers/lam/checkpoint.py": "labelers/latent/checkpoint.py",
    "labelers/lam/config.py": "labelers/latent/config.py",
    "labelers/lam/data.py": "labelers/latent/data.py",
    "labelers/lam/evaluate.py": "labelers/latent/probe.py",
    "labelers/lam/model.py": "labelers/latent/model.py",
    "labelers/lam/nsvq.py": "labelers/latent/nsvq.py",
    "labelers/lam/train.py": "labelers/latent/train.py",
    "labelers/latent_action.py": "labelers/latent/labeler.py",
    "labelers/ground_truth.py": "labelers/eval/ground_truth.py",
    "labelers/metrics.py": "labelers/eval/metrics.py",
    # curation: sources/, selection/, store/, describe/, registry/
    "curation/rlds.py": "curation/sources/rlds.py",
    "curation/rlds_write.py": "curation/sources/rlds_write.py",
    "curation/openx_registry.py": "curation/sources/openx/registry.py",
    "curation/simulate.py": "curation/sources/metaworld/rollout.py",
    "curation/filters.py": "curation/selection/filters.py",
    "curation/dedup.py": "curation/selection/dedup.py",
    "pipelines/writer.py": "curation/store/writer.py",
    "curation/dataset_reader.py": "curation/store/reader.py",
    "curation/validate.py": "curation/store/validate.py",
    "curation/stats.py": "curation/describe/stats.py",
    "curation/card.py": "curation/describe/card.py",
    "curation/publish.py": "curation/registry/publish.py",
    # pipelines: engines/, testing/
    "pipelines/engine_local.py": "pipelines/engines/local.py",
    "pipelines/engine_beam.py": "pipelines/engines/beam.py",
    "pipelines/engine_ray.py": "pipelines/engines/ray.py",
    "pipelines/cluster.py": "pipelines/testing/cluster.py",
    # policy: testing/
    "policy/synthetic.py": "policy/testing/synthetic.py",
    # cli: main, output, commands/, bench/
    "curation/cli.py": "cli/main.py",
    "curation/report.py": "cli/output.py",
    "curation/cmd_demo.py": "cli/commands/demo.py",
    "curation/cmd_run.py": "cli/commands/run.py",
    "curation/cmd_validate.py": "cli/commands/validate.py",
    "curation/cmd_inspect.py": "cli/commands/inspect.py",
    "curation/cmd_publish.py": "cli/commands/publish.py",
    "curation/cmd_policy.py": "cli/commands/policy.py",
    "curation/cmd_simulate.py": "cli/commands/simulate.py",
    "curation/cmd_latent.py": "cli/commands/latent.py",
    "curation/cmd_bench_labels.py": "cli/bench/labels.py",
    "curation/cmd_bench_cluster.py": "cli/bench/cluster.py",
    "pipelines/bench.py": "cli/bench/pipeline.py",
    "policy/bench.py": "cli/bench/policy.py",
}

# New packages that need an __init__.py (docstring: what the folder holds).
NEW_PACKAGES = {
    "labelers/tracking": "2D point trackers: Lucas-Kanade, DIS-chained flow, CoTracker, and the backend registry.",
    "labelers/eval": "Ground truth from the simulator and the metrics that score labels against it.",
    "curation/sources": "Sources: the Open-X RLDS reader and writer, the Open-X registry, the Meta-World simulator.",
    "curation/sources/openx": "The Open-X registry: per-dataset keys, encodings and quirks, and their standardisation.",
    "curation/sources/metaworld": "The Meta-World simulator: scene, scripted rollouts with ground truth, worker processes.",
    "curation/selection": "Selection: episode filters and near-duplicate removal.",
    "curation/store": "The shard store: writer, reader and validator of the sharded Zarr dataset format.",
    "curation/describe": "Description of a dataset: training statistics and the dataset card.",
    "curation/registry": "Versions: immutable, checksummed published datasets on any fsspec URL.",
    "pipelines/engines": "Engines that map the stage graph over work units: local, Apache Beam, Ray.",
    "pipelines/testing": "Test harness: a local multi-node Ray cluster with fault injection.",
    "policy/testing": "Test harness: synthetic triplet data for the policy.",
    "cli": "`curate`: the command line (main, output helpers, commands/, bench/).",
    "cli/commands": "One module per `curate` command group.",
    "cli/bench": "Every `curate bench` target.",
}


def module_of(path: str) -> str:
    p = path.removesuffix(".py").removesuffix("/__init__")
    return p.replace("/", ".")


def module_map() -> dict[str, str]:
    return {module_of(a): module_of(b) for a, b in MOVES.items() if a.endswith(".py")}


# Names that left their (moved) module in the content commits after the move:
# module -> {name: the module that now holds it}.
NAME_MOVES = {
    "labelers.tracking.lk": {
        "Tracker": "labelers.tracking.common", "grid_queries": "labelers.tracking.common",
        "check_frames": "labelers.tracking.common", "check_queries": "labelers.tracking.common",
        "inside_image": "labelers.tracking.common", "track_anchors": "labelers.tracking.common",
        "FlowTracker": "labelers.tracking.flow", "bilinear_sample": "labelers.tracking.flow",
        "TRACKERS": "labelers.tracking.registry", "get_tracker": "labelers.tracking.registry",
    },
    "curation.store.reader": {"open_dataset": "curation"},
    "cli.output": {"to_json": "curation.formats", "markdown_table": "curation.formats", "format_table": "curation.formats"},
    "pipelines.stages": {"limit_threads": "labelers.threads"},
    "curation.sources.metaworld.rollout": {},  # constants stay importable from rollout
    # curation/registry/publish.py split by concern (refs, storage, content, versions, gc, verify, diff)
    "curation.registry.publish": {
        "INDEX": "curation.registry.refs",
        "INDEX_FORMAT": "curation.registry.refs",
        "FILES_PREFIX": "curation.registry.refs",
        "DEFAULT_REGISTRY": "curation.registry.refs",
        "default_registry": "curation.registry.refs",
        "PublishError": "curation.registry.refs",
        "VersionConflict": "curation.registry.refs",
        "PublishedVersion": "curation.registry.refs",
        "parse_semver": "curation.registry.refs",
        "split_url_name": "curation.registry.refs",
        "parse_ref": "curation.registry.refs",
        "content_checksum": "curation.registry.content",
        "dataset_files": "curation.registry.content",
        "hash_dataset": "curation.registry.content",
        "list_versions": "curation.registry.versions",
        "check_index_names": "curation.registry.versions",
        "resolve_files": "curation.registry.versions",
        "resolve": "curation.registry.versions",
        "open_version": "curation.registry.versions",
        "read_index": "curation.registry.versions",
        "unfinished_publishes": "curation.registry.gc",
        "remove_unfinished": "curation.registry.gc",
        "VerifyResult": "curation.registry.verify",
        "verify": "curation.registry.verify",
        "diff": "curation.registry.diff",
    },
}


def rewrite_names(text: str) -> str:
    """`from MOD import a, b` -> one import line per module now holding the names (NAME_MOVES)."""
    def split(m: re.Match) -> str:
        indent, mod, names = m.group(1), m.group(2), m.group(3)
        moves = NAME_MOVES.get(mod, {})
        parts = [n.strip() for n in names.split(",") if n.strip()]
        by_mod: dict[str, list[str]] = {}
        for part in parts:
            by_mod.setdefault(moves.get(part.split(" as ")[0].strip(), mod), []).append(part)
        return "\n".join(f"{indent}from {k} import {', '.join(v)}" for k, v in sorted(by_mod.items()))
    mods = "|".join(re.escape(m) for m in NAME_MOVES)
    return re.sub(rf"^(\s*)from ({mods}) import ([\w ,]+)$", split, text, flags=re.M)


# Old module names that are also job config keys (`--set curation.card=false`): rewritten only in
# import statements, never in strings.
CONFIG_KEYS = {"curation.filters", "curation.dedup", "curation.stats", "curation.card"}


def rewrite_text(text: str, mods: dict[str, str]) -> str:
    """Old module names -> new ones in dotted names and in `from PKG import MOD` lines."""
    for old in sorted(mods, key=len, reverse=True):
        new = mods[old]
        if old in CONFIG_KEYS:
            text = re.sub(rf"^(\s*)(from|import) {re.escape(old)}(?![\w])", rf"\1\2 {new}", text, flags=re.M)
        else:
            # dotted: curation.simulate / curation.simulate.X (not curation.simulated, not a.curation.simulate)
            text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w])", new, text)
        # from curation import simulate [as S]
        pkg, _, leaf = old.rpartition(".")
        npkg, _, nleaf = new.rpartition(".")
        alias = "" if leaf == nleaf else f" as {leaf}"
        text = re.sub(rf"^(\s*)from {re.escape(pkg)} import {leaf}\b(?!\s*,)( as \w+)?",
                      lambda m: f"{m.group(1)}from {npkg} import {nleaf}{m.group(2) or alias}", text, flags=re.M)
    return rewrite_names(text)


def rewrite(files: list[Path]) -> None:
    mods = module_map()
    for f in files:
        old = f.read_text()
        new = rewrite_text(old, mods)
        if new != old:
            f.write_text(new)
            print(f"rewrote {f.relative_to(REPO)}")


def tracked_py() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / p for p in out.stdout.split()]


def move() -> None:
    for old, new in MOVES.items():
        (REPO / new).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "mv", old, new], cwd=REPO, check=True)
    for pkg, doc in NEW_PACKAGES.items():
        init = REPO / pkg / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}"""\n')
            subprocess.run(["git", "add", str(init)], cwd=REPO, check=True)
    rewrite(tracked_py())


if __name__ == "__main__":
    if sys.argv[1:2] == ["move"]:
        move()
    elif sys.argv[1:2] == ["rewrite"]:
        rewrite([Path(a).resolve() for a in sys.argv[2:]] or tracked_py())
    else:
        print(__doc__)
        sys.exit(2)
