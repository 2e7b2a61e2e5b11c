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

The results JSON, the curves and the strips are built from these records only, so a plan whose
workdir was lost rebuilds the same results file and re-runs only what a missing evaluation needs.
An evaluation that landed is never overwritten: one evaluated again with a different outcome is
reported and kept out (delete the landed file to replace it on purpose).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from policy.experiment_plan import Layout, Plan, Step

log = logging.getLogger(__name__)


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


def land(plan: Plan, steps: list[Step], curve_runs: dict[str, Path]) -> list[Path]:
    """Copy the workdir's new records into the landed directory; returns the files written.
    curve_runs: run name -> run directory whose metrics.jsonl the curves plot."""
    lay, landed = Layout(plan), Landed(plan)
    written: list[Path] = []
    for step in steps:
        if step.kind == "eval":
            written += _land_eval(lay, landed, step)
        written += _land_marker(lay, landed, step)
    for run, run_dir in curve_runs.items():
        src = run_dir / "metrics.jsonl"
        if src.exists() and _copy_if_changed(src, landed.metrics(run)):
            written.append(landed.metrics(run))
    return written
