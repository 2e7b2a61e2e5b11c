"""Unit tests of the dual-expert policy: shapes, masking, gates, flow-matching primitives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_torch_thread")

from policy import flow_matching as fm
from cli.bench.policy import synthetic_batch
from policy.config import LaMPConfig
from policy.gated_xattn import GatedCrossAttention, build_fusion
from policy.modeling_lamp import LaMPPolicy

TINY = dict(image_size=(32, 32), image_patch=8, d_model=32, n_heads=2, vl_layers=1, motion_layers=1,
            action_layers=1, motion_points=9, motion_horizon=4, text_max_len=16, action_dim=4, state_dim=4)


def tiny_policy(**kw) -> LaMPPolicy:
    torch.manual_seed(0)
    return LaMPPolicy(LaMPConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("fusion", ["gated_sigmoid", "gated_tanh", "concat", "add", "none"])
def test_shapes_every_fusion(fusion):
    p = tiny_policy(fusion=fusion)
    batch = synthetic_batch(p.config, 3)
    vl, pad = p.encode(batch)
    assert vl.shape == (3, 16 + 16, 32) and pad.shape == (3, 32)  # (32/8)^2 image + 16 text tokens
    m = p.motion_features(vl, pad)
    assert (m is None) == (fusion == "none")
    if m is not None:
        assert m.shape == (3, 9, 32)
    for phase in ("motion", "action"):
        p.set_phase(phase)
        loss, logs = p(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
    chunk = p.predict_action_chunk(batch)
    assert chunk.shape == (3, 10, 4)
    v, h = p.motion_expert(batch["motion"], torch.rand(3), batch["anchor_uv"], vl, pad)
    assert v.shape == (3, 9, 4, 3) and h.shape == (3, 9, 32)


def test_phase_freezing():
    p = tiny_policy()
    p.set_phase("motion")
    assert all(q.requires_grad for q in p.motion_expert.parameters())
    assert not any(q.requires_grad for q in p.action_expert.parameters())
    p.set_phase("action", train_vl=False)
    assert not any(q.requires_grad for q in p.motion_expert.parameters())
    assert not any(q.requires_grad for q in p.vl_encoder.parameters())
    assert all(q.requires_grad for q in p.action_expert.parameters()) and p.fusion.g.requires_grad
    batch = synthetic_batch(p.config, 2)
    loss, _ = p(batch)
    loss.backward()
    assert all(q.grad is None for q in p.motion_expert.parameters())  # frozen: no gradient reaches it
    assert p.fusion.g.grad is not None and p.fusion.g.grad.abs() > 0


def test_select_action_queues_the_chunk(monkeypatch):
    p = tiny_policy(n_action_steps=4)
    calls = []
    real = p.predict_action_chunk

    def counting(batch, generator=None):
        calls.append(1)
        return real(batch, generator)

    monkeypatch.setattr(p, "predict_action_chunk", counting)
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "state": np.zeros(4, np.float32), "language": "push"}
    p.reset()
    p.set_seed(0)
    actions = [p.select_action(obs) for _ in range(9)]
    assert len(calls) == 3  # 4 + 4 + 1 actions -> three plans
    assert all(a.shape == (4,) for a in actions)
    p.reset()
    p.select_action(obs)
    assert len(calls) == 4  # reset drops the queue


def test_actions_are_unnormalised_with_dataset_stats():
    p = tiny_policy()
    stats = {"actions": {"mean": [0, 0, 0, 0], "std": [1, 1, 1, 1], "q01": [-2, 0, 0, 10], "q99": [2, 4, 0, 10]},
             "proprio": {"q01": [0, 0, 0, 0], "q99": [1, 1, 1, 1], "mean": [0] * 4, "std": [1] * 4}}
    p.set_stats(stats)
    assert torch.allclose(p.action_center, torch.tensor([0.0, 2.0, 0.0, 10.0]))
    assert torch.allclose(p.action_scale, torch.tensor([2.0, 2.0, 1.0, 1.0]))  # zero range -> scale 1
    torch.manual_seed(1)
    batch = synthetic_batch(p.config, 2)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    a = p.predict_action_chunk(batch, g1)
    tokens, pad = p.guided_tokens({k: v for k, v in batch.items() if k != "anchor_uv"}, g2)
    raw = p.action_expert.sample(batch["state"], tokens, pad, generator=g2)
    assert torch.allclose(a, raw * p.action_scale + p.action_center, atol=1e-5)


def test_motion_loss_ignores_invalid_entries():
    p = tiny_policy()
    p.set_phase("motion")
    batch = synthetic_batch(p.config, 4)
    mask = batch["motion_mask"]
    assert 0 < mask.float().mean() < 1
    other = dict(batch)
    other["motion"] = torch.where(mask, batch["motion"], torch.full_like(batch["motion"], 1e3))
    other["motion"][~mask & (torch.rand(mask.shape) > 0.5)] = float("nan")
    l1, _ = p(batch, generator=torch.Generator().manual_seed(3))
    l2, _ = p(other, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(l2) and l1.item() == pytest.approx(l2.item(), abs=0)
    # and valid entries do matter
    third = dict(batch)
    third["motion"] = torch.where(mask, batch["motion"] + 1.0, batch["motion"])
    l3, _ = p(third, generator=torch.Generator().manual_seed(3))
    assert abs(l3.item() - l1.item()) > 1e-3


def test_action_loss_ignores_invalid_chunk_steps():
    p = tiny_policy()
    p.set_phase("action")
    batch = synthetic_batch(p.config, 4)
    batch["action_valid"][:, 6:] = False
    other = dict(batch)
    other["action"] = batch["action"].clone()
    other["action"][:, 6:] = float("nan")
    l1, _ = p(batch, generator=torch.Generator().manual_seed(3))
    l2, _ = p(other, generator=torch.Generator().manual_seed(3))
    assert l1.item() == l2.item()


def test_masked_mse_counts_only_valid():
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = torch.tensor([0.0, 0.0, float("nan")])
    assert fm.masked_mse(pred, target, torch.tensor([True, True, False])).item() == pytest.approx(2.5)


def test_gate_at_initialisation():
    torch.manual_seed(0)
    vl, motion = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    sig = GatedCrossAttention(16, 2, "sigmoid")
    assert sig.gate.item() == 0.5 and sig.g.item() == 0.0
    attended = sig.attn(sig.norm_q(vl), sig.norm_kv(sig.motion_proj(motion)), sig.norm_kv(sig.motion_proj(motion)))[0]
    assert torch.allclose(sig(vl, motion), vl + 0.5 * attended, atol=1e-6)
    tanh = GatedCrossAttention(16, 2, "tanh")
    assert tanh.gate.item() == 0.0
    assert torch.equal(tanh(vl, motion), vl)  # Flamingo gate: an identity at start
    assert torch.equal(build_fusion("none", 16, 2)(vl, motion), vl)
    assert not torch.equal(build_fusion("add", 16, 2)(vl, motion), vl)


def test_euler_integrates_constant_velocity_exactly():
    x0 = torch.randn(3, 5)
    v = torch.randn(3, 5)
    for steps in (1, 3, 10):
        out = fm.euler_integrate(lambda x, t: v, x0, 1.0, 0.0, steps)
        assert torch.allclose(out, x0 - v, atol=1e-6)
    # a time-dependent field v = 2t: exact integral from 0 to 1 is 1; Euler with n steps gives 1 - 1/n
    out = fm.euler_integrate(lambda x, t: 2 * t[:, None].expand_as(x), torch.zeros(2, 1), 0.0, 1.0, 4)
    assert torch.allclose(out, torch.full((2, 1), 1 - 1 / 4))


def test_flow_matching_path_is_integrated_back_to_the_data():
    a, noise = torch.randn(4, 10, 7), torch.randn(4, 10, 7)
    # pi0 convention: at t = 1 the path is noise; the true velocity brings it back to a in 10 steps
    assert torch.allclose(fm.interpolate(a, noise, torch.ones(4), noise_at=1.0), noise)
    u = fm.target_velocity(a, noise, noise_at=1.0)
    out = fm.euler_integrate(lambda x, t: u, noise, 1.0, 0.0, 10)
    assert torch.allclose(out, a, atol=1e-5)
    # finite-difference derivative of the interpolant equals the target, both conventions
    for noise_at in (0.0, 1.0):
        t = torch.full((4,), 0.3)
        d = (fm.interpolate(a, noise, t + 1e-3, noise_at) - fm.interpolate(a, noise, t - 1e-3, noise_at)) / 2e-3
        assert torch.allclose(d, fm.target_velocity(a, noise, noise_at), atol=1e-2)


def test_beta_time_sampler():
    t = fm.sample_beta_time(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6 -> 0.6 * 0.999 + 0.001
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=3e-3)
    # CDF of Beta(1.5, 1) is s^1.5: P(t < 0.5) = ((0.5 - 0.001) / 0.999)^1.5
    assert (t < 0.5).float().mean().item() == pytest.approx(((0.5 - 0.001) / 0.999) ** 1.5, abs=3e-3)


def test_partial_denoising_follows_the_recipe():
    p = tiny_policy()
    me = p.motion_expert
    batch = synthetic_batch(p.config, 2)
    vl, pad = p.encode(batch)
    uv = batch["anchor_uv"]
    h, x_tau = me.partial_denoise(uv, vl, pad, generator=torch.Generator().manual_seed(7))
    x0 = torch.randn(2, 9, 4, 3, generator=torch.Generator().manual_seed(7))  # t = 0 is noise
    v0, _ = me(x0, torch.zeros(2), uv, vl, pad)
    assert torch.allclose(x_tau, x0 + 0.1 * v0, atol=1e-6)  # one Euler step to tau = 0.1
    _, h_ref = me(x0 + 0.1 * v0, torch.full((2,), 0.1), uv, vl, pad)  # second forward at tau
    assert torch.allclose(h, h_ref, atol=1e-6)


def test_sinusoidal_embedding():
    e = fm.sinusoidal_embedding(torch.tensor([0.0, 0.5]), 8)
    assert e.shape == (2, 8)
    assert torch.allclose(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert not torch.allclose(e[0], e[1])


def test_config_validation():
    with pytest.raises(ValueError):
        LaMPConfig(fusion="bogus")
    with pytest.raises(ValueError):
        LaMPConfig(d_model=30, n_heads=4)
    assert math.isclose(LaMPConfig().motion_tau, 0.1)
