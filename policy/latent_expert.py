"""Latent Expert: flow matching over the anchor's latent action (LAFP's latent policy).

The target is the VQ latent action of the anchor as our latent action model (labelers/latent/)
labelled it: L tokens, each an index into a codebook of V code vectors of dimension c; the latent
is the L code vectors themselves (B L c), normalised per dimension by the spread of the codebook.
The network is the Action Expert's (policy/action_expert.py) over L latent tokens of c numbers
instead of C steps of A actions, with no proprio. Time convention (pi0): t = 1 noise, t = 0 data.

    tokens B L (int, -1 = pad) ─► codebook lookup ─► (code - centre) / scale ─► z B L c
                                                                                  │ x_t = t noise + (1 - t) z
    VL tokens B N D ──────────────────────────────► flow transformer (Action Expert network)
                                                                                  │
                                                         velocity B L c ─► masked MSE vs noise - z

Masking: an anchor whose latent is invalid (no frame t + gap; `latent_valid` False, tokens -1)
contributes nothing to the loss, whatever its token values. Sampling: Euler from noise at t = 1
to a latent at t = 0 (normalised units, B L c).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from policy.action_expert import ActionExpert
from policy.config import LaMPConfig

# A codebook dimension whose codes all agree (spread below this) is not scaled: dividing by ~0
# would blow tiny differences up to the noise's scale.
MIN_CODE_SCALE = 1e-6


class LatentExpert(nn.Module):
    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        self.L, self.c, self.V = cfg.latent_tokens, cfg.latent_dim, cfg.latent_codes  # L, c, V
        flow_cfg = dataclasses.replace(cfg, chunk_size=self.L, n_action_steps=self.L, action_dim=self.c, state_dim=0,
                                       action_layers=cfg.latent_layers, num_inference_steps=cfg.latent_inference_steps)
        self.flow = ActionExpert(flow_cfg)
        # The LAM's codebook (config, "from data") and its per-dimension centre and spread:
        # non-persistent buffers, rebuilt from the config a checkpoint carries.
        cb = torch.as_tensor(cfg.latent_codebook, dtype=torch.float32).reshape(self.V, self.c)  # V c
        scale = cb.std(dim=0, unbiased=False) if self.V > 1 else torch.ones(self.c)  # c
        self.register_buffer("codebook", cb, persistent=False)
        self.register_buffer("code_center", cb.mean(dim=0), persistent=False)  # c
        self.register_buffer("code_scale", torch.where(scale > MIN_CODE_SCALE, scale, torch.ones_like(scale)),
                             persistent=False)  # c

    def latents(self, tokens: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """tokens B L (int; any value where invalid), valid B -> (normalised latents B L c, zero
        where invalid; usable B bool: valid and every token a code index)."""
        tokens = tokens.long()
        usable = valid.to(torch.bool) & ((tokens >= 0) & (tokens < self.V)).all(dim=-1)  # B
        idx = torch.where(usable[:, None], tokens, torch.zeros_like(tokens))  # B L, pads -> code 0 (masked below)
        z = (self.codebook[idx] - self.code_center) / self.code_scale  # B L c
        return torch.where(usable[:, None, None], z, torch.zeros((), dtype=z.dtype)), usable

    def loss(self, tokens: Tensor, valid: Tensor, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None,
             generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict]:
        z, usable = self.latents(tokens, valid)  # B L c, B
        no_state = torch.zeros(z.shape[0], 0, dtype=z.dtype)
        loss, _ = self.flow.loss(z, usable[:, None].expand(-1, self.L), no_state, vl_tokens, vl_pad, generator)
        return loss, {"latent_loss": float(loss.detach()), "latent_valid_frac": float(usable.float().mean())}

    @torch.no_grad()
    def sample(self, vl_tokens: Tensor, vl_pad: Optional[Tensor] = None, num_steps: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """A latent action for each observation: B L c (normalised units)."""
        no_state = torch.zeros(vl_tokens.shape[0], 0, dtype=vl_tokens.dtype)
        return self.flow.sample(no_state, vl_tokens, vl_pad, num_steps=num_steps, generator=generator)

    def nearest_tokens(self, z: Tensor) -> Tensor:
        """Normalised latents B L c -> the nearest code of each position B L (for reading samples as tokens)."""
        codes = (self.codebook - self.code_center) / self.code_scale  # V c
        return torch.cdist(z.reshape(-1, self.c), codes).argmin(dim=-1).reshape(z.shape[:-1])
