"""Building blocks shared by the encoder and both experts: a pre-norm transformer block."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention + MLP over a token sequence x (B N D).
    `pad_mask` (B N, True = padding) hides tokens from attention as keys."""

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d_model, d_model)
        )

    def forward(self, x: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """N TransformerBlocks followed by a final LayerNorm."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, ffn_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(d_model, n_heads, ffn_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        for block in self.blocks:
            x = block(x, pad_mask)
        return self.norm(x)
