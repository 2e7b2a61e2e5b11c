"""What an experiment keeps in git: the records that outlive its workdir.

The workdir holds what a plan can make again (simulated episodes, curated datasets, checkpoints:
gigabytes, hours of CPU). What it cannot make again cheaply, or not at all once the machine is
gone, is copied beside the results JSON after every evaluation and committed with it:

    <results stem>_landed/
      evals/<variant>@<regime>-s<seed>.json   the evaluation report: outcome per layout, so paired
                                              differences can be computed again with new variants
      done/<step>.json                        every finished step's marker (command, wall time);
                                              a publish step's also holds the dataset's summary
      curves/<run>.jsonl                      the training metrics of every run the curves plot
      artifacts/<step>.json, artifacts/<step>/  what a stage-1 run or the latent action model left
                                              for the steps after it (the newest weights, no
                                              optimizer state: a few MB), with a sha256 per file

The results JSON, the curves and the strips are built from these records only, so a plan whose
workdir was lost rebuilds the same results file and re-runs only what a missing evaluation needs.
An evaluation that landed is never overwritten: one evaluated again with a different outcome is
reported and kept out (delete the landed file to replace it on purpose).

A landed artifact stands in for its step on a fresh machine: the runner copies it back into the
workdir (checking every file's sha256) and marks the step done, so the corpus behind a stage-1
run is neither simulated nor curated again just to retrain the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from policy.experiment_plan import Layout, Plan, Step
from schemas.checkpoint import CHECKPOINT_DIR, LAST, read_last, write_text

log = logging.getLogger(__name__)

ARTIFACT_KINDS = ("stage1", "latent")  # steps whose outputs later steps read and that cost CPU-hours
MAX_ARTIFACT_BYTES = 64 << 20  # larger outputs are not put in git (logged); the plan rebuilds them


class Landed:
    """The git-tracked records of one plan (paths beside its results JSON)."""

    def __init__(self, plan: Plan):
        self.root = Path(f"{plan.results.with_suffix('')}_landed")

    def eval_json(self, variant: str, regime: int, seed: int) -> Path:
        return self.root / "evals" / f"{variant}@{regime}-s{seed}.json"

    def marker(self, step: str) -> Path:
        return self.root / "done" / (step.replace("/", "__") + ".json")

    def metrics(self, run: str) -> Path:
        return self.root / "curves" / f"{run}.jsonl"

    def artifact(self, step: str) -> Path:
        return self.root / "artifacts" / step.replace("/", "__")

    def manifest(self, step: str) -> Path:
        return self.root / "artifacts" / (step.replace("/", "__") + ".json")

    def has_artifact(self, step: Step) -> bool:
        return step.kind in ARTIFACT_KINDS and self.manifest(step.name).exists()

    def has_eval(self, step: Step) -> bool:
        return step.kind == "eval" and self.eval_json(**step.key).exists()

    def records(self, steps: list[Step]) -> dict[str, dict]:
        """step name -> landed marker, in plan order."""
        return {s.name: json.loads(self.marker(s.name).read_text()) for s in steps if self.marker(s.name).exists()}


def dataset_summary(ref: str) -> dict:
    """Episodes (per task) and triplets of a published dataset, as the trainer's reader sees them."""
    from collections import Counter

    from curation import open_dataset

    ds = open_dataset(ref)
    rows = ds.manifest.to_pylist()
    per_task = Counter(str(r.get("language") or "") for r in rows)
    return {"ref": ref, "episodes": len(rows), "triplets": ds.num_triplets(), "episodes_per_instruction": dict(sorted(per_task.items()))}


def _copy_if_changed(src: Path, dst: Path) -> bool:
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return True


def _land_eval(lay: Layout, landed: Landed, step: Step) -> list[Path]:
    src, dst = lay.eval_json(**step.key), landed.eval_json(**step.key)
    if not src.exists():
        return []
    if dst.exists() and json.loads(dst.read_text())["tasks"] != json.loads(src.read_text())["tasks"]:
        log.warning("%s: evaluated again with different outcomes than the landed %s; the landed report is "
                    "kept (delete it to replace it)", src, dst)
        return []
    return [dst] if (not dst.exists() and _copy_if_changed(src, dst)) else []


