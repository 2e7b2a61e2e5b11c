"""The motion-prior experiment's machinery: the motion-only loader (actions never read), the
ground-truth motion source, the 2D-track representation, the paired statistics, and the plan
runner's skip-and-resume (with a recording executor, then for real on a tiny plan)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_POLICY = dict(d_model=32, n_heads=2, vl_layers=1, motion_layers=1, action_layers=1, image_patch=8,
                   motion_points=16, motion_horizon=4, chunk_size=4, n_action_steps=2)
TINY_TRAIN = dict(batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=2, shuffle_buffer=8, torch_threads=1)


# ----------------------------------------------------------------------------- data fixtures
@pytest.fixture(scope="module")
def actionless_dir(tmp_path_factory, curated_dir):
    """A copy of the curated dataset with every shard's `actions` and `proprio` arrays deleted and
    their statistics removed: what is left is frames, language and motion."""
    out = tmp_path_factory.mktemp("actionless") / "ds"
    shutil.copytree(curated_dir, out)
    removed = 0
    for shard in (out / "shards").iterdir():
        for name in ("actions", "proprio"):
            if (shard / name).exists():
                shutil.rmtree(shard / name)
                removed += 1
    assert removed >= 2 * len(list((out / "shards").iterdir())) - 1
    stats = json.loads((out / "stats.json").read_text())
    for entry in stats["datasets"].values():
        entry.pop("actions", None)
        entry.pop("proprio", None)
    (out / "stats.json").write_text(json.dumps(stats))
    return out


# ----------------------------------------------------------------------------- motion-only mode
def test_motion_only_reader_never_reads_actions(curated_dir, actionless_dir):
    from curation import open_dataset

    full, bare = open_dataset(str(curated_dir)), open_dataset(str(actionless_dir))
    from curation.store.reader import DatasetIntegrityError

    with pytest.raises(DatasetIntegrityError, match="has no array 'actions'"):  # the ordinary read needs them
        next(iter(bare.iter_triplets()))
    ref = list(full.iter_triplets(chunk=4))
    got = list(bare.iter_triplets(chunk=4, motion_only=True))
    assert len(got) == len(ref) == full.num_triplets() > 0
    for a, b in zip(ref, got):
        assert (a.episode_id, a.anchor, a.language) == (b.episode_id, b.anchor, b.language)
        for cam in a.images:
            np.testing.assert_array_equal(a.images[cam], b.images[cam])
        assert set(a.motion) == set(b.motion)
        for k in a.motion:
            np.testing.assert_array_equal(a.motion[k], b.motion[k])
        assert b.action_chunk.shape == (4, 0) and not b.action_chunk_valid.any() and b.proprio.size == 0


def test_motion_only_stream_and_stage1_training_without_actions(curated_dir, actionless_dir, tmp_path):
    from curation import open_dataset
    from policy.config import LaMPConfig, TrainConfig
    from policy.loader import TripletStream
    from policy.train import train

    cfg = LaMPConfig(image_size=(64, 64), **TINY_POLICY)
    with pytest.raises(ValueError):  # without action statistics the ordinary stream has nothing to normalise by
        TripletStream(str(actionless_dir), cfg, shuffle_buffer=0, epochs=1)
    full = {(s["episode_id"], s["anchor"]): s for s in TripletStream(str(curated_dir), cfg, shuffle_buffer=0, epochs=1)}
    bare = list(TripletStream(str(actionless_dir), cfg, shuffle_buffer=0, epochs=1, motion_only=True))
    assert len(bare) == len(full)
    for s in bare:
        assert not {"action", "action_valid", "state"} & set(s)
        f = full[(s["episode_id"], s["anchor"])]
        np.testing.assert_array_equal(s["motion"], f["motion"])
        np.testing.assert_array_equal(s["motion_mask"], f["motion_mask"])
        np.testing.assert_array_equal(s["image"], f["image"])
    # stage 1 trains on the action-free copy; stage 2 then takes its action/state dims from its own data
    s1 = train(str(actionless_dir), tmp_path / "s1", cfg, TrainConfig(phase="motion", steps=2, **TINY_TRAIN), progress=False)
    assert np.isfinite(s1["final_loss"])
    s2 = train(str(curated_dir), tmp_path / "s2", LaMPConfig(fusion="gated_sigmoid", chunk_size=4, n_action_steps=2),
               TrainConfig(phase="action", steps=2, **TINY_TRAIN), init=str(tmp_path / "s1"), progress=False)
    state = json.loads((Path(s2["checkpoint"]) / "state.json").read_text())
    first = next(iter(open_dataset(str(curated_dir)).iter_triplets()))
    assert state["policy_config"]["action_dim"] == first.action_chunk.shape[-1]
    assert state["policy_config"]["state_dim"] == first.proprio.size
    assert state["policy_config"]["d_model"] == 32 and np.isfinite(s2["final_loss"])


# ----------------------------------------------------------------------------- ground-truth motion
def test_ground_truth_motion_source_equals_the_oracle(sim_dataset_dir):
    from curation.sources.rlds import read_episodes
    from labelers.eval import ground_truth as gt
    from labelers.episode_labeler import EpisodeLabeler, LabelConfig
    from schemas.episode import EpisodeError

    ep = next(iter(read_episodes(str(sim_dataset_dir))))
    ours = EpisodeLabeler(LabelConfig())(ep)
    true = EpisodeLabeler(LabelConfig(motion_source="ground_truth"))(ep)
    oracle = gt.true_labels(ep, ours.anchors, 20, true.tracks_px.shape[2])
    np.testing.assert_array_equal(true.anchors, ours.anchors)
    for name in ("tracks_px", "visible", "in_range", "points_cam_m", "valid_3d"):
        np.testing.assert_array_equal(getattr(true, name), getattr(oracle, name))
    assert true.backends["tracks"] == "ground_truth" and true.backends["flow"] == ours.backends["flow"]
    np.testing.assert_array_equal(true.motion_image, ours.motion_image)  # the rest of the labels are unchanged
    assert not np.array_equal(np.nan_to_num(true.tracks_px), np.nan_to_num(ours.tracks_px))  # LK is not the oracle
    ep.ground_truth = None
    with pytest.raises(EpisodeError, match="ground truth"):
        EpisodeLabeler(LabelConfig(motion_source="ground_truth"))(ep)
    with pytest.raises(ValueError, match="motion_source"):
        LabelConfig(motion_source="oracle")


# ----------------------------------------------------------------------------- 2D-track prior
def test_uv_representation_is_the_pixel_part_of_uvd():
    import torch

    from policy.config import LaMPConfig
    from policy.loader import TripletStream, collate, relative_motion
    from policy.modeling_lamp import LaMPPolicy
    from policy.testing.synthetic import SyntheticDataset

    syn = SyntheticDataset(num_shards=2, episodes_per_shard=2, anchors_per_episode=4)
    tr = next(iter(syn.iter_triplets()))
    uvd, m3, _ = relative_motion(tr.motion, "uvd")
    uv, m2, _ = relative_motion(tr.motion, "uv")
    assert uv.shape[-1] == m2.shape[-1] == 2
    np.testing.assert_array_equal(uv, uvd[..., :2])
    np.testing.assert_array_equal(m2, m3[..., :2])
    cfg = LaMPConfig(image_size=(64, 64), motion_repr="uv", **{**TINY_POLICY, "motion_points": 9})
    assert cfg.motion_channels == 2
    samples = [s for _, s in zip(range(4), TripletStream(syn, cfg, shuffle_buffer=0, motion_only=True))]
    batch = collate(samples)
    assert batch["motion"].shape == (4, 9, 4, 2)
    policy = LaMPPolicy(cfg)
    policy.set_phase("motion")
    loss, _ = policy(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    h, x_tau = policy.motion_expert.partial_denoise(batch["anchor_uv"], *policy.encode(batch))
    assert x_tau.shape == (4, 9, 4, 2) and h.shape == (4, 9, 32)


# ----------------------------------------------------------------------------- statistics
def test_paired_difference_values():
    from policy.paired_stats import paired_difference, rate_summary

    ones, zeros = np.ones((3, 50), int), np.zeros((3, 50), int)
    r = paired_difference({"a": ones, "b": ones}, {"a": zeros, "b": ones})
    assert r["diff"] == pytest.approx(0.5) and r["ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]  # stratified
    assert r["layouts"] == 100
    same = paired_difference({"a": ones}, {"a": ones})
    assert same["diff"] == 0 and same["ci95"] == [0, 0]
    # Large random sample: the percentile interval matches the normal approximation of the paired mean.
    rng = np.random.default_rng(1)
    a, b = (rng.random((2, 2000)) < 0.6).astype(int), (rng.random((2, 2000)) < 0.5).astype(int)
    d = a.mean(0) - b.mean(0)
    r = paired_difference({"t": a}, {"t": b})
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert r["diff"] == pytest.approx(d.mean())
    assert r["ci95"][0] == pytest.approx(d.mean() - half, abs=0.006)
    assert r["ci95"][1] == pytest.approx(d.mean() + half, abs=0.006)
    with pytest.raises(ValueError):
        paired_difference({"t": a}, {"t": b[:1]})
    s = rate_summary(160, 300)  # the earlier experiment's LaMP row: 0.53 [0.48, 0.59]
    assert s["rate"] == pytest.approx(0.533, abs=1e-3)
    assert s["ci95"][0] == pytest.approx(0.477, abs=1e-3) and s["ci95"][1] == pytest.approx(0.589, abs=1e-3)


# ----------------------------------------------------------------------------- the runner
def write_plan(tmp_path: Path, policy: dict = TINY_POLICY, **over) -> Path:
    """A one-task, one-regime plan of tiny steps at 32 px; `over` replaces top-level entries."""
    import yaml

    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "tiny_config.yaml"
    cfg.write_text(yaml.safe_dump({"policy": policy, "train": TINY_TRAIN}))
    plan = {
        "workdir": str(tmp_path / "work"), "results": str(tmp_path / "results" / "mp.json"), "config": str(cfg),
        "image_size": 32, "max_steps": 12,
        "corpus": {"tasks": ["button-press-topdown-v3"], "episodes": 1, "episodes_per_shard": 1},
        "demos": {"tasks": ["button-press-topdown-v3"], "seed": 5000, "episodes_per_shard": 1},
        "regimes": [1],
        "stage1": {"uvd": {"label_set": "ours", "steps": 2}},
        "variants": {"scratch": {"stage1": None, "fusion": "none"}, "lamp": {"stage1": "uvd", "fusion": "gated_sigmoid"}},
        "action_steps": {1: 2}, "seeds": [0], "eval": {"episodes": 2, "max_steps": 4},
        "paired_against": ["scratch"],
    }
    plan.update(over)
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan, sort_keys=False))  # variant order is run order
    return p


class Recorder:
    """A stand-in executor: records each command and writes what an evaluation would print."""

    def __init__(self, fail_on: str = ""):
        self.calls: list[str] = []
        self.where: list[dict] = []  # code / cpu the runner passed with each call
        self.fail_on = fail_on

    def __call__(self, argv, stdout, log_path, **where):
        cmd = " ".join(argv)
        self.calls.append(cmd)
        self.where.append(where)
        if self.fail_on and self.fail_on in cmd:
            raise RuntimeError(f"step failed: {cmd}")
        if stdout is not None:
            seed = int(argv[argv.index("--checkpoint") + 1].rsplit("-s", 1)[1])
            lamp = "lamp@" in cmd
            stdout.write_text(json.dumps({"tasks": [{"task": "button-press-topdown-v3", "outcomes": [1, int(lamp or seed)]}]}))


def test_plan_steps_order_and_validation(tmp_path):
    from policy.experiment import plan_steps
    from policy.experiment_plan import load_plan

    plan = load_plan(write_plan(tmp_path, regimes=[1, 2], action_steps={1: 2, 2: 3}, seeds=[0, 1]))
    names = [s.name for s in plan_steps(plan)]
    assert names[:5] == ["simulate/demos1", "curate/demos1", "publish/demos1", "train/scratch@1/s0", "eval/scratch@1/s0"]
    assert names.index("stage1/uvd") < names.index("train/lamp@1/s0")
    assert names.index("eval/lamp@1/s1") < names.index("simulate/demos2")  # the small regime finishes first
    assert len(names) == len(set(names)) == 3 + 3 + 1 + 3 + 2 * 2 * 2 * 2
    for bad, msg in [({"variants": {"lamp": {"stage1": "nope", "fusion": "gated_sigmoid"}}}, "stage1"),
                     ({"variants": {"lamp": {"stage1": None, "fusion": "gated_sigmoid"}}}, "no stage1"),
                     ({"action_steps": {2: 2}}, "action_steps"), ({"bogus": 1}, "unknown keys")]:
        with pytest.raises(ValueError, match=msg):
            load_plan(write_plan(tmp_path, **bad))


def test_cli_experiment_dry_run_and_bad_plan(tmp_path, capsys):
    from cli.main import main

    plan = write_plan(tmp_path)
    assert main(["policy", "experiment", str(plan), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps_done"] == 0 and out["ran"] == 0 and {s["status"] for s in out["steps"]} == {"todo"}
    assert out["steps"][0]["command"].startswith("curate simulate --task button-press-topdown-v3")
    assert not (tmp_path / "work" / "done").exists()
    bad = write_plan(tmp_path, variants={"lamp": {"stage1": "nope", "fusion": "gated_sigmoid"}})
    assert main(["policy", "experiment", str(bad), "--dry-run"]) == 1
    assert "stage1 'nope'" in capsys.readouterr().err


def test_only_runs_the_chosen_steps_and_what_they_need(tmp_path):
    from policy.experiment import plan_steps, run_plan, select_steps
    from policy.experiment_plan import load_plan

    plan = load_plan(write_plan(tmp_path, seeds=[0, 1]))
    steps = plan_steps(plan)
    index = {s.name: i for i, s in enumerate(steps)}
    assert all(index[n] < index[s.name] for s in steps for n in s.needs)  # needs come first
    assert dict((s.name, s.needs) for s in steps)["train/lamp@1/s1"] == ("publish/demos1", "stage1/uvd")
    assert select_steps(steps, ["stage1/*"]) == {"simulate/corpus", "curate/corpus-ours", "publish/corpus-ours",
                                                  "stage1/uvd"}
    rec = Recorder()
    r = run_plan(plan, execute=rec, on_event=lambda s: None, only=["eval/lamp@1/s1"])
    ran = [s["step"] for s in r["steps"] if s["status"] == "ran"]
    assert ran == ["simulate/demos1", "curate/demos1", "publish/demos1", "simulate/corpus", "curate/corpus-ours",
                   "publish/corpus-ours", "stage1/uvd", "train/lamp@1/s1", "eval/lamp@1/s1"] and len(rec.calls) == 9
    assert {s["status"] for s in r["steps"] if s["step"] not in ran} == {"not selected"}
    assert r["steps_done"] == 9 and r["steps_total"] == len(steps)
    with pytest.raises(ValueError, match="'train/nope' matches no step"):
        run_plan(plan, execute=rec, on_event=lambda s: None, only=["train/nope"])


def test_a_step_named_by_only_runs_even_when_every_evaluation_after_it_landed(tmp_path):
    """--only stage1/uvd on a fresh machine whose evaluations all landed: the stage-1 run (and
    what it needs) runs, to land its weights; without --only nothing runs."""
    from policy.experiment import run_plan
    from policy.experiment_plan import load_plan

    plan = load_plan(write_plan(tmp_path))
    run_plan(plan, execute=Recorder(), on_event=lambda s: None)
    shutil.rmtree(plan.workdir)
    assert run_plan(plan, execute=Recorder(), on_event=lambda s: None)["ran"] == 0
    r = run_plan(plan, execute=(rec := Recorder()), on_event=lambda s: None, only=["stage1/uvd"])
    assert [s["step"] for s in r["steps"] if s["status"] == "ran"] == [
        "simulate/corpus", "curate/corpus-ours", "publish/corpus-ours", "stage1/uvd"] and len(rec.calls) == 4


class SlowRecorder(Recorder):
    """A Recorder whose steps take a moment, and which checks at every start that the steps it
    needs have finished (their markers exist) and notes which steps ran at the same time."""

    def __init__(self, plan, fail_on: str = ""):
        from policy.experiment import plan_steps
        from policy.experiment_plan import Layout

        super().__init__(fail_on)
        self.lay, self.by_command = Layout(plan), {s.command: s for s in plan_steps(plan)}
        self.running: set[str] = set()
        self.overlaps: list[tuple[str, str, int]] = []  # (step, step running beside it, its core)
        self.lock = threading.Lock()

    def __call__(self, argv, stdout, log_path, **where):
        import shlex

        step = self.by_command["curate " + shlex.join(argv)]
        assert all(self.lay.marker(n).exists() for n in step.needs), step.name
        with self.lock:
            self.overlaps += [(step.name, other, where.get("cpu")) for other in self.running]
            self.running.add(step.name)
        try:
            time.sleep(0.05)
            super().__call__(argv, stdout, log_path, **where)
        finally:
            with self.lock:
                self.running.discard(step.name)


def test_two_jobs_run_independent_steps_at_once_on_their_own_cores_with_the_same_results(tmp_path, monkeypatch):
    from policy.experiment import plan_steps, run_plan
    from policy.experiment_plan import load_plan

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # the cores the runner may use
    one = load_plan(write_plan(tmp_path / "one", seeds=[0, 1]))
    run_plan(one, execute=Recorder(), on_event=lambda s: None)
    two = load_plan(write_plan(tmp_path / "two", seeds=[0, 1]))
    rec = SlowRecorder(two)
    r = run_plan(two, execute=rec, on_event=lambda s: None, jobs=2)
    assert r["ran"] == len(plan_steps(two)) == len(rec.calls)
    assert rec.overlaps and {w["cpu"] for w in rec.where} == {0, 1}
    assert all(cpu in (0, 1) for _, _, cpu in rec.overlaps)
    ran_together = {frozenset(o[:2]) for o in rec.overlaps}
    assert frozenset({"simulate/demos1", "simulate/corpus"}) in ran_together  # independent: started together
    a, b = json.loads(one.results.read_text()), json.loads(two.results.read_text())
    assert a["variants"] == b["variants"] and a["paired"] == b["paired"]
    with pytest.raises(ValueError, match="--jobs 3: this process may run on 2 core"):
        run_plan(load_plan(write_plan(tmp_path / "three")), execute=Recorder(), on_event=lambda s: None, jobs=3)


def test_a_failed_step_among_two_jobs_lets_the_other_finish_and_land_then_raises(tmp_path, monkeypatch):
    from policy.experiment import run_plan
    from policy.experiment_plan import Layout, load_plan

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    plan = load_plan(write_plan(tmp_path))
    rec = SlowRecorder(plan, fail_on="simulate --task button-press-topdown-v3 --episodes 1 --size 32 --max-steps 12 --seed 0")
    with pytest.raises(RuntimeError, match="step failed"):
        run_plan(plan, execute=rec, on_event=lambda s: None, jobs=2)
    lay = Layout(plan)
    assert not lay.marker("simulate/corpus").exists() and lay.marker("simulate/demos1").exists()
    assert not any(c.startswith("policy") for c in rec.calls)  # nothing new started after the failure


def test_each_wave_runs_on_a_worktree_of_its_revision(tmp_path):
    import subprocess

    from policy.experiment import plan_steps, run_plan
    from policy.experiment_code import StepCode, ensure_worktree
    from policy.experiment_plan import load_plan

    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    revs = []
    for text in ("frozen wave 1", "later"):
        (repo / "code.txt").write_text(text)
        subprocess.run([*git, "add", "code.txt"], check=True)
        subprocess.run([*git, "commit", "-qm", text], check=True)
        revs.append(subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip())
    variants = {"scratch": {"stage1": None, "fusion": "none"},
                "lamp": {"stage1": "uvd", "fusion": "gated_sigmoid", "wave": 1}}
    plan = load_plan(write_plan(tmp_path, variants=variants, code={1: revs[0]}))
    waves = {s.name: s.wave for s in plan_steps(plan)}
    assert waves["simulate/demos1"] == waves["train/scratch@1/s0"] == 0
    assert waves["simulate/corpus"] == waves["stage1/uvd"] == waves["eval/lamp@1/s0"] == 1  # first needed by wave 1
    code = StepCode(plan, repo=repo)
    steps = {s.name: s for s in plan_steps(plan)}
    assert code(steps["train/scratch@1/s0"]) is None  # no entry for wave 0: the runner's own checkout
    tree = code(steps["stage1/uvd"])
    assert tree == plan.workdir.resolve() / "code" / revs[0] and (tree / "code.txt").read_text() == "frozen wave 1"
    assert ensure_worktree(repo, revs[0], tree.parent) == tree  # there already: kept
    subprocess.run(["git", "-C", str(tree), "checkout", "-q", "--detach", revs[1]], check=True)
    with pytest.raises(ValueError, match="a checkout at .* where the plan's wave runs on"):
        ensure_worktree(repo, revs[0], tree.parent)
    with pytest.raises(ValueError, match="rev-parse"):
        ensure_worktree(repo, "0" * 40, tree.parent)
    assert StepCode(plan, override=tmp_path)(steps["stage1/uvd"]) == tmp_path  # --code wins
    rec = Recorder()
    run_plan(load_plan(write_plan(tmp_path / "p2", variants=variants)), execute=rec, on_event=lambda s: None)
    assert rec.where and all(w == {} for w in rec.where)  # no code map, one job: nothing passed


def test_runner_skips_finished_steps_and_reruns_a_failed_one(tmp_path):
    from policy.experiment import plan_steps, run_plan
    from policy.experiment_plan import Layout, load_plan

    plan = load_plan(write_plan(tmp_path, seeds=[0, 1]))
    n = len(plan_steps(plan))
    first = Recorder()
    r = run_plan(plan, execute=first, stop_after=4, on_event=lambda s: None)
    assert r["ran"] == 4 and len(first.calls) == 4 and r["steps_done"] == 4
    crash = Recorder(fail_on="policy eval --checkpoint " + str(tmp_path / "work" / "runs" / "lamp@1-s0"))
    with pytest.raises(RuntimeError):
        run_plan(plan, execute=crash, on_event=lambda s: None)
    lay = Layout(plan)
    assert not lay.eval_json("lamp", 1, 0).exists() and not lay.marker("eval/lamp@1/s0").exists()
    assert json.loads(plan.results.read_text())["variants"].keys() == {"scratch@1"}  # results so far
    rest = Recorder()
    r = run_plan(plan, execute=rest, on_event=lambda s: None)
    assert rest.calls[0].startswith("policy eval --checkpoint") and "lamp@1-s0" in rest.calls[0]
    assert len(first.calls) + len(crash.calls) - 1 + len(rest.calls) == n  # each step succeeded exactly once
    assert r["steps_done"] == n and [s["status"] for s in r["steps"]].count("ran") == len(rest.calls)
    again = Recorder()
    assert run_plan(plan, execute=again, on_event=lambda s: None)["ran"] == 0 and again.calls == []
    res = json.loads(plan.results.read_text())
    assert res["variants"]["lamp@1"]["successes"] == 4 and res["variants"]["scratch@1"]["successes"] == 3
    assert res["variants"]["scratch@1"]["per_seed"]["0"]["successes"] == 1
    assert res["paired"]["lamp - scratch@1"]["diff"] == pytest.approx(0.25)
    assert res["paired"]["lamp - scratch@1"]["seeds"] == [0, 1]
    assert res["protocol"]["steps_done"] == n and res["variants"]["lamp@1"]["complete"]
    assert res["protocol"]["shared_layout_seeds"] == {"corpus_eval": 0, "demos_eval": 0, "corpus_demos": 0}


def test_a_plan_whose_workdir_is_lost_keeps_its_results_and_reruns_only_what_a_missing_evaluation_needs(
        tmp_path, caplog):
    from policy.experiment import plan_steps, run_plan
    from policy.experiment_landed import Landed
    from policy.experiment_plan import Layout, load_plan

    plan = load_plan(write_plan(tmp_path, seeds=[0, 1]))
    run_plan(plan, execute=Recorder(), on_event=lambda s: None)
    before = json.loads(plan.results.read_text())
    landed = Landed(plan)
    assert json.loads(landed.eval_json("lamp", 1, 1).read_text())["tasks"][0]["outcomes"] == [1, 1]
    assert len(list((landed.root / "done").iterdir())) == len(plan_steps(plan))
    shutil.rmtree(plan.workdir)  # the machine is gone: data, checkpoints, markers
    landed.eval_json("lamp", 1, 1).unlink()  # one evaluation never landed
    rec = Recorder()
    r = run_plan(plan, execute=rec, on_event=lambda s: None)
    status = {s["step"]: s["status"] for s in r["steps"]}
    assert [s for s, v in status.items() if v == "ran"] == [
        "simulate/demos1", "curate/demos1", "publish/demos1", "simulate/corpus", "curate/corpus-ours",
        "publish/corpus-ours", "stage1/uvd", "train/lamp@1/s1", "eval/lamp@1/s1"] and len(rec.calls) == 9
    assert status["eval/scratch@1/s0"] == status["eval/lamp@1/s0"] == "landed"
    assert status["train/scratch@1/s0"] == status["train/lamp@1/s0"] == "not needed"
    after = json.loads(plan.results.read_text())
    assert after["variants"] == before["variants"] and after["paired"] == before["paired"]
    assert after["protocol"]["steps_done"] == before["protocol"]["steps_done"] == len(plan_steps(plan))
    assert after["protocol"]["datasets"] == before["protocol"]["datasets"]
    # an evaluation run again elsewhere with other outcomes does not replace the landed one
    lay = Layout(plan)
    lay.eval_json("lamp", 1, 1).write_text(json.dumps({"tasks": [{"task": "button-press-topdown-v3", "outcomes": [0, 0]}]}))
    r = run_plan(plan, execute=Recorder(), on_event=lambda s: None, collect=True)
    assert r["ran"] == 0 and "evaluated again with different outcomes" in caplog.text
    assert json.loads(landed.eval_json("lamp", 1, 1).read_text())["tasks"][0]["outcomes"] == [1, 1]
    assert json.loads(plan.results.read_text())["variants"] == before["variants"]


class TrainingRecorder(Recorder):
    """A Recorder whose `policy train` steps leave what a real run leaves in --out: two
    checkpoints with optimizer state, the LAST pointer, the metrics."""

    def __call__(self, argv, stdout, log_path, **where):
        super().__call__(argv, stdout, log_path, **where)
        if argv[:2] == ["policy", "train"]:
            out = Path(argv[argv.index("--out") + 1])
            for step in (1, 2):
                d = out / "checkpoints" / f"step-{step:07d}"
                d.mkdir(parents=True, exist_ok=True)
                for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
                    (d / name).write_bytes(f"{out.name} {step} {name}".encode())
            (out / "checkpoints" / "LAST").write_text("step-0000002\n")
            (out / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')


def test_a_landed_stage1_run_stands_in_for_its_corpus_and_training_on_a_fresh_machine(tmp_path):
    from policy.experiment import run_plan
    from policy.experiment_landed import Landed
    from policy.experiment_plan import Layout, load_plan

    plan = load_plan(write_plan(tmp_path, seeds=[0, 1]))
    run_plan(plan, execute=TrainingRecorder(), on_event=lambda s: None)
    landed, lay = Landed(plan), Layout(plan)
    files = json.loads(landed.manifest("stage1/uvd").read_text())["files"]
    assert sorted(files) == ["checkpoints/LAST", "checkpoints/step-0000002/model.safetensors",
                             "checkpoints/step-0000002/state.json", "metrics.jsonl"]  # newest weights only
    weights = (lay.stage1_dir("uvd") / "checkpoints/step-0000002/model.safetensors").read_bytes()
    landed_marker = landed.marker("stage1/uvd").read_text()
    shutil.rmtree(plan.workdir)
    landed.eval_json("lamp", 1, 1).unlink()
    events: list[str] = []
    r = run_plan(plan, execute=(rec := TrainingRecorder()), on_event=events.append)
    status = {s["step"]: s["status"] for s in r["steps"]}
    assert [s for s, v in status.items() if v == "ran"] == [
        "simulate/demos1", "curate/demos1", "publish/demos1", "train/lamp@1/s1", "eval/lamp@1/s1"]
    assert len(rec.calls) == 5 and status["stage1/uvd"] == "done" and status["simulate/corpus"] == "not needed"
    assert any("restored stage1/uvd" in e for e in events)
    restored = lay.stage1_dir("uvd")
    assert (restored / "checkpoints/step-0000002/model.safetensors").read_bytes() == weights
    assert not (restored / "checkpoints/step-0000002/optimizer.safetensors").exists()
    assert "restored_from" in lay.marker("stage1/uvd").read_text()
    assert landed.marker("stage1/uvd").read_text() == landed_marker  # the landed record is not rewritten
    # dry run on another fresh machine: the artifact counts as landed, nothing is copied
    shutil.rmtree(plan.workdir)
    landed.eval_json("lamp", 1, 1).unlink()
    r = run_plan(plan, execute=Recorder(), dry_run=True, on_event=lambda s: None)
    assert {s["step"]: s["status"] for s in r["steps"]}["stage1/uvd"] == "landed" and not lay.stage1_dir("uvd").exists()
    # a damaged landed file is refused by name, before the workdir is touched
    (landed.artifact("stage1/uvd") / "checkpoints/step-0000002/model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match=r"step-0000002/model.safetensors of step stage1/uvd .*sha256"):
        run_plan(plan, execute=Recorder(), on_event=lambda s: None)
    assert not lay.stage1_dir("uvd").exists()


def test_steps_run_on_the_code_of_the_checkout_they_are_given(tmp_path):
    """--code DIR: a step imports DIR's packages (a frozen worktree), not the runner's."""
    from policy.experiment import code_revision, run_command

    frozen = tmp_path / "frozen"
    (frozen / "cli").mkdir(parents=True)
    (frozen / "cli" / "__init__.py").write_text("")
    (frozen / "cli" / "main.py").write_text("import sys\nprint('frozen code', sys.argv[1:])\n")
    out = tmp_path / "out.txt"
    run_command(["policy", "eval"], out, tmp_path / "log.txt", code=frozen)
    assert out.read_text().strip() == "frozen code ['policy', 'eval']"
    with pytest.raises(RuntimeError, match=r"exit 2\): curate nope"):
        run_command(["nope"], None, tmp_path / "log.txt")  # this checkout's curate: an unknown command
    assert code_revision(frozen) is None  # not a git checkout
    assert len(code_revision(None).split("+")[0]) == 40
    # cpu: the step runs pinned to that one core (its own view of its affinity)
    (frozen / "cli" / "main.py").write_text("import os, time\ntime.sleep(0.3)\nprint(sorted(os.sched_getaffinity(0)))\n")
    core = max(os.sched_getaffinity(0))
    run_command(["policy", "eval"], out, tmp_path / "log.txt", code=frozen, cpu=core)
    assert out.read_text().strip() == f"[{core}]"


def test_tiny_plan_runs_for_real_and_resumes(tmp_path):
    """Real commands end to end (simulate, curate run, publish, stage 1 motion-only, action runs,
    evaluation), stopped after the scratch run and continued."""
    from policy.experiment import run_plan
    from policy.experiment_plan import Layout, load_plan

    plan = load_plan(write_plan(tmp_path))
    r1 = run_plan(plan, stop_after=4, on_event=lambda s: None)
    assert [s["step"] for s in r1["steps"] if s["status"] == "ran"] == [
        "simulate/demos1", "curate/demos1", "publish/demos1", "train/scratch@1/s0"]
    lay = Layout(plan)
    scratch_metrics = (lay.run_dir("scratch", 1, 0) / "metrics.jsonl").read_text()
    r2 = run_plan(plan, on_event=lambda s: None)
    assert [s["status"] for s in r2["steps"]][:4] == ["done"] * 4 and r2["steps_done"] == r2["steps_total"]
    assert (lay.run_dir("scratch", 1, 0) / "metrics.jsonl").read_text() == scratch_metrics  # not trained again
    res = json.loads(plan.results.read_text())
    assert {k: v["trials"] for k, v in res["variants"].items()} == {"scratch@1": 2, "lamp@1": 2}
    assert set(res["paired"]) == {"lamp - scratch@1"}
    ds = res["protocol"]["datasets"]
    assert ds["metaworld-demos-1"]["episodes"] == 1 and ds["metaworld-corpus-ours"]["episodes"] == 1
    stage1 = json.loads((lay.stage1_dir("uvd") / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert stage1["phase"] == "motion"
    assert Path(f"{plan.results.with_suffix('')}_curves_1.png").exists()
