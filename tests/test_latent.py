"""Latent action model (LAPA-style): NSVQ, dead-code schedule, resume equality, the labeler,
the paper-scale config, and that trained tokens carry the action on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labelers.latent import checkpoint as ckpt
from labelers.latent.config import LAMConfig, get_config
from labelers.latent.data import moving_squares, store_from_episodes
from labelers.latent.probe import evaluate
from labelers.latent.model import LatentActionModel, count_parameters
from labelers.latent.nsvq import NSVQ, is_replacement_step, replacement_steps
from labelers.latent.train import ResumeMismatch, TrainSettings, train_lam
from labelers.latent.labeler import LatentActionLabeler
from schemas.triplet import LATENT_PAD_TOKEN

# 16 px frames, 4 px patches: 16 patches, so a training step costs a few milliseconds.
TINY = LAMConfig(image_size=16, patch_size=4, width=64, heads=4, enc_spatial_depth=1, enc_temporal_depth=1,
                 dec_depth=1, code_dim=16)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def squares(n: int, seed: int):
    return store_from_episodes(moving_squares(n, 24, 16, square=4, max_speed=1, num_squares=2, seed=seed), 16)


# ----------------------------------------------------------------------------- NSVQ


def test_nsvq_shapes_noise_norm_and_gradients():
    torch.manual_seed(0)
    vq = NSVQ(code_dim=8, codebook_size=8)
    x = torch.randn(5, 4, 8, requires_grad=True)
    out, idx = vq(x)
    assert out.shape == (5, 4, 8) and idx.shape == (5, 4) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 8
    # Noise substitution: the output sits exactly ||x - q|| away from x.
    q = vq.codebook[idx]
    assert torch.allclose((out - x).norm(dim=-1), (x - q).norm(dim=-1), atol=1e-5)
    # Nearest code really is the nearest.
    d = torch.cdist(x.detach().reshape(-1, 8), vq.codebook.detach())
    assert torch.equal(d.argmin(-1), idx.reshape(-1))
    (out ** 2).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    used = torch.unique(idx)
    assert float(vq.codebook.grad[used].abs().sum()) > 0  # the codebook learns through ||x - q||
    unused = torch.tensor([i for i in range(8) if i not in used.tolist()], dtype=torch.long)
    if unused.numel():
        assert float(vq.codebook.grad[unused].abs().sum()) == 0.0
    assert float(vq.usage.sum()) == 20 and float(vq.batches) == 1
    vq.eval()
    hard, idx2 = vq(x)
    assert torch.equal(hard, vq.codebook[idx2])  # evaluation returns the code itself


def test_replacement_schedule_is_lapas():
    steps = replacement_steps(6000)
    assert steps == list(range(10, 100, 10)) + list(range(100, 1000, 100)) + list(range(1000, 5000, 500))
    assert is_replacement_step(500) and is_replacement_step(4500) and is_replacement_step(90)
    assert not any(is_replacement_step(s) for s in (0, 1, 5, 95, 950, 1250, 5000, 5500))


def test_replace_unused_replaces_only_dead_codes_with_candidates():
    torch.manual_seed(0)
    vq = NSVQ(code_dim=4, codebook_size=6, discard_threshold=0.1)
    before = vq.codebook.detach().clone()
    vq.usage[:] = torch.tensor([30.0, 5.0, 0.0, 0.0, 0.9, 0.0], dtype=torch.float64)
    vq.batches.fill_(10)  # per-batch use: 3, 0.5, 0, 0, 0.09, 0 -> codes 2, 3, 4, 5 are dead
    cand = torch.full((7, 4), 3.0) + torch.arange(7.0)[:, None]
    dead = vq.replace_unused(candidates=cand)
    assert dead.tolist() == [2, 3, 4, 5]
    assert torch.equal(vq.codebook[:2], before[:2])  # live codes untouched
    for row in vq.codebook[2:].detach():
        assert torch.min((cand - row).abs().max(-1).values) < 0.2  # a candidate plus 1% noise
    assert float(vq.usage.sum()) == 0 and float(vq.batches) == 0


def test_dead_codes_replaced_at_scheduled_steps_in_training(tmp_path):
    seen = {}
    # 64 codes but 8 x 4 = 32 token draws per batch: some codes are certainly dead at step 10
    config = LAMConfig(**{**TINY.__dict__, "codebook_size": 64})
    train_lam(squares(6, 0), tmp_path, config, TrainSettings(steps=25, batch=8, gap=1, warmup=5, checkpoint_every=100),
              progress=False, on_step=lambda step, info: seen.__setitem__(step, info))
    assert sorted(seen) == list(range(1, 26))
    assert [s for s, info in seen.items() if "replaced" in info] == [10, 20]
    assert len(seen[10]["replaced"]) >= 1
    used_before = {c for step in range(1, 11) for c in seen[step]["codes"]}
    assert not used_before & set(seen[10]["replaced"])  # only codes unused since the start went
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20]


# ----------------------------------------------------------------------------- checkpoints


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / ckpt.WEIGHTS_FILE))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = squares(6, 0)
    # 12 steps cross the dead-code replacement at step 10 (it draws from the global RNG).
    straight = TrainSettings(steps=12, batch=8, gap=1, warmup=5, checkpoint_every=7, seed=3)
    train_lam(data, tmp_path / "a", TINY, straight, progress=False)
    first = train_lam(data, tmp_path / "b", TINY, TrainSettings(**{**straight.__dict__, "steps": 7}), progress=False)
    torch.manual_seed(999)  # a resumed run must not depend on the process's RNG state
    second = train_lam(data, tmp_path / "b", TINY, straight, progress=False)
    assert (first["steps"], second["resumed_from"], second["steps_run"]) == (7, 7, 5)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # and the run really trained: weights differ from a 7-step model
    c = ckpt.load_weights(ckpt.training_state_path(tmp_path / "b", 7))[1]
    assert not torch.allclose(a["head.weight"], c["head.weight"])
    # keep=2: only the last two training states stay on disk
    assert [s for s, _ in ckpt.list_training_states(tmp_path / "a")] == [7, 12]


def test_resume_refuses_other_settings_and_checkpoints_are_safetensors(tmp_path):
    data = squares(3, 0)
    train_lam(data, tmp_path, TINY, TrainSettings(steps=2, batch=4, gap=1, checkpoint_every=1), progress=False)
    with pytest.raises(ResumeMismatch, match="gap"):
        train_lam(data, tmp_path, TINY, TrainSettings(steps=4, batch=4, gap=2, checkpoint_every=1), progress=False)
    with pytest.raises(ResumeMismatch, match="config"):
        train_lam(data, tmp_path, LAMConfig(**{**TINY.__dict__, "code_dim": 8}),
                  TrainSettings(steps=4, batch=4, gap=1, checkpoint_every=1), progress=False)
    for f in [tmp_path / ckpt.WEIGHTS_FILE, *(p for _, p in ckpt.list_training_states(tmp_path))]:
        head = f.read_bytes()[:8]
        header_len = int.from_bytes(head, "little")
        header = json.loads(f.read_bytes()[8:8 + header_len])  # safetensors: length + JSON header
        assert json.loads(header["__metadata__"]["config"]) == json.loads(TINY.to_json())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="bad.safetensors"):
        ckpt.load_weights(bad)


# ----------------------------------------------------------------------------- labeler


def test_labeler_pads_steps_without_t_plus_gap(tmp_path):
    torch.manual_seed(0)
    model = LatentActionModel(TINY)
    ckpt.save_weights(model, TINY, tmp_path / "m.safetensors", extra={"gap": 2})
    labeler = LatentActionLabeler.from_checkpoint(tmp_path / "m.safetensors")
    assert labeler.trained_gap == 2 and labeler.num_tokens == 4 and labeler.codebook_size == 8
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(10, 20, 24, 3), dtype=np.uint8)  # not square: centre crop
    anchors = np.array([0, 4, 7, 8, 9])
    tokens, valid = labeler(frames, anchors, gap=2)
    assert tokens.shape == (5, 4) and tokens.dtype == np.int16 and valid.dtype == bool
    assert valid.tolist() == [True, True, True, False, False]
    assert (tokens[~valid] == LATENT_PAD_TOKEN).all()
    assert ((tokens[valid] >= 0) & (tokens[valid] < 8)).all()
    # the same tokens as the model gives on the cropped, resized pair
    from labelers.latent.data import square_resize

    small = torch.from_numpy(square_resize(frames, 16)).permute(0, 3, 1, 2).float() / 255.0
    direct = model.eval().tokens(small[[0, 4, 7]], small[[2, 6, 9]]).numpy()
    assert np.array_equal(tokens[valid], direct)
    # default gap = the trained one; nothing valid when the episode is too short
    t2, v2 = labeler(frames[:2], np.array([0, 1]))
    assert not v2.any() and (t2 == LATENT_PAD_TOKEN).all()
    with pytest.raises(ValueError, match="anchors"):
        labeler(frames, np.array([0, 10]), gap=1)
    with pytest.raises(ValueError, match="gap"):
        labeler(frames, np.array([0]), gap=0)
    with pytest.raises(ValueError, match="uint8"):
        labeler(frames.astype(np.float32), np.array([0]), gap=1)


# ----------------------------------------------------------------------------- configs


def test_paper_config_builds_and_runs_a_forward_pass():
    cfg = get_config("paper")
    assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.num_tokens, cfg.codebook_size) == (256, 32, 1024, 4, 8)
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    assert 300e6 < count_parameters(model) < 400e6
    x_t, x_tg = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        out = model(x_t, x_tg)
    assert out["recon"].shape == (1, 3, 256, 256)
    assert out["indices"].shape == (1, 4) and int(out["indices"].max()) < 8
    assert out["latents"].shape == (1, 4, 32) and torch.isfinite(out["loss"])
    del model


# ----------------------------------------------------------------------------- tokens carry the action


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("lam")
    torch.set_num_threads(1)
    train_lam(squares(40, 0), out, TINY, TrainSettings(steps=250, batch=32, gap=1, lr=2e-3, warmup=20, checkpoint_every=1000),
              progress=False)
    return out


def test_trained_tokens_beat_random_on_the_action_probe(trained_tiny):
    held = squares(20, 1)  # other seed: new backgrounds, positions and actions
    labeler = LatentActionLabeler.from_checkpoint(trained_tiny)
    trained = evaluate(labeler.model, held, 1, probes=("linear",))
    torch.manual_seed(7)
    random = evaluate(LatentActionModel(TINY), held, 1, probes=("linear",))
    r_trained, r_random = trained["probe_linear"]["r2"], random["probe_linear"]["r2"]
    assert r_trained >= 0.35, (r_trained, r_random)
    assert r_trained >= r_random + 0.3, (r_trained, r_random)
    assert trained["usage"] >= 0.75  # codebook usage target on small data
    assert trained["psnr_recon_moving"] > trained["psnr_copy_moving"]  # it predicts the motion, not a copy


def test_action_probe_scores_informative_tokens_high_and_random_tokens_near_zero():
    from labelers.latent.probe import action_probe, codebook_stats, one_hot, r2_per_dim

    rng = np.random.default_rng(0)
    episodes = np.repeat(np.arange(20), 30)
    tokens = rng.integers(0, 8, size=(600, 4))
    # target = additive function of tokens 0 and 1 (+ small noise); token 2, 3 irrelevant
    effect = rng.normal(size=(4, 8, 2))
    y = effect[0, tokens[:, 0]] + effect[1, tokens[:, 1]] + 0.05 * rng.normal(size=(600, 2))
    good = action_probe(one_hot(tokens, 8), y, episodes, kind="linear")
    assert good["r2"] > 0.95 and good["fit_pairs"] == good["score_pairs"] == 300
    assert good["cv_r2"] > 0.95  # the selection figure, from the fitting half alone
    noise = action_probe(one_hot(rng.integers(0, 8, size=(600, 4)), 8), y, episodes, kind="linear")
    assert -0.1 < noise["r2"] < 0.05 and noise["cv_r2"] < 0.05
    assert action_probe(one_hot(tokens, 8), y, episodes, kind="mlp")["r2"] > 0.8
    # R^2 by hand: perfect = 1, predicting the mean = 0, constant columns are skipped
    yy = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    assert np.allclose(r2_per_dim(yy, yy)[0], 1.0) and np.isnan(r2_per_dim(yy, yy)[1])
    assert np.isclose(r2_per_dim(yy, np.full_like(yy, 2.0))[0], 0.0)
    stats = codebook_stats(np.array([[0, 1], [0, 1], [2, 3]]), 8)
    assert stats["usage"] == 0.5 and stats["distinct_sequences"] == 2
    p = np.array([2, 2, 1, 1]) / 6
    assert np.isclose(stats["perplexity"], np.exp(-(p * np.log(p)).sum()))


def test_flatten_pooling_and_unit_latents_and_old_configs_load_as_attention():
    cfg = get_config("small", pool="flatten", normalize_latents=True)
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    x_t, x_tg = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model.train()(x_t, x_tg)
    assert out["latents"].shape == (2, 4, cfg.code_dim) and out["indices"].shape == (2, 4)
    assert torch.allclose(out["latents"].norm(dim=-1), torch.ones(2, 4), atol=1e-5)
    out["latents"][..., 0].sum().backward()  # (the zero-initialised residual head passes no gradient at step 0)
    assert float(model.pool_reduce.weight.grad.abs().sum()) > 0
    # a config written before `pool` existed is the attention model it was trained as
    old = json.loads(get_config("small").to_json())
    centred = LatentActionModel(get_config("small", pool="flatten", normalize_latents=True, center_latents=True))
    assert centred.train()(x_t, x_tg)["latents"].shape == (2, 4, cfg.code_dim)
    assert centred.eval()(x_t[:1], x_tg[:1])["indices"].shape == (1, 4)  # running statistics at evaluation
    for key in ("pool", "pool_dim", "normalize_latents", "center_latents"):
        old.pop(key)
    assert LAMConfig.from_json(json.dumps(old)).pool == "attention"
    assert not LAMConfig.from_json(json.dumps(old)).normalize_latents
    with pytest.raises(ValueError):
        get_config("small", pool="mean")


def test_probe_reads_code_vectors_and_its_cv_never_sees_the_scoring_half():
    """Features from code vectors: a target linear in the code vectors of token 0 is found
    by the linear probe on "codes"; changing the scoring half's targets leaves cv_r2 unchanged."""
    from labelers.latent.probe import action_probe, probe_features

    rng = np.random.default_rng(1)
    episodes = np.repeat(np.arange(12), 40)
    tokens = rng.integers(0, 8, size=(480, 4))
    codebook = rng.normal(size=(8, 3))
    codes = codebook[tokens].reshape(480, 12)  # M (L c)
    y = codes[:, :3] @ rng.normal(size=(3, 2)) + 0.01 * rng.normal(size=(480, 2))
    x = probe_features(tokens, codes, 8, "codes")
    assert x.shape == (480, 12)
    assert probe_features(tokens, codes, 8, "onehot+codes").shape == (480, 44)
    r = action_probe(x, y, episodes, kind="linear")
    assert r["r2"] > 0.99 and r["cv_r2"] > 0.99
    y2 = y.copy()
    y2[episodes >= 6] = rng.normal(size=(int((episodes >= 6).sum()), 2))  # scoring half: noise
    r2 = action_probe(x, y2, episodes, kind="linear")
    assert r2["cv_r2"] == r["cv_r2"] and r2["r2"] < 0.1
    with pytest.raises(ValueError, match="unknown probe features"):
        probe_features(tokens, codes, 8, "pixels")


def test_moving_weight_counts_moving_pixels_more():
    """reconstruction_loss: w = 0 is the plain MSE; with w the error on moving pixels weighs 1 + w."""
    import torch

    from labelers.latent.model import reconstruction_loss

    t = torch.zeros(1, 3, 4, 4)
    tg = t.clone()
    tg[:, :, 0, 0] = 1.0  # one moving pixel out of 16
    recon = t.clone()  # a copy of frame t: error 1 on the moving pixel, 0 elsewhere
    assert torch.isclose(reconstruction_loss(recon, t, tg), torch.tensor(1.0 / 16))
    # weights: moving 1 + 9 = 10, static 15 x 1 -> (10 x 1) / (25) per channel
    assert torch.isclose(reconstruction_loss(recon, t, tg, 9.0), torch.tensor(10.0 / 25))
    recon2 = tg.clone()
    recon2[:, :, 3, 3] = 1.0  # right on the moving pixel, wrong on a static one
    assert torch.isclose(reconstruction_loss(recon2, t, tg, 9.0), torch.tensor(1.0 / 25))
    with pytest.raises(ValueError, match="moving_weight"):
        get_config("small", moving_weight=-1.0)
