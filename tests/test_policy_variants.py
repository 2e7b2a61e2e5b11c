"""The trainer's variants (policy/variants.py): the motion-image head and action-prior pretraining.
Shapes, masking of invalid entries, the loss at initialisation, overfitting, resume equality and
the variant switch (what a variant adds to acting, and what it must not)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from cli.bench.policy import synthetic_batch
from policy.action_history import PAST_ACTIONS, PAST_ACTIONS_VALID, with_action_history
from policy.config import LaMPConfig, TrainConfig
from policy.loader import TripletStream, collate
from policy.modeling_lamp import LaMPPolicy
from policy.motion_image_head import MOTION_IMAGE_FLOW_SCALE_PX, decode_flow
from policy.testing.synthetic import SyntheticDataset

TINY = dict(image_size=(32, 32), image_patch=8, d_model=32, n_heads=2, vl_layers=1, motion_layers=1,
            action_layers=1, motion_points=9, motion_horizon=4, text_max_len=24, fusion="none",
            motion_image_grid=4, motion_image_layers=1, prior_history=4, prior_layers=1)


def tiny_policy(variant: str, **kw) -> LaMPPolicy:
    torch.manual_seed(0)
    return LaMPPolicy(LaMPConfig(**{**TINY, "variant": variant, **kw}))


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, log_every=2, warmup_steps=2, checkpoint_every=1000, shuffle_buffer=8, seed=0)
    return TrainConfig(**{**base, **kw})


class WithMotionImages:
    """SyntheticDataset plus the motion_image label, encoded by the labeler's own encoder: the
    square's pixels move by its velocity, the rest stays; the last anchor of an episode has no
    next frame (flow_valid False), as the labeler marks it."""

    def __init__(self, ds: SyntheticDataset):
        self.ds = ds
        self.shard_names, self.stats, self.info = ds.shard_names, ds.stats, ds.info

    @property
    def manifest(self):
        return self.ds.manifest

    def __len__(self):
        return len(self.ds)

    def iter_triplets(self, shards=None, chunk=10, motion_only=False, **kwargs):
        from labelers.flow import encode_motion_image

        for tr in self.ds.iter_triplets(shards=shards, chunk=chunk, motion_only=motion_only, **kwargs):
            S = tr.images["image"].shape[0]
            flow = np.zeros((S, S, 2), np.float32)
            moving = np.any(tr.images["image"] != 110, axis=-1)  # the square (the table is grey 110)
            vel = tr.motion["tracks_px"][:, 1] - tr.motion["tracks_px"][:, 0]  # K 2: per-step motion of each point
            flow[moving] = vel[np.argmax(np.linalg.norm(vel, axis=-1))]
            valid = tr.anchor != self.ds.anchors_per_episode - 1
            yield dataclasses.replace(tr, motion={**tr.motion, "motion_image": encode_motion_image(flow),
                                                  "flow_valid": np.bool_(valid)})


@pytest.fixture(scope="module")
def mi_data():
    return WithMotionImages(SyntheticDataset(num_shards=2, episodes_per_shard=2, anchors_per_episode=4))


# ----------------------------------------------------------------------------- the switch
def test_lamp_builds_nothing_and_variants_leave_the_base_weights_as_they_are():
    base = tiny_policy("lamp")
    assert base.extra is None
    for variant in ("motion_image", "action_prior"):
        p = tiny_policy(variant)
        own, theirs = base.state_dict(), p.state_dict()
        extra = sorted(set(theirs) - set(own))
        assert extra and all(k.startswith("extra.") for k in extra)
        assert set(own) <= set(theirs) and all(torch.equal(own[k], theirs[k]) for k in own)
    with pytest.raises(ValueError, match="variant must be one of"):
        LaMPConfig(variant="motion")
    with pytest.raises(ValueError, match="phase 'prior'"):
        base.set_phase("prior")


def test_motion_image_head_is_not_on_the_acting_path(monkeypatch):
    base, mi = tiny_policy("lamp"), tiny_policy("motion_image")
    batch = synthetic_batch(mi.config, 2)
    obs = {k: v for k, v in batch.items() if k not in ("motion_image", "motion_image_valid")}

    def boom(*a, **k):
        raise AssertionError("the motion-image head ran while acting")

    monkeypatch.setattr(mi.extra.head, "forward", boom)
    a = base.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    b = mi.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # and in training the action loss is the base's exactly (the head draws its noise after it)
    base.set_phase("action"), mi.set_phase("action")
    mi.extra.head.forward = lambda x_t, t, vl, pad=None: torch.zeros_like(x_t)
    la, _ = base(batch, torch.Generator().manual_seed(5))
    lb, logs = mi(batch, torch.Generator().manual_seed(5))
    assert logs["action_loss"] == pytest.approx(float(la), abs=0)
    assert float(lb) > float(la)  # + the head's loss (zero velocity is not the target)


# ----------------------------------------------------------------------------- motion image
def test_decode_flow_is_the_labelers_decoder():
    from labelers.flow import decode_motion_image

    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    assert np.array_equal(decode_flow(img), decode_motion_image(img))


def test_motion_image_target_pools_decoded_flow_and_masks_missing_flow(mi_data):
    cfg = LaMPConfig(**{**TINY, "variant": "motion_image"})
    stream = TripletStream(mi_data, cfg, shuffle_buffer=1, epochs=1)
    trs = list(mi_data.iter_triplets(shards=mi_data.shard_names[:1]))
    s = stream.transform(trs[0])
    G = cfg.motion_image_grid
    assert s["motion_image"].shape == (G, G, 2) and s["motion_image_valid"].all()
    from labelers.flow import decode_motion_image

    flow = decode_motion_image(trs[0].motion["motion_image"])  # 32 32 2
    cell = flow.reshape(G, 32 // G, G, 32 // G, 2).mean(axis=(1, 3))  # G G 2
    assert np.allclose(s["motion_image"], cell / MOTION_IMAGE_FLOW_SCALE_PX, atol=1e-4)
    assert np.abs(s["motion_image"]).max() > 1  # the square's cells move
    last = stream.transform(trs[3])  # no next frame
    assert not last["motion_image_valid"].any() and not last["motion_image"].any()
    bare = dataclasses.replace(trs[0], motion={k: v for k, v in trs[0].motion.items() if k != "motion_image"})
    with pytest.raises(ValueError, match="syn-0-0.*motion_image"):
        stream.transform(bare)


def test_motion_image_loss_ignores_invalid_cells_and_starts_near_the_zero_velocity_loss():
    p = tiny_policy("motion_image")
    p.set_phase("action")
    head = p.extra.head
    b = synthetic_batch(p.config, 8)
    vl, pad = p.encode(b)
    valid = b["motion_image_valid"].clone()
    valid[:4] = False
    l1 = head.loss(b["motion_image"], valid, vl, pad, torch.Generator().manual_seed(0))
    garbage = b["motion_image"].clone()
    garbage[:4] = float("nan")
    l2 = head.loss(garbage, valid, vl, pad, torch.Generator().manual_seed(0))
    assert torch.isfinite(l1) and float(l1) == float(l2)
    # at initialisation: about the loss of predicting zero velocity, E|noise - x1|^2 = 1 + E x1^2
    x1 = b["motion_image"]
    l0 = float(head.loss(x1, b["motion_image_valid"], vl, pad, torch.Generator().manual_seed(1)))
    zero_v = 1.0 + float((x1 ** 2).mean())
    assert 0.7 * zero_v < l0 < 1.5 * zero_v, (l0, zero_v)
    loss, logs = p(b, torch.Generator().manual_seed(1))
    loss.backward()
    assert head.out_proj.weight.grad is not None and p.vl_encoder.parameters().__next__().grad is not None
    assert set(logs) >= {"action_loss", "motion_image_loss"}


def test_motion_image_overfits_and_resumes_exactly(mi_data, tmp_path):
    from policy.train import train

    cfg = LaMPConfig(**{**TINY, "variant": "motion_image"})
    tc = tiny_train(phase="action", steps=120, lr=3e-3, warmup_steps=10, log_every=10, shuffle_buffer=1)
    torch.manual_seed(0)
    train(mi_data, tmp_path / "fit", cfg, tc, progress=False)
    recs = [json.loads(x) for x in open(tmp_path / "fit" / "metrics.jsonl")]
    first, last = recs[0]["motion_image_loss"], np.mean([r["motion_image_loss"] for r in recs[-3:]])
    assert last < first / 1.5, (first, last)
    # the head's one-step estimate of the flow from a half-noised input, x1 = x_t - t v, is the
    # training flow, not the zero-flow background
    from policy import flow_matching as fm
    from policy.train import load_policy

    policy, _ = load_policy(tmp_path / "fit")
    policy.eval()
    stream = TripletStream(mi_data, policy.config, shuffle_buffer=1, epochs=1)
    batch = collate([stream.transform(tr) for tr in mi_data.iter_triplets() if tr.anchor == 0])
    x1 = batch["motion_image"].reshape(len(batch["language"]), -1, 2)  # B G*G 2
    t = torch.full((x1.shape[0],), 0.5)
    x_t = fm.interpolate(x1, torch.randn(x1.shape, generator=torch.Generator().manual_seed(1)), t, noise_at=1.0)
    with torch.no_grad():
        vl, pad = policy.encode(batch)
        estimate = x_t - 0.5 * policy.extra.head(x_t, t, vl, pad)
    assert float(((estimate - x1) ** 2).mean()) < 0.5 * float((x1 ** 2).mean())
    tc = tiny_train(phase="action", steps=6)
    full = train(mi_data, tmp_path / "full", cfg, tc, progress=False)
    train(mi_data, tmp_path / "part", cfg, tc, progress=False, stop_after=2)
    resumed = train(mi_data, tmp_path / "part", cfg, tc, progress=False)
    assert full["state_sha1"] == resumed["state_sha1"] and full["variant"] == "motion_image"


# ----------------------------------------------------------------------------- action history
def _reader_like(anchors, chunk, A=2, steps=20, episode="e0"):
    """Triplets as the reader yields them: action at step s is (s, -s), chunk from the anchor,
    steps past the end invalid."""
    from schemas.triplet import Triplet

    for t in anchors:
        s = np.arange(t, t + chunk)
        act = np.stack([s, -s], -1).astype(np.float32)[:, :A]
        valid = s < steps
        yield Triplet(episode_id=episode, anchor=int(t), images={}, proprio=np.zeros(0, np.float32), language="",
                      motion={}, action_chunk=np.where(valid[:, None], act, 0), action_chunk_valid=valid,
                      intrinsics=np.zeros(4, np.float32), meta={"episode_index": 0})


def test_action_history_rebuilds_past_actions_from_earlier_chunks():
    trs = list(with_action_history(_reader_like(range(0, 20, 4), chunk=10), history=6))
    assert not trs[0].meta[PAST_ACTIONS_VALID].any()  # the episode's first anchor has no past
    assert trs[1].meta[PAST_ACTIONS_VALID].tolist() == [False, False, True, True, True, True]  # steps -2..3
    for tr in trs[2:]:
        t = tr.anchor
        assert tr.meta[PAST_ACTIONS_VALID].all()
        assert np.array_equal(tr.meta[PAST_ACTIONS][:, 0], np.arange(t - 6, t))
    # a gap between anchors wider than a chunk leaves the uncovered steps invalid, never invented
    gap = list(with_action_history(_reader_like([0, 14], chunk=10), history=6))[1]
    assert gap.meta[PAST_ACTIONS_VALID].tolist() == [True, True, False, False, False, False]  # 8, 9 seen; 10..13 not
    # a new episode starts with no history
    two = list(with_action_history([*_reader_like([0, 4], 10), *_reader_like([4], 10, episode="e1")], history=4))
    assert two[1].meta[PAST_ACTIONS_VALID].all() and not two[2].meta[PAST_ACTIONS_VALID].any()


# ----------------------------------------------------------------------------- action prior
def test_history_encoder_masks_invalid_steps_and_takes_an_empty_history():
    p = tiny_policy("action_prior")
    enc = p.extra.encoder
    past = torch.randn(3, 4, 4)
    valid = torch.tensor([[True] * 4, [False, False, True, True], [False] * 4])
    z = enc(past, valid)
    assert z.shape == (3, 32) and torch.isfinite(z).all()
    garbage = past.clone()
    garbage[~valid] = float("nan")
    assert torch.equal(enc(garbage, valid), z)


def test_prior_phase_trains_the_action_module_alone_on_actions():
    p = tiny_policy("action_prior")
    p.set_phase("prior")
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("extra.") else "")
                 for n, q in p.named_parameters() if q.requires_grad}
    assert trainable == {"action_expert", "extra.encoder"}
    b = synthetic_batch(p.config, 8)
    no_vision = {k: v for k, v in b.items() if k not in ("image", "motion", "motion_mask", "anchor_uv")}
    no_vision["language"] = [""] * 8
    loss, logs = p(no_vision, torch.Generator().manual_seed(0))  # nothing of vision or language is read
    # at initialisation: about the zero-velocity loss E|noise - a|^2 = 1 + E a^2
    zero_v = 1.0 + float((b["action"] ** 2).mean())
    assert 0.7 * zero_v < float(loss) < 1.5 * zero_v, (float(loss), zero_v)
    loss.backward()
    assert p.vl_encoder.parameters().__next__().grad is None


def test_action_prior_acting_uses_the_executed_actions():
    p = tiny_policy("action_prior", n_action_steps=1)
    p.eval()
    p.set_seed(0)
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(4, np.float32), "language": "move the block left"}
    p.reset()
    assert not p.prepare_observation(obs)["past_actions_valid"].any()
    acts = [p.select_action(obs) for _ in range(6)]
    batch = p.prepare_observation(obs)
    assert batch["past_actions_valid"].all()  # H = 4 of the 6 executed
    expect = (torch.as_tensor(np.stack(acts[-4:])) - p.action_center) / p.action_scale
    assert torch.allclose(batch["past_actions"][0], expect)
    # the history token changes the chunk (same noise, another past)
    other = dict(batch, past_actions=torch.zeros_like(batch["past_actions"]))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert not torch.equal(p.predict_action_chunk(batch, g()), p.predict_action_chunk(other, g()))
    p.reset()
    assert not p.prepare_observation(obs)["past_actions_valid"].any()


def test_distillation_runs_in_the_first_part_of_training_only():
    p = tiny_policy("action_prior", prior_distill_frac=0.25)
    p.set_phase("action")
    b = synthetic_batch(p.config, 4)
    p.at_step(1, 8)
    _, on = p(b, torch.Generator().manual_seed(0))
    p.at_step(2, 8)
    _, off = p(b, torch.Generator().manual_seed(0))
    assert on["distill_weight"] == 1.0 and on["distill_loss"] > 0 and off["distill_weight"] == 0.0
    assert on["action_loss"] == off["action_loss"]


def test_action_prior_stages_overfit_reuse_the_decoder_and_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    from policy.train import train

    ds = SyntheticDataset(num_shards=1, episodes_per_shard=2, anchors_per_episode=6)
    cfg = LaMPConfig(**{**TINY, "variant": "action_prior"})
    torch.manual_seed(0)
    s1 = train(ds, tmp_path / "s1", cfg, tiny_train(phase="prior", steps=120, lr=3e-3, warmup_steps=10, log_every=10,
                                                    shuffle_buffer=1), progress=False)
    recs = [json.loads(x) for x in open(tmp_path / "s1" / "metrics.jsonl")]
    assert np.mean([r["loss"] for r in recs[-3:]]) < recs[0]["loss"] / 5
    # stage 2 starts from stage 1's decoder and encoder; the VL encoder was not touched by stage 1
    tc = tiny_train(phase="action", steps=8)
    full = train(ds, tmp_path / "full", cfg, tc, init=str(tmp_path / "s1"), progress=False, stop_after=0)
    w1, w2 = load_file(f"{s1['checkpoint']}/model.safetensors"), load_file(f"{full['checkpoint']}/model.safetensors")
    reused = [k for k in w1 if k.startswith(("action_expert.", "extra.encoder."))]
    assert reused and all(torch.equal(w1[k], w2[k]) for k in reused)
    full = train(ds, tmp_path / "full2", cfg, tc, init=str(tmp_path / "s1"), progress=False)
    train(ds, tmp_path / "part", cfg, tc, init=str(tmp_path / "s1"), progress=False, stop_after=3)
    resumed = train(ds, tmp_path / "part", cfg, tc, init=str(tmp_path / "s1"), progress=False)
    assert full["state_sha1"] == resumed["state_sha1"]
    logs = [json.loads(x) for x in open(tmp_path / "full2" / "metrics.jsonl")]
    assert [r["distill_weight"] for r in logs] == [1.0, 0.0, 0.0, 0.0]  # steps 2, 4, 6, 8 of 8; KD while step < 2.4
    with pytest.raises(ValueError, match="prior_history"):
        train(ds, tmp_path / "bad", dataclasses.replace(cfg, prior_history=3), tc, init=str(tmp_path / "s1"), progress=False)


def test_bench_policy_reports_every_variant_phase_and_latency():
    from cli.bench.policy import bench_policy

    res = bench_policy(LaMPConfig(**TINY), batch_size=2, steps=1, latency_reps=1, progress=False,
                       variants=["lamp", "motion_image", "action_prior"])
    got = [(r["variant"], r["measure"].split(" (")[0]) for r in res["rows"]]
    assert got == [("lamp", "train step, phase motion"), ("lamp", "train step, phase action"), ("lamp", "action chunk latency"),
                   ("motion_image", "train step, phase action"), ("motion_image", "action chunk latency"),
                   ("action_prior", "train step, phase prior"), ("action_prior", "train step, phase action"),
                   ("action_prior", "action chunk latency")]
    assert all(r["seconds_median"] > 0 for r in res["rows"])
    per = res["parameters_per_variant"]
    assert per["motion_image"] > per["lamp"] and per["action_prior"] > per["lamp"]


# ----------------------------------------------------------------------------- the plan
def test_plan_waves_append_new_variants_and_stage1_chains(tmp_path):
    from test_experiment import write_plan

    from policy.experiment import plan_steps
    from policy.experiment_plan import load_plan

    base = dict(regimes=[1, 2], action_steps={1: 2, 2: 3}, seeds=[0, 1])
    before = [(s.name, s.argv) for s in plan_steps(load_plan(write_plan(tmp_path, **base)))]
    grown = load_plan(write_plan(tmp_path, **base, stage1={
        "uvd": {"label_set": "ours", "steps": 2},
        "actions": {"label_set": "ours", "steps": 2, "phase": "prior", "init": "uvd", "policy": {"variant": "action_prior"}}},
        variants={"scratch": {"stage1": None, "fusion": "none"}, "lamp": {"stage1": "uvd", "fusion": "gated_sigmoid"},
                  "action_prior": {"stage1": "actions", "fusion": "none", "wave": 1, "policy": {"variant": "action_prior"}}}))
    steps = plan_steps(grown)
    assert [(s.name, s.argv) for s in steps[: len(before)]] == before  # the old steps, unchanged and first
    new = [s.name for s in steps[len(before):]]
    assert new[:3] == ["stage1/actions", "train/action_prior@1/s0", "eval/action_prior@1/s0"]
    assert len(new) == 1 + 2 * 2 * 2
    s1 = next(s for s in steps if s.name == "stage1/actions")
    assert s1.argv[s1.argv.index("--phase") + 1] == "prior" and s1.argv[s1.argv.index("--init") + 1].endswith("stage1-uvd")
    for bad, msg in [({"uvd": {"label_set": "ours", "steps": 2, "init": "uvd"}}, "a cycle"),
                     ({"uvd": {"label_set": "ours", "steps": 2, "init": "nope"}}, "not a stage1 entry"),
                     ({"uvd": {"label_set": "ours", "steps": 2, "phase": "action"}}, "pretraining phase")]:
        with pytest.raises(ValueError, match=msg):
            load_plan(write_plan(tmp_path, stage1=bad))


def test_the_motion_prior_plan_lists_both_new_variants_after_the_existing_steps():
    from policy.experiment import plan_steps
    from policy.experiment_plan import load_plan

    plan = load_plan("policy/experiments/motion_prior.yaml")
    plan.workdir = Path(tempfile.mkdtemp())  # run_config writes the merged configs there, not into the experiment
    names = [s.name for s in plan_steps(plan)]
    first_new = min(i for i, n in enumerate(names) if "motion_image" in n or "action" in n.split("/")[1])
    old = names[:first_new]
    assert len(old) == 74 and not any("motion_image" in n or "action_prior" in n for n in old)
    assert {n for n in names[first_new:]} >= {"stage1/actions", "train/motion_image@5/s0", "eval/action_prior@20/s2"}
    # lafp's: tests/test_lafp.py; lamp_rate's (lamp on the corpus curated again): below
    rate = [n for n in names[first_new:] if "_rate" in n]
    theirs = [n for n in names[first_new:] if "lafp" not in n and "latent" not in n and n not in rate]
    assert len(theirs) == 1 + 2 * 2 * 3 * 2
    assert rate[:3] == ["curate/corpus-ours_rate", "publish/corpus-ours_rate", "stage1/uvd_rate"]
    assert len(rate) == 3 + 2 * 3 * 2


# ----------------------------------------------------------------------------- end to end
def test_cli_both_variants_train_on_curated_data_and_act_in_metaworld(curated_dir, tmp_path, capsys):
    import subprocess
    import sys

    from cli.main import main

    def cfg(variant: str):
        p = tmp_path / f"{variant}.yaml"
        p.write_text("policy: {d_model: 32, n_heads: 2, vl_layers: 1, motion_layers: 1, action_layers: 1, motion_points: 16, "
                     f"motion_horizon: 4, variant: {variant}, motion_image_layers: 1, prior_layers: 1}}\n"
                     "train: {batch_size: 4, log_every: 1, warmup_steps: 1, shuffle_buffer: 4}\n")
        return str(p)

    def run(*argv):
        assert main(["policy", "train", "--data", str(curated_dir), "--steps", "3", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    m = tmp_path / "m"
    run("--phase", "motion", "--config", cfg("lamp"), "--out", str(m))
    mi = run("--phase", "action", "--config", cfg("motion_image"), "--init", str(m), "--fusion", "none", "--out", str(tmp_path / "mi"))
    assert mi["variant"] == "motion_image"
    recs = [json.loads(x) for x in open(tmp_path / "mi" / "metrics.jsonl")]
    assert all(np.isfinite(r["motion_image_loss"]) and r["motion_image_loss"] > 0 for r in recs)
    run("--phase", "prior", "--config", cfg("action_prior"), "--init", str(m), "--out", str(tmp_path / "prior"))
    run("--phase", "action", "--config", cfg("action_prior"), "--init", str(tmp_path / "prior"), "--fusion", "none",
        "--out", str(tmp_path / "ap"))
    for out in ("mi", "ap"):  # MuJoCo's renderer and TensorFlow cannot share a process: evaluate in a fresh one
        proc = subprocess.run([sys.executable, "-m", "cli.main", "policy", "eval", "--checkpoint", str(tmp_path / out),
                               "--task", "drawer-open-v3", "--episodes", "1", "--max-steps", "12", "--threads", "1",
                               "--strips", str(tmp_path / f"strips-{out}"), "--json"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout)
        assert report["tasks"][0]["episodes"] == 1 and report["variant"] == {"mi": "motion_image", "ap": "action_prior"}[out]


def test_checkpoints_written_before_the_variants_existed_resume_and_load(tmp_path):
    from policy.config import VARIANT_FIELDS
    from policy.train import last_checkpoint, load_policy, train

    ds = SyntheticDataset(num_shards=1, episodes_per_shard=2, anchors_per_episode=3)
    cfg = LaMPConfig(**{k: v for k, v in TINY.items() if not k.startswith(("motion_image", "prior"))})
    full = train(ds, tmp_path / "full", cfg, tiny_train(phase="action", steps=4), progress=False)
    train(ds, tmp_path / "old", cfg, tiny_train(phase="action", steps=4), progress=False, stop_after=2)
    st_path = last_checkpoint(tmp_path / "old") / "state.json"
    st = json.loads(st_path.read_text())
    for key in ("variant", *[k for fields in VARIANT_FIELDS.values() for k in fields]):
        del st["policy_config"][key]  # as the trainer wrote it before LaMPConfig.variant
    st_path.write_text(json.dumps(st))
    resumed = train(ds, tmp_path / "old", cfg, tiny_train(phase="action", steps=4), progress=False)
    assert resumed["state_sha1"] == full["state_sha1"]
    policy, _ = load_policy(tmp_path / "old")
    assert policy.config.variant == "lamp" and policy.extra is None
