"""`curate policy experiment PLAN.yaml`: run a policy experiment's plan step by step, resumably.

    plan (policy/experiment_plan.py)
      └─► steps, in the order results are wanted (regime, then seed, then variant; a step's
          prerequisites are placed just before its first use):
            simulate corpus ─► curate run (one per label set) ─► publish ─► stage 1 (motion only)
            simulate demos (per regime) ─► curate run ─► publish
            (label set "latent": simulate corpus ─► curate latent train ─► curate run of the corpus
             and of the demos with its tokens ─► publish ─► stage 1 in the variant's own phase)
            train action (variant, regime, seed) ─► evaluate (same layouts for every variant)
      └─► each step is one `curate ...` command in a subprocess; a step whose marker
          WORKDIR/done/<step>.json exists is skipped, so stopping the plan anywhere and starting
          it again continues where it stopped. An interrupted step is simply run again: training
          resumes from its last checkpoint, `curate run` from its committed units, publishing
          the same content is a no-op; a simulation or an evaluation starts over.
      └─► an evaluation that landed in git (policy/experiment_landed.py) is done even when the
          workdir is gone, and a step runs only while an evaluation still to run needs it: a
          plan continued on a fresh machine rebuilds only the data and stage-1 runs that the
          evaluations still missing read.
      └─► a stage-1 run's weights (and the latent model) land in git too, and stand in for the
          step on a fresh machine: the corpus behind them is not simulated or curated again.
      └─► after every evaluation and stage-1 run: the landed records, the results file
          (policy/experiment_results.py), the training curves and the rollout strips are
          rewritten, and (--commit) committed to git.

Subprocesses keep MuJoCo rendering and TensorFlow apart (they cannot share a process) and give
each step its own log, WORKDIR/logs/<step>.log.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Optional, Sequence

from policy.experiment_code import StepCode
from policy.experiment_landed import ARTIFACT_KINDS, Landed, restore_artifact
from policy.experiment_plan import LATENT_LABEL_SET, Layout, Plan, Step
from policy.experiment_results import write_outputs

log = logging.getLogger(__name__)

# Environment of every step: MuJoCo's CPU renderer, quiet TensorFlow, one intra-op thread
# (the plan runs on one core; more threads than cores only slow a step down, policy/README.md).
STEP_ENV = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "TF_CPP_MIN_LOG_LEVEL": "2",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- the steps
def _simulate(plan: Plan, name: str, spec, episodes: int, out: Path) -> Step:
    """spec: the plan's Corpus or Demos (tasks, seed, episodes per shard, steps per episode)."""
    argv = ["simulate", *[a for t in spec.tasks for a in ("--task", t)], "--episodes", str(episodes),
            "--size", str(plan.image_size), "--max-steps", str(spec.max_steps or plan.max_steps), "--seed", str(spec.seed),
            "--episodes-per-shard", str(spec.episodes_per_shard), "--workers", "1", "--out", str(out)]
    return Step(name, "simulate", argv, clean=out)


def _curate(plan: Plan, name: str, sim_out: Path, out: Path, per_shard: int, sets: list[str], needs: tuple) -> Step:
    argv = ["run", str(sim_out / "metaworld_sim" / "1.0.0"), "--out", str(out), "--runner", "local",
            "--shard-episodes", str(per_shard), "--no-progress"]
    for s in [*plan.curate, *sets]:
        argv += ["--set", s]
    return Step(name, "curate", argv, needs=needs)


def _publish(lay: Layout, name: str, cur_out: Path, dataset: str, version: str, needs: tuple) -> Step:
    return Step(name, "publish", ["publish", str(cur_out), "--name", dataset, "--version", version,
                                  "--to", lay.registry()], needs=needs)


def _latent_train(plan: Plan, sim_out: Path, out: Path, needs: tuple) -> Step:
    """`curate latent train` on the corpus's frames (its own reader: no curation needed first)."""
    la = plan.latent_actions
    argv = ["latent", "train", "--source", str(sim_out / "metaworld_sim" / "1.0.0"), "--out", str(out),
            "--steps", str(la.steps), "--gap", str(la.gap), "--seed", str(la.seed), "--threads", str(plan.threads),
            "--json"]
    return Step("latent/train", "latent", argv, needs=needs, out=out)


