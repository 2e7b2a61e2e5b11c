"""LAFP (variants lafp / lafp_no_interp): the Latent Expert's flow matching over the latent action
model's code vectors, the decoder's aligned input, the variant switch, training (overfit, exact
resume, stage 1 -> stage 2), the loader's latent fields, the codebook from a LAM checkpoint, and
the experiment plan's new steps."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from policy.config import LaMPConfig, TrainConfig
from policy.loader import TripletStream, collate, make_loader
from policy.testing.synthetic import LATENT_CODES, LATENT_DIM, LATENT_TOKENS, SyntheticDataset, synthetic_codebook

TINY = dict(image_patch=8, d_model=32, n_heads=2, vl_layers=1, motion_layers=1, action_layers=1,
            motion_points=9, motion_horizon=4, text_max_len=24, image_size=(32, 32))
LAFP = dict(TINY, variant="lafp", fusion="none", latent_layers=1, latent_codebook=synthetic_codebook().tolist())


def lafp_config(**kw) -> LaMPConfig:
    return LaMPConfig(**{**LAFP, **kw})


@pytest.fixture(scope="module")
def syn():
    return SyntheticDataset(num_shards=2, episodes_per_shard=2, anchors_per_episode=4, latent=True)


def batch_of(ds, cfg, n=8, seed=0):
    stream = TripletStream(ds, cfg, seed=seed, shuffle_buffer=1, epochs=1)
    return next(iter(make_loader(stream, n, seed=seed))), stream


def policy_for(cfg, stream, seed=0):
    from policy.modeling_lamp import LaMPPolicy

    torch.manual_seed(seed)
    return LaMPPolicy(cfg, stats=stream.stats_entry)


# ----------------------------------------------------------------------------- shapes and masks
def test_loader_gives_latent_fields_and_masks_the_last_anchor(syn):
    cfg = lafp_config()
    batch, _ = batch_of(syn, cfg, n=16)
    assert batch["latent_tokens"].shape == (16, LATENT_TOKENS) and batch["latent_tokens"].dtype == torch.int64
    assert batch["latent_valid"].shape == (16,) and batch["latent_valid"].dtype == torch.bool
    last = torch.tensor([a == 3 for a in batch["anchor"]])
    assert torch.equal(batch["latent_valid"], ~last)  # each episode's last anchor has no frame t + gap
    assert (batch["latent_tokens"][last] == -1).all() and (batch["latent_tokens"][~last] >= 0).all()
    # the base variant's samples are unchanged: no latent fields
    plain, _ = batch_of(syn, LaMPConfig(**TINY), n=4)
    assert "latent_tokens" not in plain


def test_loader_names_the_episode_when_the_data_has_no_latents():
    ds = SyntheticDataset(num_shards=1, episodes_per_shard=1, anchors_per_episode=2)
    with pytest.raises(ValueError, match=r"episode syn-0-0: no latent action tokens"):
        batch_of(ds, lafp_config(), n=2)


def test_shapes_of_both_phases_and_of_acting(syn):
    cfg = lafp_config()
    batch, stream = batch_of(syn, cfg, n=6)
    p = policy_for(cfg, stream)
    vl, pad = p.encode(batch)
    N = vl.shape[1]
    z = p.extra.latent_expert.sample(vl, pad)
    assert z.shape == (6, LATENT_TOKENS, LATENT_DIM)
    _, _, tokens, tpad = p.conditioning(batch)
    assert tokens.shape == (6, N + LATENT_TOKENS, 32) and tpad.shape == (6, N + LATENT_TOKENS)
    assert not tpad[:, N:].any()
    for phase in ("latent", "action"):
        p.set_phase(phase)
        p.train()
        loss, logs = p(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
    assert p.predict_action_chunk(batch).shape == (6, cfg.chunk_size, cfg.action_dim)
    assert p.extra.latent_expert.nearest_tokens(z).shape == (6, LATENT_TOKENS)


def test_latent_loss_ignores_invalid_entries(syn):
    cfg = lafp_config()
    batch, stream = batch_of(syn, cfg, n=16)
    p = policy_for(cfg, stream)
    p.set_phase("latent")
    invalid = ~batch["latent_valid"]
    assert invalid.any() and (~invalid).any()
    junk = dict(batch, latent_tokens=torch.where(invalid[:, None], torch.full_like(batch["latent_tokens"], 5),
                                                 batch["latent_tokens"]))
    a, la = p(batch, generator=torch.Generator().manual_seed(1))
    b, lb = p(junk, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert la["latent_valid_frac"] == pytest.approx(float((~invalid).float().mean()))
    # a token outside the codebook is not a latent: that anchor is masked too
    bad = dict(batch, latent_tokens=batch["latent_tokens"].clone())
    row = int(torch.nonzero(~invalid)[0])
    bad["latent_tokens"][row, 0] = LATENT_CODES
    _, usable = p.extra.latent_expert.latents(bad["latent_tokens"], bad["latent_valid"])
    assert not usable[row] and int(usable.sum()) == int((~invalid).sum()) - 1


def test_latents_are_the_normalised_code_vectors(syn):
    cfg = lafp_config()
    batch, stream = batch_of(syn, cfg, n=8)
    le = policy_for(cfg, stream).extra.latent_expert
    cb = torch.from_numpy(synthetic_codebook())
    z, usable = le.latents(batch["latent_tokens"], batch["latent_valid"])
    i = int(torch.nonzero(usable)[0])
    want = (cb[batch["latent_tokens"][i]] - cb.mean(0)) / cb.std(0, unbiased=False)
    torch.testing.assert_close(z[i], want)
    assert (z[~usable] == 0).all()
    assert torch.equal(le.nearest_tokens(z[usable]), batch["latent_tokens"][usable])


def test_latent_loss_at_initialisation(syn):
    """Flow matching with a velocity near zero: the loss is about E|noise - z|^2 = 1 + E[z^2]."""
    cfg = lafp_config()
    batch, stream = batch_of(syn, cfg, n=16)
    p = policy_for(cfg, stream)
    p.set_phase("latent")
    z, usable = p.extra.latent_expert.latents(batch["latent_tokens"], batch["latent_valid"])
    zero_velocity = 1.0 + float((z[usable] ** 2).mean())
    losses = [float(p(batch, generator=torch.Generator().manual_seed(s))[0].detach()) for s in range(8)]
    assert 0.6 * zero_velocity < np.mean(losses) < 1.6 * zero_velocity, (losses, zero_velocity)


# ----------------------------------------------------------------------------- the variant switch
def test_align_latent_moves_only_valid_anchors():
    from policy.lafp import align_latent

    zs, zd = torch.zeros(3, 2, 4), torch.ones(3, 2, 4)
    ok = torch.tensor([True, False, True])
    out = align_latent(zs, zd, ok, 0.25)
    assert torch.equal(out[0], torch.full((2, 4), 0.25)) and torch.equal(out[1], zs[1])
    assert torch.equal(align_latent(zs, zd, ok, 0.0), zs)
    assert torch.equal(align_latent(zs, zd, ok, 1.0)[2], zd[2])
    with pytest.raises(ValueError):
        align_latent(zs, zd, ok, 1.5)


def test_interpolation_strength_changes_decoder_training_only(syn):
    """lafp vs lafp_no_interp with the same weights: the same actions when acting, the same latent
    loss, a different decoder input (hence loss) in phase action, and none when no demo latent
    is valid."""
    batch, stream = batch_of(syn, lafp_config(), n=16)
    p0 = policy_for(lafp_config(lafp_interp=0.0), stream)
    p1 = policy_for(lafp_config(lafp_interp=0.5), stream)
    assert p0.state_dict().keys() == p1.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(p0.state_dict().values(), p1.state_dict().values()))

    def run(p, b, phase, seed=3):
        p.set_phase(phase)
        p.train()
        return p(b, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(p0, batch, "latent"), run(p1, batch, "latent"))
    l0, l1 = run(p0, batch, "action"), run(p1, batch, "action")
    z0, z1 = p0.extra.last_latent, p1.extra.last_latent
    ok = batch["latent_valid"]
    assert torch.equal(z0[~ok], z1[~ok]) and not torch.allclose(z0[ok], z1[ok]) and not torch.equal(l0, l1)
    none_valid = dict(batch, latent_valid=torch.zeros_like(ok))
    assert torch.equal(run(p0, none_valid, "action"), run(p1, none_valid, "action"))
    a0 = p0.predict_action_chunk(batch, generator=torch.Generator().manual_seed(5))
    a1 = p1.predict_action_chunk(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a0, a1)


def test_phases_train_what_they_should(syn):
    cfg = lafp_config()
    _, stream = batch_of(syn, cfg, n=2)
    p = policy_for(cfg, stream)

    p.set_phase("latent")
    names = {n for n, q in p.named_parameters() if q.requires_grad}
    assert names and all(n.startswith(("vl_encoder.", "extra.latent_expert.")) for n in names)
    assert any(n.startswith("extra.latent_expert.") for n in names)
    p.set_phase("action")
    names = {n for n, q in p.named_parameters() if q.requires_grad}
    assert not any(n.startswith(("extra.latent_expert.", "motion_expert.")) for n in names)
    assert any(n.startswith("extra.latent_in.") for n in names) and any(n.startswith("action_expert.") for n in names)
    assert {n.split(".")[1] for n in names if n.startswith("extra.")} == {"latent_in", "latent_pos"}


def test_lafp_needs_a_codebook_and_no_fusion():
    from policy.modeling_lamp import LaMPPolicy

    with pytest.raises(ValueError, match="codebook"):
        LaMPPolicy(lafp_config(latent_codebook=()))
    with pytest.raises(ValueError, match="fusion must be none"):
        LaMPPolicy(lafp_config(fusion="gated_sigmoid"))
    with pytest.raises(ValueError, match="latent_dim"):
        lafp_config(latent_codebook=[[0.0, 1.0]] * 8)


# ----------------------------------------------------------------------------- training
def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, log_every=2, warmup_steps=2, checkpoint_every=1000, shuffle_buffer=8, seed=0)
    return TrainConfig(**{**base, **kw})


def test_latent_policy_overfits_and_generates_the_labelled_tokens(tmp_path):
    from policy.train import load_policy, train

    ds = SyntheticDataset(num_shards=1, episodes_per_shard=2, anchors_per_episode=3, latent=True)
    cfg = lafp_config(d_model=32)
    tc = tiny_train(phase="latent", steps=200, lr=3e-3, warmup_steps=10, log_every=10, shuffle_buffer=1)
    train(ds, tmp_path / "s1", cfg, tc, progress=False)
    recs = [json.loads(x) for x in open(tmp_path / "s1" / "metrics.jsonl")]
    first, last = recs[0]["loss"], np.mean([r["loss"] for r in recs[-3:]])
    assert last < first / 5, (first, last)
    policy, _ = load_policy(tmp_path / "s1")
    batch, _ = batch_of(ds, cfg, n=6)
    vl, pad = policy.encode(batch)
    z = policy.extra.latent_expert.sample(vl, pad, generator=torch.Generator().manual_seed(0))
    ok = batch["latent_valid"]
    hit = (policy.extra.latent_expert.nearest_tokens(z)[ok] == batch["latent_tokens"][ok]).float().mean()
    assert hit > 0.9, hit


def test_resume_equals_uninterrupted_run_in_both_phases(tmp_path, syn):
    from safetensors.torch import load_file

    from policy.train import train

    cfg = lafp_config()
    for phase, init in (("latent", None), ("action", str(tmp_path / "latent-full"))):
        tc = tiny_train(phase=phase, steps=6)
        full = train(syn, tmp_path / f"{phase}-full", cfg, tc, init=init, progress=False)
        part = train(syn, tmp_path / f"{phase}-resumed", cfg, tc, init=init, progress=False, stop_after=2)
        assert part["steps"] == 2
        resumed = train(syn, tmp_path / f"{phase}-resumed", cfg, tc, init=init, progress=False)
        wa = load_file(f"{full['checkpoint']}/model.safetensors")
        wb = load_file(f"{resumed['checkpoint']}/model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), phase
        assert full["state_sha1"] == resumed["state_sha1"]


def test_stage2_keeps_the_latent_policy_and_takes_its_own_strength(tmp_path, syn):
    from safetensors.torch import load_file

    from policy.train import load_policy, train

    s1 = train(syn, tmp_path / "s1", lafp_config(), tiny_train(phase="latent", steps=4), progress=False)
    s2 = train(syn, tmp_path / "s2", lafp_config(lafp_interp=0.0), tiny_train(phase="action", steps=4),
               init=str(tmp_path / "s1"), progress=False)
    w1, w2 = load_file(f"{s1['checkpoint']}/model.safetensors"), load_file(f"{s2['checkpoint']}/model.safetensors")
    le = [k for k in w1 if k.startswith("extra.latent_expert.")]
    assert le and all(torch.equal(w1[k], w2[k]) for k in le)  # frozen in stage 2
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("action_expert."))
    policy, state = load_policy(tmp_path / "s2")
    assert policy.config.lafp_interp == 0.0 and state["phase"] == "action"
    torch.testing.assert_close(policy.extra.latent_expert.codebook, torch.from_numpy(synthetic_codebook()))
    policy.set_seed(0)
    obs = {"image": np.full((32, 32, 3), 110, np.uint8), "state": np.zeros(4, np.float32), "language": "move the block left"}
    assert policy.select_action(obs).shape == (4,)


def test_latent_phase_reads_no_actions(tmp_path):
    """Stage 1 of lafp is action-free: it trains on a dataset whose triplets carry no actions."""
    from policy.train import train

    class ActionFree(SyntheticDataset):
        def iter_triplets(self, shards=None, chunk=10, motion_only=False, **kwargs):
            assert motion_only, "phase latent asked for actions"
            return super().iter_triplets(shards, chunk, motion_only, **kwargs)

    ds = ActionFree(num_shards=1, episodes_per_shard=2, anchors_per_episode=3, latent=True)
    r = train(ds, tmp_path / "s1", lafp_config(), tiny_train(phase="latent", steps=2), progress=False)
    assert r["steps"] == 2 and np.isfinite(r["final_loss"])


# ----------------------------------------------------------------------------- codebook from a LAM checkpoint
def test_codebook_comes_from_a_latent_action_model_checkpoint(tmp_path):
    from cli.commands.policy import with_latent_codebook
    from labelers.latent.checkpoint import save_weights
    from labelers.latent.config import get_config
    from labelers.latent.model import LatentActionModel

    lam_cfg = get_config("small")
    torch.manual_seed(0)
    model = LatentActionModel(lam_cfg)
    save_weights(model, lam_cfg, tmp_path / "model.safetensors", extra={"gap": 4})
    cfg = with_latent_codebook(LaMPConfig(**TINY), str(tmp_path))
    assert (cfg.latent_codes, cfg.latent_dim, cfg.latent_tokens) == (lam_cfg.codebook_size, lam_cfg.code_dim,
                                                                    lam_cfg.num_tokens)
    np.testing.assert_array_equal(np.asarray(cfg.latent_codebook, np.float32), model.vq.codebook.detach().numpy())
    # the config (and so every checkpoint) carries it through JSON unchanged
    from policy.config import config_to_dict, policy_config_from_dict

    assert policy_config_from_dict(config_to_dict(cfg)) == cfg


# ----------------------------------------------------------------------------- bench
def test_bench_policy_reports_the_lafp_phases_and_latency():
    from cli.bench.policy import bench_policy

    r = bench_policy(LaMPConfig(**TINY), batch_size=2, steps=1, latency_reps=1, progress=False, variants=["lamp", "lafp"])
    rows = [row for row in r["rows"] if row["variant"] == "lafp"]
    measures = [row["measure"] for row in rows]
    assert measures[:2] == ["train step, phase latent", "train step, phase action"]
    assert "latency" in measures[2] and "4 latent" in measures[2] and "fusion none" in measures[2]
    assert all(row["seconds_median"] > 0 for row in rows)
    assert r["parameters_per_variant"]["lafp"] > r["parameters_per_variant"]["lamp"]


# ----------------------------------------------------------------------------- the experiment plan


def write_plan(tmp_path, lafp: bool = True, **over):
    """The experiment tests' tiny plan with the `none` variant, and with `lafp` its latent-action
    steps: the LAM, the latent stage 1 and the two interpolation settings."""
    from test_experiment import TINY_POLICY
    from test_experiment import write_plan as tiny_plan

    stage1 = {"uvd": {"label_set": "ours", "steps": 2}}
    variants = {"none": {"stage1": "uvd", "fusion": "none"}}
    extra = {}
    if lafp:
        extra["latent_actions"] = {"steps": 3, "gap": 2, "label_set": ["labels.motion_source=ground_truth", "labels.flow=''"]}
        stage1["lafp"] = {"label_set": "latent", "phase": "latent", "steps": 2, "policy": {"variant": "lafp", "fusion": "none"}}
        variants["lafp"] = {"stage1": "lafp", "fusion": "none", "policy": {"variant": "lafp", "lafp_interp": 0.5}}
        variants["lafp_no_interp"] = {"stage1": "lafp", "fusion": "none", "policy": {"variant": "lafp", "lafp_interp": 0.0}}
    entries = {"stage1": stage1, "variants": variants, "paired_against": ["none"], **extra, **over}
    return tiny_plan(tmp_path, policy={**TINY_POLICY, "latent_layers": 1}, **entries)


LAFP_STEPS = ["latent/train", "curate/demos1-latent", "publish/demos1-latent", "curate/corpus-latent",
              "publish/corpus-latent", "stage1/lafp", "train/lafp@1/s0", "eval/lafp@1/s0", "train/lafp_no_interp@1/s0",
              "eval/lafp_no_interp@1/s0"]


def test_plan_appends_the_lafp_steps_and_keeps_the_others(tmp_path):
    from policy.experiment import plan_steps
    from policy.experiment_plan import load_plan

    before = plan_steps(load_plan(write_plan(tmp_path / "a", lafp=False)))
    after = {s.name: s for s in plan_steps(load_plan(write_plan(tmp_path / "b")))}
    names = list(after)
    assert names[: len(before)] == [s.name for s in before]  # existing steps: same names, same order, first
    assert names[len(before):] == LAFP_STEPS
    for s in before:  # and the same commands (up to the workdir)
        assert after[s.name].command.replace(str(tmp_path / "b"), "W") == s.command.replace(str(tmp_path / "a"), "W")
    lam = str(tmp_path / "b" / "work" / "runs" / "latent-actions")
    assert after["latent/train"].argv[:2] == ["latent", "train"] and lam in after["latent/train"].argv
    for name in ("curate/corpus-latent", "curate/demos1-latent"):
        assert f"labels.latent_checkpoint={lam}" in after[name].argv
    s1 = after["stage1/lafp"].argv
    assert s1[s1.index("--phase") + 1] == "latent" and s1[s1.index("--latent-checkpoint") + 1] == lam
    tr = after["train/lafp@1/s0"].argv
    assert tr[tr.index("--data") + 1].endswith("metaworld-demos-1-latent@1.0.0")
    assert tr[tr.index("--init") + 1].endswith("stage1-lafp")
    with pytest.raises(ValueError, match="latent_actions"):
        load_plan(write_plan(tmp_path / "c", latent_actions=None))


def test_shipped_plan_dry_run_lists_the_new_steps(tmp_path, capsys):
    """The motion-prior plan itself (its workdir redirected): every old step first, then lafp's."""
    import yaml

    from cli.main import main

    plan = yaml.safe_load(open("policy/experiments/motion_prior.yaml"))
    plan["workdir"] = str(tmp_path / "work")
    p = tmp_path / "mp.yaml"
    p.write_text(yaml.safe_dump(plan, sort_keys=False))
    assert main(["policy", "experiment", str(p), "--dry-run", "--json"]) == 0
    names = [s["step"] for s in json.loads(capsys.readouterr().out)["steps"]]
    for step in ("latent/train", "curate/corpus-latent", "stage1/lafp", "curate/demos5-latent", "train/lafp@5/s0",
                 "eval/lafp_no_interp@20/s2"):
        assert step in names
    assert names.index("latent/train") < names.index("curate/corpus-latent") < names.index("stage1/lafp")
    assert names.index("stage1/lafp") < names.index("train/lafp@5/s0") < names.index("eval/lafp@5/s0")


