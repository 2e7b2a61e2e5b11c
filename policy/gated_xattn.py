"""Fusion of the motion features into the VL tokens, and its ablations.

    gated_sigmoid (LaMP):  out = vl + sigmoid(g) * MHA(q = LN(vl), k = v = LN(W m))     g = 0 -> gate 0.5
    gated_tanh (Flamingo): out = vl + tanh(g)    * MHA(q = LN(vl), k = v = LN(W m))     g = 0 -> identity
    concat (Concat-MLP):   out = vl + MLP([LN(vl) ; LN(W mean_K(m))])
    add:                   out = vl + LN(W mean_K(m))
    none:                  out = vl   (no motion prior: the baseline)

vl B N D, motion features m B K D (from MotionExpert.partial_denoise).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedCrossAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, gate: str = "sigmoid", dropout: float = 0.0):
        super().__init__()
        if gate not in ("sigmoid", "tanh"):
            raise ValueError("gate must be sigmoid or tanh")
        self.gate_fn = torch.sigmoid if gate == "sigmoid" else torch.tanh
        self.motion_proj = nn.Linear(d_model, d_model)  # W
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.g = nn.Parameter(torch.zeros(()))  # scalar gate logit, 0 at init

    @property
    def gate(self) -> Tensor:
        return self.gate_fn(self.g)

    def forward(self, vl: Tensor, motion: Tensor) -> Tensor:
        q = self.norm_q(vl)  # B N D
        kv = self.norm_kv(self.motion_proj(motion))  # B K D
        attended = self.attn(q, kv, kv, need_weights=False)[0]  # B N D
        return vl + self.gate * attended


class ConcatFusion(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.motion_proj = nn.Linear(d_model, d_model)
        self.norm_vl = nn.LayerNorm(d_model)
        self.norm_m = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

    def forward(self, vl: Tensor, motion: Tensor) -> Tensor:
        m = self.norm_m(self.motion_proj(motion.mean(dim=1)))[:, None, :].expand_as(vl)  # B N D
        return vl + self.mlp(torch.cat([self.norm_vl(vl), m], dim=-1))


class AddFusion(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.motion_proj = nn.Linear(d_model, d_model)
        self.norm_m = nn.LayerNorm(d_model)

    def forward(self, vl: Tensor, motion: Tensor) -> Tensor:
        return vl + self.norm_m(self.motion_proj(motion.mean(dim=1)))[:, None, :]


class NoFusion(nn.Module):
    def forward(self, vl: Tensor, motion: Tensor | None = None) -> Tensor:
        return vl


def build_fusion(kind: str, d_model: int, n_heads: int, dropout: float = 0.0) -> nn.Module:
    if kind == "gated_sigmoid":
        return GatedCrossAttention(d_model, n_heads, "sigmoid", dropout)
    if kind == "gated_tanh":
        return GatedCrossAttention(d_model, n_heads, "tanh", dropout)
    if kind == "concat":
        return ConcatFusion(d_model)
    if kind == "add":
        return AddFusion(d_model)
    if kind == "none":
        return NoFusion()
    raise ValueError(f"unknown fusion {kind!r}")