def run_config(plan: Plan, name: str, policy: dict, train: dict) -> Path:
    """The plan's model config with a run's overrides merged in, written to WORKDIR/configs/NAME.yaml."""
    import yaml

    from policy.config import load_config_file

    pol, tr = load_config_file(plan.config)
    path = plan.workdir / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"policy": {**pol, **policy}, "train": {**tr, **train}}, sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def plan_steps(plan: Plan) -> list[Step]:
    """Every step of the plan in run order (see the module docstring)."""
    lay, w, c, d = Layout(plan), plan.workdir, plan.corpus, plan.demos
    steps: dict[str, Step] = {}  # in run order
    wave = [0]  # the wave of the variant whose steps are being added

    def add(step: Step) -> str:
        if step.name not in steps:
            step.wave, steps[step.name] = wave[0], step
        return step.name

    def need_corpus(label_set: str) -> tuple[str, tuple]:
        """The corpus curated with a label set: (its registry ref, the steps that make it)."""
        sim = add(_simulate(plan, "simulate/corpus", c, c.episodes, w / "sim" / "corpus"))
        sets, latent = need_latent_model() if label_set == LATENT_LABEL_SET else (c.label_sets[label_set], ())
        cur = w / "cur" / f"corpus-{label_set}"
        cur_step = add(_curate(plan, f"curate/corpus-{label_set}", w / "sim" / "corpus", cur, c.episodes_per_shard,
                               sets, needs=(sim, *latent)))
        pub = add(_publish(lay, f"publish/corpus-{label_set}", cur, lay.corpus_name(label_set), c.version, (cur_step,)))
        return lay.ref(lay.corpus_name(label_set), c.version), (pub,)

    def need_demos(regime: int, latent: bool = False) -> tuple[str, tuple]:
        sim = w / "sim" / f"demos{regime}"
        sim_step = add(_simulate(plan, f"simulate/demos{regime}", d, regime, sim))
        tag = f"demos{regime}" + (f"-{LATENT_LABEL_SET}" if latent else "")
        name = lay.demos_name(regime) + (f"-{LATENT_LABEL_SET}" if latent else "")
        sets, model = need_latent_model() if latent else ([], ())
        cur_step = add(_curate(plan, f"curate/{tag}", sim, w / "cur" / tag, d.episodes_per_shard, sets,
                               needs=(sim_step, *model)))
        pub = add(_publish(lay, f"publish/{tag}", w / "cur" / tag, name, d.version, (cur_step,)))
        return lay.ref(name, d.version), (pub,)

    def need_latent_model() -> tuple[list[str], tuple]:
        """The latent action model trained on the corpus's frames: the --set that labels with it,
        and the step that trains it."""
        sim = add(_simulate(plan, "simulate/corpus", c, c.episodes, w / "sim" / "corpus"))
        train = add(_latent_train(plan, w / "sim" / "corpus", lay.latent_model_dir(), needs=(sim,)))
        return [*plan.latent_actions.label_set, f"labels.latent_checkpoint={lay.latent_model_dir()}"], (train,)

    def need_stage1(name: str) -> tuple[Path, tuple]:
        s1 = plan.stage1[name]
        init, init_needs = need_stage1(s1.init) if s1.init else (None, ())
        ref, corpus = need_corpus(s1.label_set)
        cfg = run_config(plan, f"stage1-{name}", s1.policy, s1.train)
        out = lay.stage1_dir(name)
        argv = ["policy", "train", "--data", ref, "--phase", s1.phase, "--config", str(cfg), "--steps", str(s1.steps),
                "--seed", "0", "--threads", str(plan.threads), "--out", str(out), "--json"]
        needs = (*init_needs, *corpus)
        if s1.label_set == LATENT_LABEL_SET:
            argv += ["--latent-checkpoint", str(lay.latent_model_dir())]
            needs += need_latent_model()[1]
        step = add(Step(f"stage1/{name}", "stage1", argv + (["--init", str(init)] if init is not None else []),
                        needs=needs, out=out))
        return out, (step,)

    e = plan.eval
    order = [(regime, seed, vname, v) for wave in sorted({v.wave for v in plan.variants.values()})
             for regime in plan.regimes for seed in plan.seeds for vname, v in plan.variants.items() if v.wave == wave]
    for regime, seed, vname, v in order:
        wave[0] = v.wave
        latent = v.stage1 is not None and plan.stage1[v.stage1].label_set == LATENT_LABEL_SET
        ref, demos = need_demos(regime, latent)
        init, stage1 = need_stage1(v.stage1) if v.stage1 else (None, ())
        cfg = run_config(plan, vname, v.policy, v.train)
        out = lay.run_dir(vname, regime, seed)
        key = {"variant": vname, "regime": regime, "seed": seed}
        argv = ["policy", "train", "--data", ref, "--phase", "action", "--config", str(cfg),
                "--steps", str(plan.action_steps[regime]), "--seed", str(seed), "--threads", str(plan.threads),
                "--fusion", v.fusion, "--out", str(out), "--json"]
        if init is not None:
            argv += ["--init", str(init)]
        train = add(Step(f"train/{vname}@{regime}/s{seed}", "train", argv, key=key, needs=(*demos, *stage1)))
        strips = lay.strips(vname, regime, seed)
        add(Step(f"eval/{vname}@{regime}/s{seed}", "eval",
                 ["policy", "eval", "--checkpoint", str(out), *[a for t in d.tasks for a in ("--task", t)],
                  "--episodes", str(e.episodes), "--max-steps", str(e.max_steps), "--eval-seed", str(e.seed),
                  "--threads", str(plan.threads), "--strips", str(strips), "--json"],
                 stdout=lay.eval_json(vname, regime, seed), clean=strips, key=key, needs=(train,)))
    return list(steps.values())