@pytest.mark.timeout(1800)
def test_tiny_lafp_plan_runs_end_to_end(tmp_path):
    """Real commands: simulate, latent action model on the corpus, curation with its tokens, the
    latent policy's stage 1, the decoder runs of both variants and their evaluation."""
    from labelers.latent.config import PRESETS
    from policy.experiment import run_plan
    from policy.experiment_plan import Layout, load_plan

    plan = load_plan(write_plan(tmp_path, variants={
        "lafp": {"stage1": "lafp", "fusion": "none", "policy": {"variant": "lafp", "lafp_interp": 0.5}},
        "lafp_no_interp": {"stage1": "lafp", "fusion": "none", "policy": {"variant": "lafp", "lafp_interp": 0.0}}},
        paired_against=["lafp_no_interp"]))
    r = run_plan(plan, on_event=lambda s: None)
    assert r["steps_done"] == r["steps_total"]
    lay = Layout(plan)
    res = json.loads(plan.results.read_text())
    assert {k: v["trials"] for k, v in res["variants"].items()} == {"lafp@1": 2, "lafp_no_interp@1": 2}
    assert set(res["paired"]) == {"lafp - lafp_no_interp@1"}
    ds = res["protocol"]["datasets"]
    assert ds["metaworld-corpus-latent"]["episodes"] == 1 and ds["metaworld-demos-1-latent"]["episodes"] == 1
    state = json.loads((lay.stage1_dir("lafp") / "checkpoints" / "step-0000002" / "state.json").read_text())
    codes = PRESETS["small"].codebook_size  # the plan's latent action model: `curate latent train`'s default preset
    assert state["phase"] == "latent" and len(state["policy_config"]["latent_codebook"]) == codes
    run = json.loads(next((lay.run_dir("lafp_no_interp", 1, 0) / "checkpoints").glob("step-*/state.json")).read_text())
    assert run["policy_config"]["lafp_interp"] == 0.0 and run["policy_config"]["variant"] == "lafp"
