"""Noise-substitution vector quantisation (NSVQ, Vali & Baeckstroem 2022), as LAPA uses it.

Training forward pass: the quantisation error is replaced by noise of the same norm,

    q_out = x + ||x - q|| * e / ||e||,   e ~ N(0, I),   q = nearest code to x,

so the gradient reaches the input x unchanged (straight through) and the codebook through
||x - q||; no commitment loss and no straight-through estimator are needed. Evaluation
returns the hard nearest code q.

Dead codes: usage counts accumulate between replacements; at the steps of LAPA's schedule
(`is_replacement_step`) the codes used fewer than `discard_threshold` times per batch are
replaced. We replace a dead code with a latent vector drawn from the current batch (a code
that is then used at least once) rather than a noisy copy of a live code as NSVQ does: on
small data the copies tend to die again.
"""

from __future__ import annotations

import torch
from torch import nn


def is_replacement_step(step: int) -> bool:
    """LAPA's schedule, `step` counted in completed optimiser updates (1-based):
    10-90 every 10, 100-900 every 100, 500-4500 every 500 (500 is in both)."""
    return (
        (10 <= step < 100 and step % 10 == 0)
        or (100 <= step < 1000 and step % 100 == 0)
        or (500 <= step < 5000 and step % 500 == 0)
    )


def replacement_steps(up_to: int) -> list[int]:
    return [s for s in range(1, up_to + 1) if is_replacement_step(s)]


class NSVQ(nn.Module):
    def __init__(self, code_dim: int, codebook_size: int, discard_threshold: float = 0.1, eps: float = 1e-12):
        super().__init__()
        self.code_dim = code_dim
        self.codebook_size = codebook_size
        self.discard_threshold = discard_threshold
        self.eps = eps
        # NSVQ's initialisation: uniform in +-1/V.
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size))
        # Usage since the last replacement; buffers so that checkpoints carry them.
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.float64))
        self.register_buffer("batches", torch.zeros((), dtype=torch.float64))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) for each row of x (M c)."""
        cb = self.codebook
        dist = x.pow(2).sum(-1, keepdim=True) - 2.0 * x @ cb.t() + cb.pow(2).sum(-1)[None, :]  # M V
        return dist.argmin(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ... c latent vectors -> (quantised ... c, code indices ... int64)."""
        shape = x.shape
        flat = x.reshape(-1, self.code_dim)  # M c
        idx = self.nearest(flat.detach())  # M
        hard = self.codebook[idx]  # M c
        if not self.training:
            return hard.view(shape), idx.view(shape[:-1])
        residual_norm = (flat - hard).norm(dim=-1, keepdim=True)  # M 1, carries the codebook gradient
        noise = torch.randn_like(flat)
        noise = noise / (noise.norm(dim=-1, keepdim=True) + self.eps)
        out = flat + residual_norm * noise
        with torch.no_grad():
            self.usage += torch.bincount(idx, minlength=self.codebook_size).to(self.usage.dtype)
            self.batches += 1
        return out.view(shape), idx.view(shape[:-1])

    @torch.no_grad()
    def replace_unused(self, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Replace codes used < discard_threshold times per batch since the last call.

        candidates: M c latent vectors to draw replacements from (the current batch);
        without them a dead code becomes a live code plus small noise (NSVQ's rule).
        Returns the indices of the replaced codes and resets the usage counters."""
        rate = self.usage / self.batches.clamp(min=1.0)
        dead = torch.nonzero(rate < self.discard_threshold).flatten()
        if dead.numel():
            if candidates is not None and candidates.numel():
                pick = torch.randint(0, candidates.shape[0], (dead.numel(),))
                new = candidates.reshape(-1, self.code_dim)[pick].to(self.codebook.dtype)
            else:
                live = torch.nonzero(rate >= self.discard_threshold).flatten()
                source = self.codebook[live] if live.numel() else self.codebook
                new = source[torch.randint(0, source.shape[0], (dead.numel(),))]
            scale = new.std().clamp(min=1e-6) * 1e-2
            self.codebook[dead] = new + scale * torch.randn_like(new)
        self.usage.zero_()
        self.batches.zero_()
        return dead