# ----------------------------------------------------------------------------- running
def run_command(argv: list[str], stdout: Optional[Path], log_path: Path, code: Optional[Path] = None,
                cpu: Optional[int] = None) -> None:
    """`curate ARGV` in a subprocess (this interpreter), stderr to log_path, stdout to `stdout`
    (or the log). code: a checkout whose packages the step imports instead of this one's (the
    frozen code an experiment's wave started on). cpu: the one core the step runs on. Raises
    RuntimeError naming the command and the log on a non-zero exit."""
    env = {**os.environ, **{k: v for k, v in STEP_ENV.items() if k not in os.environ}}
    if code is not None:  # `python -m` puts the working directory first on sys.path
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as lf:
        lf.write(f"\n$ curate {shlex.join(argv)}\n".encode())
        lf.flush()
        out = open(stdout, "wb") if stdout is not None else lf
        try:
            proc = subprocess.Popen([sys.executable, "-m", "cli.main", *argv], stdout=out, stderr=lf, env=env,
                                    cwd=code)
            if cpu is not None:  # pinned from here (not preexec_fn: unsafe with the runner's threads),
                os.sched_setaffinity(proc.pid, {cpu})  # long before the step starts any process of its own
            rc = proc.wait()
        finally:
            if stdout is not None:
                out.close()
    if rc != 0:
        raise RuntimeError(f"step failed (exit {rc}): curate {shlex.join(argv)}; see {log_path}")


def is_done(lay: Layout, step: Step) -> bool:
    return lay.marker(step.name).exists() and (step.stdout is None or step.stdout.exists())


def code_revision(code: Optional[Path]) -> Optional[str]:
    """The git commit the steps run on (`+dirty` with uncommitted changes); None outside git."""
    where = str(code or Path(__file__).resolve().parents[1])
    try:
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_step(lay: Layout, step: Step, execute: Callable, code: Optional[Path] = None,
             cpu: Optional[int] = None) -> float:
    """Run one step (in the checkout `code`, on core `cpu`, see run_command) and mark it done,
    with the commit it ran on; returns its wall seconds. Nothing is marked done, and no
    evaluation file appears, unless the command succeeded."""
    if step.clean is not None and step.clean.exists():
        shutil.rmtree(step.clean)
    tmp = None
    if step.stdout is not None:
        step.stdout.parent.mkdir(parents=True, exist_ok=True)
        tmp = step.stdout.with_name(step.stdout.name + ".partial")
    t0 = time.time()
    where = {k: v for k, v in (("code", code), ("cpu", cpu)) if v is not None}
    execute(step.argv, tmp, lay.log(step.name), **where)
    wall = time.time() - t0
    if tmp is not None:
        json.loads(tmp.read_text())  # a report that does not parse is a failed step
        os.replace(tmp, step.stdout)
    m = lay.marker(step.name)
    m.parent.mkdir(parents=True, exist_ok=True)
    rec = {"step": step.name, "command": step.command, "wall_s": wall,
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code_revision(code)}
    m.with_name(m.name + ".partial").write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(m.with_name(m.name + ".partial"), m)
    return wall


