"""Configuration of the latent action model (LAM): one dataclass, two presets.

`small`: 64 px frames, 8 px patches, width 96, 2 + 1 encoder and 2 decoder blocks (0.7M
parameters), flatten pooling, centred unit-length 8-d latents, 4 tokens from 16 codes -- trains
on one CPU core in minutes.
`paper`: LAPA's latent action quantisation model -- 256 px frames, 32 px patches,
width 1024, 16 heads, 8 spatial + 8 temporal encoder blocks, 8 decoder blocks,
4 tokens from a codebook of 8 codes of dimension 32 (about 330M parameters).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from schemas.config import strict_from_dict

# What the action probe (labelers/latent/probe.py) reads of the tokens: ids one-hot per position,
# the quantised code vectors, or both (here, not in probe.py, so the CLI lists them without torch).
PROBE_FEATURES = ("onehot", "codes", "onehot+codes")


@dataclass(frozen=True)
class LAMConfig:
    image_size: int = 64  # frames are resized to image_size x image_size
    patch_size: int = 8
    width: int = 96  # transformer width D
    heads: int = 4
    enc_spatial_depth: int = 2  # blocks attending within a frame
    enc_temporal_depth: int = 1  # blocks attending across frames t, t+gap at one patch (causal)
    dec_depth: int = 2  # decoder blocks: self-attention over patches of t + cross-attention to tokens
    mlp_ratio: float = 4.0
    num_tokens: int = 4  # L: tokens per latent action
    codebook_size: int = 8  # V: codes shared by all L positions
    code_dim: int = 32  # dimension of a code vector
    encoder_pixel_diff: bool = True  # encoder also sees frame - frame t as 3 extra channels
    predict_residual: bool = True  # decoder predicts frame t+gap - frame t (head zero-initialised)
    discard_threshold: float = 0.1  # codes used fewer times than this per batch are replaced
    # How the feature-difference map (B P D) becomes L latents: "attention" (L learned queries
    # attend over the patches, one projection per token) or "flatten" (each patch's difference
    # is reduced to `pool_dim` numbers, the P x pool_dim map is flattened and one linear layer
    # per token reads it: position-aware, suits a fixed camera).
    pool: str = "attention"
    pool_dim: int = 8
    # Scale every latent to unit length before NSVQ (nearest code by direction). Without it the
    # latents spread far beyond the codebook and each token position used 2-3 of the 8 codes.
    normalize_latents: bool = False
    # Centre each token position's latents (BatchNorm without affine, running statistics at
    # evaluation) before the unit scaling, so every position spreads over the shared codebook.
    center_latents: bool = False
    # Reconstruction loss weight on moving pixels (model.reconstruction_loss): a moving pixel
    # counts 1 + moving_weight times. 0 = LAPA's plain MSE, where the mostly static frame
    # dominates the loss.
    moving_weight: float = 0.0

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.num_tokens < 1 or self.codebook_size < 2:
            raise ValueError("need num_tokens >= 1 and codebook_size >= 2")
        if self.moving_weight < 0:
            raise ValueError(f"moving_weight must be >= 0, got {self.moving_weight}")
        if self.pool not in ("attention", "flatten"):
            raise ValueError(f"pool must be 'attention' or 'flatten', got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LAMConfig":
        data = json.loads(text)
        data.setdefault("pool", "attention")  # checkpoints written before these options existed
        data.setdefault("normalize_latents", False)
        data.setdefault("center_latents", False)
        data.setdefault("moving_weight", 0.0)
        return strict_from_dict(cls, data, "latent-action config keys")


PRESETS: dict[str, LAMConfig] = {
    # Flatten pooling, per-position centred unit-length latents, 8-d codes: on held-out
    # Meta-World pick-place (gap 8, 1500 steps) the action probe went from 0.26 linear / 0.32 MLP
    # R^2 (attention pooling, 32-d codes, gap 4) to 0.47 / 0.64, and from 11 to 210 distinct
    # token sequences; centring keeps other seeds from collapsing. 16 codes instead of LAPA's 8
    # (its scaling analysis: a larger latent space helps, vocabulary more than length on
    # low-DOF data): on pick-place, push and drawer-open the probes' cross-validated R^2 on the
    # fitting halves went 0.483 -> 0.530 linear, 0.452 -> 0.510 MLP (labelers/latent/README.md).
    "small": LAMConfig(pool="flatten", normalize_latents=True, center_latents=True, code_dim=8, codebook_size=16),
    "paper": LAMConfig(
        image_size=256,
        patch_size=32,
        width=1024,
        heads=16,
        enc_spatial_depth=8,
        enc_temporal_depth=8,
        dec_depth=8,
        num_tokens=4,
        codebook_size=8,
        code_dim=32,
    ),
}


def get_config(name: str, **overrides) -> LAMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown latent-action config {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """`["moving_weight=5", "num_tokens=8"]` -> {"moving_weight": 5.0, "num_tokens": 8}: each
    value converted to its LAMConfig field's type (bool from true/false/1/0); an unknown field
    or a value of the wrong type is a ValueError naming it."""
    types = {f.name: f.type for f in dataclasses.fields(LAMConfig)}
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in types:
            raise ValueError(f"--set {item!r}: want KEY=VALUE with KEY one of {sorted(types)}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1")
            else:
                out[key] = {"int": int, "float": float, "str": str}[kind](text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {key} takes a {kind}, got {text!r}") from None
    return out
