"""Flow-matching primitives shared by both experts: small stateless functions.

Two time conventions meet in this policy, so every function takes it explicitly:

- Action Expert (pi0): t = 1 is noise, t = 0 is data.
      x_t = t * noise + (1 - t) * x1          target velocity u = noise - x1
      sample by integrating dx/dt = v from t = 1 down to t = 0.
- Motion Expert (LaMP stage 1): t = 0 is noise, t = 1 is data.
      x_t = (1 - t) * noise + t * x1          target velocity u = x1 - noise
      partial denoising: one Euler step from t = 0 to tau.

Both are the same straight-line (rectified) path; `noise_at` names which end is noise.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor


def sample_beta_time(batch: int, alpha: float = 1.5, beta: float = 1.0, s_min: float = 0.001,
                     generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """pi0's time sampler: t = Beta(alpha, beta) * (1 - s_min) + s_min, in (s_min, 1].
    Beta(1.5, 1) puts more mass near t = 1 (the noise end in pi0's convention)."""
    if beta == 1.0:
        # Beta(a, 1) has CDF t^a: inverse-CDF sampling, reproducible through `generator`.
        u = torch.rand(batch, generator=generator, device=device)
        b = u.clamp_min(1e-12) ** (1.0 / alpha)
    else:
        b = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(beta)).sample((batch,)).to(device)
    return b * (1.0 - s_min) + s_min  # B


def sample_uniform_time(batch: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    return torch.rand(batch, generator=generator, device=device)  # B


def interpolate(x1: Tensor, noise: Tensor, t: Tensor, noise_at: float) -> Tensor:
    """Point on the straight path between data x1 and noise at time t (B,), broadcast over x1's
    trailing dims. noise_at = 1.0 (pi0) or 0.0 (LaMP motion)."""
    tb = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    w_noise = tb if noise_at == 1.0 else 1.0 - tb
    return w_noise * noise + (1.0 - w_noise) * x1


def target_velocity(x1: Tensor, noise: Tensor, noise_at: float) -> Tensor:
    """d x_t / d t along the path: noise - x1 when noise is at t = 1, x1 - noise when at t = 0."""
    return noise - x1 if noise_at == 1.0 else x1 - noise


def euler_integrate(velocity_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t_start: float, t_end: float,
                    num_steps: int) -> Tensor:
    """Integrate dx/dt = velocity_fn(x, t) from t_start to t_end with `num_steps` equal Euler steps.
    t is passed as a (B,) tensor. Works in either direction (dt may be negative)."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    dt = (t_end - t_start) / num_steps
    for i in range(num_steps):
        t = torch.full((x.shape[0],), t_start + i * dt, dtype=x.dtype, device=x.device)
        x = x + dt * velocity_fn(x, t)
    return x


def masked_mse(pred: Tensor, target: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean squared error over the entries where mask is True (all when mask is None).
    Masked-out entries contribute nothing, whatever their values (even NaN)."""
    if mask is None:
        return torch.mean((pred - target) ** 2)
    mask = mask.to(torch.bool).expand_as(pred)
    diff = torch.where(mask, pred - target, torch.zeros((), dtype=pred.dtype, device=pred.device))
    return (diff ** 2).sum() / mask.sum().clamp_min(1)


def sinusoidal_embedding(t: Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> Tensor:
    """Sine-cosine embedding of a scalar time in [0, 1] (pi0's periods): (B,) -> (B, dim)."""
    if dim % 2:
        raise ValueError("dim must be even")
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=t.device)
    period = min_period * (max_period / min_period) ** frac  # dim/2
    angle = t.to(torch.float32)[:, None] * (2 * math.pi / period)[None, :]  # B dim/2
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
