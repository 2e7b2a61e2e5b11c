"""The results of an experiment plan, rebuilt from its landed records whenever an evaluation lands.

    WORKDIR/evals/<variant>@<regime>-s<seed>.json  (curate policy eval --json: outcome per layout)
      ─► landed records beside the results JSON (policy/experiment_landed.py, kept in git)
      ─► results JSON (plan.results):
           protocol  the plan, the datasets as curated (episodes per task), the command,
                     wall time and code commit of every finished step
           variants  "<variant>@<regime>": successes / trials over seeds and tasks, Wilson 95 %,
                     per task, per seed, the seeds evaluated so far
           paired    "<a> - <b>@<regime>" for b in plan.paired_against: the success difference
                     paired over the same layouts and the seeds both have, bootstrap 95 %
      ─► <results stem>_curves_<regime>.png (seed 0's action runs + the stage-1 runs),
         <results stem>_strips/<variant>@<regime>_<task>.png (first seed's first layout)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from policy.experiment_landed import Landed, land
from policy.experiment_plan import Layout, Plan, Step
from policy.paired_stats import paired_difference, rate_summary


def load_evals(plan: Plan) -> dict[tuple[str, int], dict[int, dict[str, np.ndarray]]]:
    """(variant, regime) -> seed -> task -> outcomes L (0/1) of every landed evaluation."""
    landed = Landed(plan)
    out: dict[tuple[str, int], dict[int, dict[str, np.ndarray]]] = {}
    for regime in plan.regimes:
        for vname in plan.variants:
            for seed in plan.seeds:
                p = landed.eval_json(vname, regime, seed)
                if not p.exists():
                    continue
                rep = json.loads(p.read_text())
                out.setdefault((vname, regime), {})[seed] = {r["task"]: np.asarray(r["outcomes"], np.int64) for r in rep["tasks"]}
    return out


def variant_summary(per_seed: dict[int, dict[str, np.ndarray]], planned_seeds: list[int]) -> dict:
    tasks = sorted({t for by_task in per_seed.values() for t in by_task})
    succ = sum(int(o.sum()) for by_task in per_seed.values() for o in by_task.values())
    trials = sum(int(o.size) for by_task in per_seed.values() for o in by_task.values())
    per_task = {t: rate_summary(sum(int(per_seed[s][t].sum()) for s in per_seed),
                                sum(int(per_seed[s][t].size) for s in per_seed)) for t in tasks}
    seeds = sorted(per_seed)
    return {**rate_summary(succ, trials), "per_task": per_task, "seeds": seeds,
            "per_seed": {str(s): rate_summary(sum(int(o.sum()) for o in per_seed[s].values()),
                                              sum(int(o.size) for o in per_seed[s].values())) for s in seeds},
            "complete": seeds == sorted(planned_seeds)}


def paired_table(plan: Plan, evals: dict) -> dict:
    out = {}
    for regime in plan.regimes:
        for b in plan.paired_against:
            for a in plan.variants:
                if a == b or (a, regime) not in evals or (b, regime) not in evals:
                    continue
                ea, eb = evals[(a, regime)], evals[(b, regime)]
                seeds = sorted(set(ea) & set(eb))
                if not seeds:
                    continue
                tasks = sorted(set(ea[seeds[0]]))
                xa = {t: np.stack([ea[s][t] for s in seeds]) for t in tasks}  # S L
                xb = {t: np.stack([eb[s][t] for s in seeds]) for t in tasks}
                out[f"{a} - {b}@{regime}"] = {**paired_difference(xa, xb), "seeds": seeds}
    return out


def layout_overlap(plan: Plan) -> dict:
    """How many layout seeds the corpus, the demos and the evaluation share (0 = disjoint layouts)."""
    from curation.sources.metaworld.rollout import episode_seed

    def seeds(base: int, tasks: list[str], n: int) -> set[int]:
        return {episode_seed(base, t, i) for t in tasks for i in range(n)}

    corpus = seeds(plan.corpus.seed, plan.corpus.tasks, plan.corpus.episodes)
    demos = seeds(plan.demos.seed, plan.demos.tasks, max(plan.regimes))
    evals = seeds(plan.eval.seed, plan.demos.tasks, plan.eval.episodes)
    return {"corpus_eval": len(corpus & evals), "demos_eval": len(demos & evals), "corpus_demos": len(corpus & demos)}


def protocol(plan: Plan, steps: list[Step]) -> dict:
    finished = Landed(plan).records(steps)
    datasets = {r["dataset"]["name"]: {k: v for k, v in r["dataset"].items() if k != "name"}
                for r in finished.values() if "dataset" in r}
    return {"plan": str(plan.path), "plan_content": plan.raw, "model_config": str(plan.config),
            "model_config_content": plan.config.read_text() if plan.config.exists() else None,
            "eval_layouts": f"curation.sources.metaworld.rollout.episode_seed({plan.eval.seed}, task, i), i < {plan.eval.episodes}",
            "bootstrap": "paired over layouts, stratified by task, 10000 resamples, percentile 95 %",
            "shared_layout_seeds": layout_overlap(plan),
            "datasets": datasets, "steps_done": len(finished), "steps_total": len(steps),
            "steps": {k: {"command": v["command"], "wall_s": v["wall_s"], "finished_utc": v["finished_utc"],
                          "code": v.get("code")}
                      for k, v in finished.items()}}


def build_results(plan: Plan, steps: list[Step]) -> dict:
    evals = load_evals(plan)
    variants = {f"{v}@{r}": variant_summary(per_seed, plan.seeds) for (v, r), per_seed in evals.items()}
    return {"protocol": protocol(plan, steps), "variants": variants, "paired": paired_table(plan, evals)}


def curve_runs(plan: Plan) -> dict[str, Path]:
    """Run name -> run directory of every run a curves PNG plots: the stage-1 runs and seed 0's
    action runs of every variant and regime."""
    lay = Layout(plan)
    runs = {f"stage1-{n}": lay.stage1_dir(n) for n in plan.stage1}
    runs.update({f"{v}@{r}-s{plan.seeds[0]}": lay.run_dir(v, r, plan.seeds[0]) for r in plan.regimes for v in plan.variants})
    return runs


def plot_regime_curves(plan: Plan, regime: int, png: Path) -> Optional[Path]:
    from policy.train import plot_curves

    landed, seed = Landed(plan), plan.seeds[0]
    runs = {f"stage1 {n}": landed.metrics(f"stage1-{n}") for n in plan.stage1}
    runs.update({f"{v}@{regime} s{seed}": landed.metrics(f"{v}@{regime}-s{seed}") for v in plan.variants})
    runs = {label: path for label, path in runs.items() if path.exists()}
    return plot_curves(runs, png) if runs else None


def write_outputs(plan: Plan, steps: list[Step]) -> list[Path]:
    """Land the workdir's new records, then rewrite the results JSON, the curves and the strips from
    the landed records; returns the paths written."""
    lay = Layout(plan)
    written = land(plan, steps, curve_runs(plan))
    res = build_results(plan, steps)
    plan.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.results.with_name(plan.results.name + ".partial")
    tmp.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    tmp.replace(plan.results)
    written.append(plan.results)
    stem = plan.results.with_suffix("")
    for regime in plan.regimes:
        png = plot_regime_curves(plan, regime, Path(f"{stem}_curves_{regime}.png"))
        if png is not None:
            written.append(png)
    strip_dir = Path(f"{stem}_strips")
    for regime in plan.regimes:
        for v in plan.variants:
            src = lay.strips(v, regime, plan.seeds[0])
            for png in sorted(src.glob("*.png")) if src.exists() else []:
                dst = strip_dir / f"{v}@{regime}_{png.name}"
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(png, dst)
                written.append(dst)
    return written


def table_rows(results: dict) -> tuple[list[dict], list[dict]]:
    """The results as two tables of text cells: one row per variant@regime (overall and per task,
    `s/n = rate [lo, hi]`) and one per paired difference (`diff [lo, hi]`)."""
    def cell(r: dict) -> str:
        return f"{r['successes']}/{r['trials']} = {r['rate']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"

    variants = []
    for key, v in results["variants"].items():
        row = {"variant": key, "seeds": ",".join(str(s) for s in v["seeds"]), "overall": cell(v)}
        row.update({t: cell(r) for t, r in v["per_task"].items()})
        variants.append(row)
    paired = [{"difference": k, "diff": f"{p['diff']:+.3f}", "ci95": f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]",
               "seeds": ",".join(str(s) for s in p["seeds"]), "layouts": p["layouts"]} for k, p in results["paired"].items()]
    return variants, paired