def _land_marker(lay: Layout, landed: Landed, step: Step) -> list[Path]:
    src, dst = lay.marker(step.name), landed.marker(step.name)
    if not src.exists():
        return []
    rec = json.loads(src.read_text())
    if "restored_from" in rec:  # put back from the landed records: nothing new to land
        return []
    if step.kind == "publish":
        name, version = step.argv[step.argv.index("--name") + 1], step.argv[step.argv.index("--version") + 1]
        ref = lay.ref(name, version)
        try:
            rec["dataset"] = {"name": name, **dataset_summary(ref)}
        except Exception as e:  # noqa: BLE001 - the summary is a record, not a step: note why, go on
            rec["dataset"] = {"name": name, "ref": ref, "error": f"{type(e).__name__}: {e}"}
    text = json.dumps(rec, indent=1) + "\n"
    if dst.exists() and dst.read_text() == text:
        return []
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.with_name(dst.name + ".partial").write_text(text)
    dst.with_name(dst.name + ".partial").replace(dst)
    return [dst]


def artifact_files(out: Path) -> list[Path]:
    """The files of a step's output that later steps read: everything outside OUT/checkpoints, and
    of the checkpoints the LAST pointer and the entry it names, less its optimizer state (stage 2
    and the labeler load weights only). Temporary files of an interrupted write are left out."""
    newest = read_last(out)
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or p.name.startswith(".") or p.name.endswith(".partial"):
            continue
        if rel.parts[0] == CHECKPOINT_DIR and rel.parts[1] != LAST:
            if newest is None or out / CHECKPOINT_DIR / rel.parts[1] != newest or p.name == "optimizer.safetensors":
                continue
        files.append(p)
    return files


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _land_artifact(lay: Layout, landed: Landed, step: Step) -> list[Path]:
    """Copy a finished stage-1 / latent step's artifact_files into git's landed directory; the
    manifest (file -> bytes, sha256) is written last, so an artifact without one is incomplete."""
    if step.kind not in ARTIFACT_KINDS or step.out is None or not lay.marker(step.name).exists() or not step.out.is_dir():
        return []
    files = {str(p.relative_to(step.out)): p for p in artifact_files(step.out)}
    manifest = {"step": step.name, "source": str(step.out),
                "files": {rel: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files.items()}}
    dst_manifest = landed.manifest(step.name)
    if dst_manifest.exists() and json.loads(dst_manifest.read_text())["files"] == manifest["files"]:
        return []
    total = sum(f["bytes"] for f in manifest["files"].values())
    if total > MAX_ARTIFACT_BYTES:
        log.warning("%s: %d bytes of artifacts, over the %d kept in git; not landed", step.name, total, MAX_ARTIFACT_BYTES)
        return []
    root = landed.artifact(step.name)
    written = [root / rel for rel, src in files.items() if _copy_if_changed(src, root / rel)]
    write_text(dst_manifest, json.dumps(manifest, indent=1) + "\n")
    return [*written, dst_manifest]


def restore_artifact(lay: Layout, landed: Landed, step: Step) -> None:
    """Put a landed artifact back in the workdir as the output of `step` and mark the step done
    (its landed marker, plus where it came from). Raises ValueError naming the file when a landed
    file is missing or its sha256 differs from the manifest; the workdir is not touched then."""
    manifest = json.loads(landed.manifest(step.name).read_text())
    root = landed.artifact(step.name)
    for rel, want in manifest["files"].items():
        if not (root / rel).is_file() or _sha256(root / rel) != want["sha256"]:
            raise ValueError(f"landed artifact {root / rel} of step {step.name} is missing or does not match its "
                             f"sha256 in {landed.manifest(step.name)}; delete the manifest to run the step again")
    tmp = step.out.with_name(step.out.name + ".restoring")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in manifest["files"]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, tmp / rel)
    shutil.rmtree(step.out, ignore_errors=True)  # an unfinished run of the step: the landed one replaces it
    tmp.replace(step.out)
    marker = landed.marker(step.name)
    rec = json.loads(marker.read_text()) if marker.exists() else {"step": step.name, "command": step.command}
    write_text(lay.marker(step.name), json.dumps({**rec, "restored_from": str(root)}, indent=1) + "\n")


def land(plan: Plan, steps: list[Step], curve_runs: dict[str, Path]) -> list[Path]:
    """Copy the workdir's new records into the landed directory; returns the files written.
    curve_runs: run name -> run directory whose metrics.jsonl the curves plot."""
    lay, landed = Layout(plan), Landed(plan)
    written: list[Path] = []
    for step in steps:
        if step.kind == "eval":
            written += _land_eval(lay, landed, step)
        written += _land_marker(lay, landed, step)
        written += _land_artifact(lay, landed, step)
    for run, run_dir in curve_runs.items():
        src = run_dir / "metrics.jsonl"
        if src.exists() and _copy_if_changed(src, landed.metrics(run)):
            written.append(landed.metrics(run))
    return written
