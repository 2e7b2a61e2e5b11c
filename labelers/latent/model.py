"""The latent action model (LAM) of the LAPA family: a VQ bottleneck between two frames.

    frame t ─────┐                                            frame t (patch embedding, DETACHED)
                 ├─ patch embed ─ spatial blocks ─ temporal blocks (causal) ─┐         │
    frame t+gap ─┘                                                           │   decoder blocks
                                               f(t+gap) - f(t)   B P D       │   (self-attn over
                                                     │                       │    patches, cross-
                  pool B L D ("attention" or "flatten", below)               │    attn to tokens)
                                                     │                       │         │
                                 per-token linear → NSVQ → L tokens ───────────┴──→ head → frame t+gap

Pooling (config.pool): "attention" -- L learned queries attend over the P difference vectors,
one projection per token; "flatten" -- each patch's difference is reduced to pool_dim numbers
and one linear layer per token reads the flattened P x pool_dim map (position-aware). With
config.normalize_latents the L latents are scaled to unit length before NSVQ.

The encoder sees both frames (and, with `encoder_pixel_diff`, the pixel difference
frame t+gap - frame t as three extra input channels: on a CPU budget this makes moving
regions visible from the first step instead of after many); the quantiser sees only the DIFFERENCE of their features, so
the tokens have to describe what changed. The decoder gets frame t through the encoder's patch
embedding with the gradient stopped (LAPA: this keeps the encoder from smuggling frame content
into the tokens) and must reconstruct frame t+gap from it and the tokens. Loss: MSE in [0, 1]
pixel units (optionally weighted towards moving pixels, config.moving_weight); NSVQ needs no
commitment loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelers.latent.config import LAMConfig
from labelers.latent.nsvq import NSVQ

# A pixel "moves" between frame t and t+gap when some channel changes by more than 8 of 255
# levels: above the rendering/compression noise of the sources, below the arm's edge contrast.
MOVING_THRESHOLD = 8.0 / 255.0


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        B, N, D = x.shape
        context = x if context is None else context
        q = self.q(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)  # B h N d
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # B h N d
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross=True` a cross-attention layer sits between
    self-attention and the MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_x = nn.LayerNorm(dim)
            self.norm_ctx = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=causal)
        if self.cross:
            x = x + self.cross_attn(self.norm_x(x), self.norm_ctx(context))
        return x + self.mlp(self.norm2(x))


def patchify(img: torch.Tensor, p: int) -> torch.Tensor:
    """B C H W -> B P (p*p*C), patches in row-major order."""
    B, C, H, W = img.shape
    x = img.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # B h w p p C
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """B P (p*p*3) -> B 3 H W."""
    B = x.shape[0]
    g = size // p
    return x.view(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, size, size)


class LatentActionModel(nn.Module):
    """forward(frame_t, frame_tg) -> dict(recon, indices, latents, loss).
    Frames are float B 3 H W in [0, 1] at config.image_size."""

    def __init__(self, config: LAMConfig):
        super().__init__()
        self.config = c = config
        D, P, p = c.width, c.num_patches, c.patch_size
        self.in_channels = 6 if c.encoder_pixel_diff else 3
        self.patch_embed = nn.Linear(p * p * self.in_channels, D)
        self.enc_pos = nn.Parameter(torch.randn(1, P, D) * 0.02)
        self.enc_time = nn.Parameter(torch.randn(2, D) * 0.02)  # frame t, frame t+gap
        self.spatial = nn.ModuleList(Block(D, c.heads, c.mlp_ratio) for _ in range(c.enc_spatial_depth))
        self.temporal = nn.ModuleList(Block(D, c.heads, c.mlp_ratio) for _ in range(c.enc_temporal_depth))
        self.enc_norm = nn.LayerNorm(D)
        # Distinct queries (unit-scale, not 0.02) and one projection per token position: with
        # near-equal queries every position pools the same vector and the L tokens collapse
        # into copies of one token (seen on Meta-World: 19 distinct sequences out of 8^4).
        if c.pool == "attention":
            self.pool_queries = nn.Parameter(torch.randn(1, c.num_tokens, D))
            self.pool = Attention(D, c.heads)
            self.pool_norm = nn.LayerNorm(D)
            self.token_norm = nn.LayerNorm(D)
            d_in = D
        else:  # "flatten": per-patch reduction, then a position-aware linear read-out per token
            self.pool_reduce = nn.Linear(D, c.pool_dim)
            self.token_norm = nn.LayerNorm(P * c.pool_dim)
            d_in = P * c.pool_dim
        self.to_code_w = nn.Parameter(torch.randn(c.num_tokens, d_in, c.code_dim) / d_in ** 0.5)
        self.to_code_b = nn.Parameter(torch.zeros(c.num_tokens, c.code_dim))
        if c.center_latents:
            self.latent_center = nn.BatchNorm1d(c.num_tokens * c.code_dim, affine=False)
        self.vq = NSVQ(c.code_dim, c.codebook_size, c.discard_threshold)
        self.from_code = nn.Linear(c.code_dim, D)
        self.token_pos = nn.Parameter(torch.randn(1, c.num_tokens, D) * 0.02)
        self.dec_pos = nn.Parameter(torch.randn(1, P, D) * 0.02)
        self.decoder = nn.ModuleList(Block(D, c.heads, c.mlp_ratio, cross=True) for _ in range(c.dec_depth))
        self.dec_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, p * p * 3)
        if c.predict_residual:  # start as "copy frame t": reconstruction PSNR starts at the copy baseline
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def encode(self, frame_t: torch.Tensor, frame_tg: torch.Tensor) -> torch.Tensor:
        """-> continuous latents B L c (before quantisation)."""
        c = self.config
        B = frame_t.shape[0]
        x = torch.stack([frame_t, frame_tg], 1) * 2.0 - 1.0  # B 2 3 H W in [-1, 1]
        if c.encoder_pixel_diff:  # channels 3-5: frame - frame t (zero for frame t itself)
            x = torch.cat([x, x - x[:, :1]], 2)  # B 2 6 H W
        x = self.patch_embed(patchify(x.flatten(0, 1), c.patch_size))  # 2B P D
        x = x.view(B, 2, c.num_patches, c.width) + self.enc_pos[:, None] + self.enc_time[None, :, None]
        h = x.flatten(0, 1)  # 2B P D
        for blk in self.spatial:
            h = blk(h)
        h = h.view(B, 2, c.num_patches, c.width).transpose(1, 2).flatten(0, 1)  # BP 2 D
        for blk in self.temporal:
            h = blk(h, causal=True)  # frame t never sees frame t+gap
        h = self.enc_norm(h).view(B, c.num_patches, 2, c.width)
        diff = h[:, :, 1] - h[:, :, 0]  # B P D
        if c.pool == "attention":
            pooled = self.pool(self.pool_queries.expand(B, -1, -1), self.pool_norm(diff))  # B L D
            z = torch.einsum("bld,ldc->blc", self.token_norm(pooled), self.to_code_w) + self.to_code_b  # B L c
        else:
            flat = self.token_norm(self.pool_reduce(diff).flatten(1))  # B (P pool_dim)
            z = torch.einsum("bk,lkc->blc", flat, self.to_code_w) + self.to_code_b  # B L c
        if c.center_latents:
            z = self.latent_center(z.flatten(1)).view_as(z)
        return F.normalize(z, dim=-1) if c.normalize_latents else z

    def decode(self, frame_t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """frame t (B 3 H W in [0, 1]) + quantised codes (B L c) -> frame t+gap estimate."""
        c = self.config
        x = frame_t * 2.0 - 1.0
        if c.encoder_pixel_diff:
            x = torch.cat([x, torch.zeros_like(x)], 1)  # frame t's difference to itself
        with torch.no_grad():  # stop-gradient on the decoder's view of frame t
            h = self.patch_embed(patchify(x, c.patch_size))  # B P D
        h = h.detach() + self.dec_pos
        tokens = self.from_code(codes) + self.token_pos  # B L D
        for blk in self.decoder:
            h = blk(h, context=tokens)
        out = unpatchify(self.head(self.dec_norm(h)), c.patch_size, c.image_size)  # B 3 H W
        return frame_t + out if c.predict_residual else (out + 1.0) * 0.5

    def forward(self, frame_t: torch.Tensor, frame_tg: torch.Tensor) -> dict[str, torch.Tensor]:
        latents = self.encode(frame_t, frame_tg)
        codes, indices = self.vq(latents)
        recon = self.decode(frame_t, codes)
        loss = reconstruction_loss(recon, frame_t, frame_tg, self.config.moving_weight)
        return {"loss": loss, "recon": recon, "indices": indices, "latents": latents}

    @torch.no_grad()
    def tokens(self, frame_t: torch.Tensor, frame_tg: torch.Tensor) -> torch.Tensor:
        """Hard token indices B L (the labeler's output), without touching usage counters."""
        return self.vq.nearest(self.encode(frame_t, frame_tg).flatten(0, 1)).view(frame_t.shape[0], -1)


def reconstruction_loss(recon: torch.Tensor, frame_t: torch.Tensor, frame_tg: torch.Tensor, moving_weight: float = 0.0) -> torch.Tensor:
    """MSE of recon against frame t+gap (all B 3 H W); with moving_weight w > 0 a weighted mean
    in which pixels that move between t and t+gap (MOVING_THRESHOLD, any channel) count 1 + w
    times, static ones once (w = 0: LAPA's plain MSE)."""
    se = (recon - frame_tg) ** 2  # B 3 H W
    if moving_weight <= 0.0:
        return se.mean()
    moving = ((frame_tg - frame_t).abs() > MOVING_THRESHOLD).any(1, keepdim=True)  # B 1 H W
    weight = 1.0 + moving_weight * moving.to(se.dtype)  # B 1 H W
    return (se * weight).sum() / (weight.sum() * se.shape[1])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