def git_commit(paths: list[Path], message: str) -> None:
    """Commit exactly `paths` in the repository holding the first of them (nothing else staged is
    touched); a commit that fails is logged, not fatal: the next one includes these files again."""
    rel = [str(p.resolve()) for p in paths if p.exists()]
    if not rel:
        return
    git = ["git", "-C", str(Path(rel[0]).parent)]
    try:
        subprocess.run([*git, "add", "--", *rel], check=True, capture_output=True)
        diff = subprocess.run([*git, "diff", "--cached", "--quiet", "--", *rel])
        if diff.returncode != 0:
            subprocess.run([*git, "commit", "-q", "-m", message, "--", *rel], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        log.warning("git commit of %s failed: %s", rel, (e.stderr or b"").decode(errors="replace").strip())


def matching_steps(steps: list[Step], only: Sequence[str]) -> list[str]:
    """The steps whose names match any of the `only` patterns (fnmatch: "stage1/*",
    "*/lafp@5/*"). Raises ValueError naming a pattern that matches no step."""
    todo = []
    for pattern in only:
        hits = [s.name for s in steps if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            raise ValueError(f"--only {pattern!r} matches no step of the plan (see --dry-run for their names)")
        todo += hits
    return todo


def select_steps(steps: list[Step], only: Sequence[str]) -> set[str]:
    """The steps matching the `only` patterns (matching_steps), with every step they need,
    transitively. No patterns: every step."""
    if not only:
        return {s.name for s in steps}
    by_name = {s.name: s for s in steps}
    todo = matching_steps(steps, only)
    chosen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo += by_name[name].needs
    return chosen


def required_steps(steps: list[Step], chosen: set[str], lay: Layout, landed: Landed,
                   targets: Sequence[str] = ()) -> set[str]:
    """The chosen steps still to run: an evaluation neither done nor landed, a step named by
    `targets` (what --only matched: "stage1/uv" runs it even before an evaluation needs it), and
    every step not done that one of those needs (directly or through another required step). A
    step with nothing after it that needs it (a dataset published for its own sake) runs when not
    done. Nothing done or landed runs again."""
    dependents: dict[str, list[str]] = {s.name: [] for s in steps}
    for s in steps:
        for n in s.needs:
            dependents[n].append(s.name)
    required: set[str] = set()
    for s in reversed(steps):  # needs come before their dependents: walk from the evaluations back
        if s.name not in chosen or is_done(lay, s) or landed.has_eval(s) or landed.has_artifact(s):
            continue
        if (s.kind == "eval" or s.name in targets or not dependents[s.name]
                or any(d in required for d in dependents[s.name])):
            required.add(s.name)
    return required


def restore_needed(lay: Layout, landed: Landed, steps: list[Step], to_run: set[str],
                   on_event: Callable[[str], None]) -> None:
    """Put back the landed artifacts (stage-1 weights, the latent model) that a step about to run
    reads and the workdir lacks (policy/experiment_landed.py)."""
    read = {n for s in steps if s.name in to_run for n in s.needs}
    for s in steps:
        if s.name in read and not is_done(lay, s) and landed.has_artifact(s):
            restore_artifact(lay, landed, s)
            on_event(f"[{time.strftime('%H:%M:%S')}] restored {s.name} from {landed.artifact(s.name)}")


def _skipped_status(lay: Layout, landed: Landed, step: Step, chosen: set[str]) -> Optional[dict]:
    """The report row's status of a step that does not run, or None for one that runs."""
    if is_done(lay, step):
        return {"status": "done", "wall_s": json.loads(lay.marker(step.name).read_text())["wall_s"]}
    if landed.has_eval(step) or landed.has_artifact(step):
        return {"status": "landed", "wall_s": None}
    if step.name not in chosen:
        return {"status": "not selected", "wall_s": None}
    return {"status": "not needed", "wall_s": None}


def _start_line(step: Step, cpu: Optional[int], code: Optional[Path]) -> str:
    where = "".join([f" on core {cpu}" if cpu is not None else "", f" in {code}" if code is not None else ""])
    return f"[{time.strftime('%H:%M:%S')}] start {step.name}{where}: {step.command}"


def run_steps(plan: Plan, steps: list[Step], todo: list[Step], execute: Callable,
              step_code: Callable[[Step], Optional[Path]], jobs: int, commit: bool,
              on_event: Callable[[str], None]) -> dict[str, float]:
    """Run `todo` (steps of the plan `steps`, in plan order) with up to `jobs` steps at once: a
    step starts when every step it needs is done, the earliest in plan order first, each pinned to a core of its own (of this
    process's, os.sched_getaffinity; jobs 1: not pinned, the plan order exactly). After an
    evaluation or a stage-1 run its records land, the results are rewritten and (commit) committed,
    in this thread only. A failed step starts nothing new; the running ones finish and land, then
    its error is raised. Returns step name -> wall seconds of the steps that ran."""
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise ValueError(f"--jobs {jobs}: this process may run on {len(cores)} core(s) ({cores})")
    lay, free = Layout(plan), (cores[:jobs] if jobs > 1 else [None])
    pending, running, walls, error = list(todo), {}, {}, None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while running or (pending and error is None):
            for step in list(pending):
                if not free or error is not None:
                    break
                if not all(lay.marker(n).exists() for n in step.needs):  # a running step has none yet
                    continue
                cpu, code = free.pop(0), step_code(step)
                on_event(_start_line(step, cpu, code))
                running[pool.submit(run_step, lay, step, execute, code, cpu)] = (step, cpu)
                pending.remove(step)
            if not running:  # cannot happen in plan order; a guard against a plan built out of order
                raise RuntimeError(f"steps {[s.name for s in pending]} need steps that are not done")
            for fut in wait(running, return_when=FIRST_COMPLETED).done:
                step, cpu = running.pop(fut)
                free.append(cpu)
                try:
                    walls[step.name] = fut.result()
                except Exception as e:  # noqa: BLE001 - raised once the running steps are done
                    error = error or e
                    on_event(f"[{time.strftime('%H:%M:%S')}] failed {step.name}: {e}")
                    continue
                on_event(f"[{time.strftime('%H:%M:%S')}] done  {step.name} in {walls[step.name] / 60:.1f} min")
                if step.kind == "eval" or step.kind in ARTIFACT_KINDS:
                    written = write_outputs(plan, steps)
                    if commit:
                        git_commit(written, f"motion-prior experiment: {step.name} landed ({plan.results})")
    if error is not None:
        raise error
    return walls


def run_plan(plan: Plan, execute: Callable = run_command, dry_run: bool = False, commit: bool = False,
             stop_after: Optional[int] = None, on_event: Callable[[str], None] = print,
             only: Sequence[str] = (), collect: bool = False, code: Optional[Path] = None, jobs: int = 1) -> dict:
    """Run every step still required (required_steps), in order; returns {"steps": [{step, status,
    wall_s, command}], ...}. Status: ran, done (its marker exists), landed (an evaluation in git),
    not needed (every evaluation that needs it landed), not selected (outside `only`), todo.
    stop_after: run at most this many steps in this call (tests stop a plan half way with it).
    only: run just the steps matching these patterns and what they need (select_steps).
    collect: run nothing; land the workdir's records and rewrite the results (and commit them).
    code: run every step on this checkout's code (run_command; else the plan's `code` per wave,
    policy/experiment_code.py); results and records stay here.
    jobs: steps run at once, each on a core of its own (run_steps)."""
    lay, landed = Layout(plan), Landed(plan)
    steps = plan_steps(plan)
    chosen = select_steps(steps, only)
    required = required_steps(steps, chosen, lay, landed, set(matching_steps(steps, only)))
    todo = [] if dry_run or collect else [s for s in steps if s.name in required][:stop_after]
    restore_needed(lay, landed, steps, {s.name for s in todo}, on_event)
    walls = run_steps(plan, steps, todo, execute, StepCode(plan, code), jobs, commit, on_event)
    report = []
    for step in steps:
        row = {"step": step.name, "command": step.command}
        if step.name in walls:
            report.append({**row, "status": "ran", "wall_s": walls[step.name]})
        elif step.name in required:
            report.append({**row, "status": "todo", "wall_s": None})
        else:
            report.append({**row, **_skipped_status(lay, landed, step, chosen)})
    ran = len(walls)
    written = [] if dry_run else write_outputs(plan, steps)
    if commit and written:
        git_commit(written, f"motion-prior experiment: results after {ran} step(s) ({plan.results})")
    done = sum(r["status"] in ("done", "ran", "landed") for r in report)
    return {"plan": str(plan.path), "workdir": str(plan.workdir), "results": str(plan.results),
            "steps_done": done, "steps_total": len(steps), "ran": ran, "steps": report}
