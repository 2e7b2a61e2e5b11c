"""The plan file of a policy experiment: data, variants, seeds and schedule in one YAML.

    workdir: /work/exp-data/motion_prior     # every big output (datasets, runs, evaluations)
    results: policy/results/motion_prior.json
    config: policy/configs/motion_prior.yaml # LaMPConfig / TrainConfig of every training run
    image_size: 96
    max_steps: 150                           # steps per simulated episode (corpus / demos may override)
    corpus:                                  # action-free video for stage 1
      tasks: [...]
      episodes: 50                           # per task
      seed: 0                                # layouts episode_seed(seed, task, i)
      label_sets:                            # curated versions of the same videos: name -> --set
        ours: []
        ground_truth: [labels.motion_source=ground_truth]
    demos: {tasks: [...], seed: 5000}        # the action data (target tasks)
    regimes: [5, 20]                         # demonstrations per target task
    stage1:                                  # pretraining runs: name -> label set, steps, overrides
      uvd: {label_set: ours, steps: 3000, policy: {motion_repr: uvd}}
      actions: {label_set: ours, steps: 3000, phase: prior, init: uvd, policy: {variant: action_prior}}
    variants:                                # stage 2: name -> stage1 (null = scratch) + fusion
      lamp: {stage1: uvd, fusion: gated_sigmoid}
      action_prior: {stage1: actions, fusion: none, wave: 1, policy: {variant: action_prior}}
    latent_actions:                          # optional: label set "latent" (variant lafp)
      steps: 1500                            # `curate latent train` on the corpus's frames
      gap: 8
      label_set: [labels.motion_source=ground_truth]  # --set of the corpus and demos curated with its tokens
    action_steps: {5: 1500, 20: 3000}        # per regime
    seeds: [0, 1, 2]                         # action-phase seeds
    code: {0: 6736f05, 1: 94c39a8}           # optional: wave -> the git revision its steps run on
    eval: {episodes: 50, seed: 10000, max_steps: 150}
    paired_against: [none, scratch]

A variant or stage-1 entry may carry `policy:` and `train:` override dicts (merged over `config`),
so a later variant is a new entry, not new code. A stage-1 entry trains phase `motion` unless it
names another (`prior`: a variant's own pretraining) and may start from another stage-1 run
(`init`). A variant's `wave` orders the plan as it grew: every step of wave 0 (regime, seed,
variant) comes before any of wave 1, so variants added to a running plan append their steps and
leave the order of the existing ones as it was. A stage-1 entry on label set "latent" (the
corpus curated again with the tokens of a latent action model trained on it, `latent_actions`)
trains with that model's codebook, and the variants that start from it train on the demos curated
with the same tokens. `Layout` says where every output lives under the
workdir, `Step` is one command of the plan. Nothing here runs anything (policy/experiment.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

FUSIONS_NEEDING_STAGE1 = ("gated_sigmoid", "gated_tanh", "concat", "add")
LATENT_LABEL_SET = "latent"  # the label set `latent_actions` defines (not one of corpus.label_sets)


@dataclass
class Corpus:
    tasks: list[str]
    episodes: int
    seed: int = 0
    name: str = "metaworld-corpus"
    version: str = "1.0.0"
    episodes_per_shard: int = 10
    label_sets: dict[str, list[str]] = field(default_factory=lambda: {"ours": []})
    max_steps: Optional[int] = None  # steps per episode; None = the plan's max_steps


@dataclass
class Demos:
    tasks: list[str]
    seed: int = 5000
    name: str = "metaworld-demos"
    version: str = "1.0.0"
    episodes_per_shard: int = 5
    max_steps: Optional[int] = None  # steps per episode; None = the plan's max_steps


@dataclass
class Stage1:
    label_set: str
    steps: int
    phase: str = "motion"  # motion, or a variant's own pretraining phase (policy.config.PHASES)
    init: Optional[str] = None  # another stage-1 entry to start from
    policy: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class LatentActions:
    """The latent action model of label set "latent": trained on the corpus's frames, then the
    corpus and the demos are curated again with its tokens (plus `label_set`'s --set)."""

    steps: int = 1500
    gap: int = 8
    seed: int = 0
    label_set: list[str] = field(default_factory=list)


@dataclass
class Variant:
    stage1: Optional[str]
    fusion: str = "none"
    wave: int = 0  # variants added to a running plan take a later wave (see the module docstring)
    policy: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSpec:
    episodes: int = 50
    seed: int = 10_000
    max_steps: int = 150


@dataclass
class Plan:
    path: Path
    workdir: Path
    results: Path
    config: Path
    image_size: int
    max_steps: int
    corpus: Corpus
    demos: Demos
    regimes: list[int]
    stage1: dict[str, Stage1]
    variants: dict[str, Variant]
    action_steps: dict[int, int]
    seeds: list[int]
    eval: EvalSpec
    curate: list[str] = field(default_factory=lambda: ["curation.dedup=null"])
    paired_against: list[str] = field(default_factory=lambda: ["none", "scratch"])
    threads: int = 1
    latent_actions: Optional[LatentActions] = None
    code: dict[int, str] = field(default_factory=dict)  # wave -> git revision its steps run on
    raw: dict = field(default_factory=dict)


def _build(cls, d: Any, where: str):
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan file; relative paths are taken from the current directory."""
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a plan is a mapping")
    d = dict(raw)
    try:
        plan = Plan(
            path=path, workdir=Path(d.pop("workdir")), results=Path(d.pop("results")), config=Path(d.pop("config")),
            image_size=int(d.pop("image_size")), max_steps=int(d.pop("max_steps")),
            corpus=_build(Corpus, d.pop("corpus"), f"{path}: corpus"),
            demos=_build(Demos, d.pop("demos"), f"{path}: demos"),
            regimes=[int(r) for r in d.pop("regimes")],
            stage1={k: _build(Stage1, v, f"{path}: stage1.{k}") for k, v in (d.pop("stage1", None) or {}).items()},
            variants={k: _build(Variant, v, f"{path}: variants.{k}") for k, v in d.pop("variants").items()},
            action_steps={int(k): int(v) for k, v in d.pop("action_steps").items()},
            seeds=[int(s) for s in d.pop("seeds")],
            eval=_build(EvalSpec, d.pop("eval", {}) or {}, f"{path}: eval"),
            raw=raw,
        )
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r}") from None
    for key in ("curate", "paired_against"):
        if key in d:
            setattr(plan, key, list(d.pop(key)))
    if "threads" in d:
        plan.threads = int(d.pop("threads"))
    if "code" in d:
        code = d.pop("code") or {}
        if not isinstance(code, dict):
            raise ValueError(f"{path}: code maps a wave to a git revision, e.g. {{0: 6736f05}}")
        plan.code = {int(k): str(v) for k, v in code.items()}
    if d.get("latent_actions") is not None:
        plan.latent_actions = _build(LatentActions, d.pop("latent_actions"), f"{path}: latent_actions")
    if d:
        raise ValueError(f"{path}: unknown keys {sorted(d)}")
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """Every name a plan refers to exists; the schedule covers every regime."""
    where = str(plan.path)
    from policy.config import PHASES

    sets = sorted(plan.corpus.label_sets) + ([LATENT_LABEL_SET] if plan.latent_actions is not None else [])
    for name, s1 in plan.stage1.items():
        if s1.label_set not in sets:
            raise ValueError(f"{where}: stage1.{name} uses label set {s1.label_set!r}; have {sets}"
                             + ("" if plan.latent_actions else f" ({LATENT_LABEL_SET!r} needs a latent_actions section)"))
        if s1.phase not in PHASES or s1.phase == "action":
            raise ValueError(f"{where}: stage1.{name} trains phase {s1.phase!r}; a pretraining phase is one of "
                             f"{[p for p in PHASES if p != 'action']}")
        chain, at = [name], s1.init
        while at is not None:
            if at not in plan.stage1 or at in chain:
                raise ValueError(f"{where}: stage1.{name} starts from {at!r}: " +
                                 ("a cycle" if at in chain else f"not a stage1 entry; have {sorted(plan.stage1)}"))
            chain.append(at)
            at = plan.stage1[at].init
    for name, v in plan.variants.items():
        if v.stage1 is not None and v.stage1 not in plan.stage1:
            raise ValueError(f"{where}: variant {name} starts from stage1 {v.stage1!r}; have {sorted(plan.stage1)}")
        if v.stage1 is None and v.fusion in FUSIONS_NEEDING_STAGE1:
            raise ValueError(f"{where}: variant {name} fuses motion ({v.fusion}) but has no stage1 to take it from")
    missing = [r for r in plan.regimes if r not in plan.action_steps]
    if missing:
        raise ValueError(f"{where}: action_steps has no entry for regimes {missing}")
    for b in plan.paired_against:
        if b not in plan.variants:
            raise ValueError(f"{where}: paired_against names {b!r}, not a variant")
    if not plan.seeds or not plan.regimes or min(plan.regimes) < 1:
        raise ValueError(f"{where}: need at least one seed and regimes >= 1")


@dataclass
class Step:
    name: str  # e.g. "train/lamp@5/s0"
    kind: str  # simulate | latent | curate | publish | stage1 | train | eval
    argv: list[str]  # arguments of `curate`
    stdout: Optional[Path] = None  # where the command's stdout goes (evaluation JSON), written atomically
    clean: Optional[Path] = None  # removed before a (re)run: a step that cannot resume starts over
    key: dict = field(default_factory=dict)  # variant / regime / seed of train and eval steps
    needs: tuple = ()  # names of the steps whose outputs this one reads (all earlier in the plan)
    out: Optional[Path] = None  # the output directory later steps read (stage-1 runs, the latent model)
    wave: int = 0  # the wave of the first variant that needs it (its code: Plan.code)

    @property
    def command(self) -> str:
        return "curate " + shlex.join(self.argv)


class Layout:
    """Where a plan's outputs live under its workdir."""

    def __init__(self, plan: Plan):
        self.plan, self.w = plan, plan.workdir

    def marker(self, step: str) -> Path:
        return self.w / "done" / (step.replace("/", "__") + ".json")

    def log(self, step: str) -> Path:
        return self.w / "logs" / (step.replace("/", "__") + ".log")

    def registry(self) -> str:
        return "file://" + str((self.w / "registry").resolve())

    def ref(self, name: str, version: str) -> str:
        return f"{self.registry()}/{name}@{version}"

    def corpus_name(self, label_set: str) -> str:
        return f"{self.plan.corpus.name}-{label_set}"

    def demos_name(self, regime: int) -> str:
        return f"{self.plan.demos.name}-{regime}"

    def run_dir(self, variant: str, regime: int, seed: int) -> Path:
        return self.w / "runs" / f"{variant}@{regime}-s{seed}"

    def latent_model_dir(self) -> Path:
        return self.w / "runs" / "latent-actions"

    def stage1_dir(self, name: str) -> Path:
        return self.w / "runs" / f"stage1-{name}"

    def eval_json(self, variant: str, regime: int, seed: int) -> Path:
        return self.w / "evals" / f"{variant}@{regime}-s{seed}.json"

    def strips(self, variant: str, regime: int, seed: int) -> Path:
        return self.w / "evals" / f"{variant}@{regime}-s{seed}-strips"
