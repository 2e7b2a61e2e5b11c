"""Vision-language encoder: camera image + instruction -> a sequence of VL tokens.

    image  B 3 H W uint8 ──► conv patchify (p x p) ──► (H/p)(W/p) image tokens ─┐
                                                                                ├─► [img; txt] + type emb
    text   list[str] ──► UTF-8 bytes (<= L) ──► byte embedding ──► L text tokens ┘        │
                                                                               TransformerStack
                                                                                          ▼
                                                                  VL tokens B N D, pad mask B N

The interface (`forward(images, texts) -> (tokens B N D, pad_mask B N)`) is what the rest of
the policy sees, so a pretrained VLM from transformers replaces the compact encoder with
`vl_backend: hf` and `hf_model: <id or local dir>` (HFVLEncoder): its vision and text towers'
last hidden states are projected to D. LaMP itself keeps its VLM frozen (`hf_freeze`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policy.config import LaMPConfig
from policy.layers import TransformerStack

BYTE_PAD = 256  # byte vocabulary 0..255 plus one padding id


def encode_bytes(texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Instructions -> byte ids (B L int64, BYTE_PAD where padded) and pad mask (B L bool).
    An empty instruction keeps one pad token visible so attention never sees an all-masked row."""
    ids = torch.full((len(texts), max_len), BYTE_PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        b = list((text or "").lower().encode("utf-8")[:max_len])
        if b:
            ids[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    pad = ids == BYTE_PAD
    pad[:, 0] = False
    return ids, pad


def images_to_float(images: Tensor) -> Tensor:
    """uint8 B 3 H W (or float in [0, 1]) -> float32 in [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255.0
    return images * 2.0 - 1.0


class CompactVLEncoder(nn.Module):
    """A small conv-patch image encoder and a byte-level text encoder, fused by a few
    transformer layers. Sized to train on a CPU."""

    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        H, W = cfg.image_size
        p = cfg.image_patch
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by image_patch {p}")
        d = cfg.d_model
        self.text_max_len = cfg.text_max_len
        # Two stride-2 convs then a patchifying conv: a little locality before the tokens.
        self.stem = nn.Sequential(
            nn.Conv2d(3, d // 4, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(d // 4, d // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(d // 2, d, p // 4, stride=p // 4),
        )
        self.num_image_tokens = (H // p) * (W // p)
        self.image_pos = nn.Parameter(torch.randn(1, self.num_image_tokens, d) * 0.02)
        self.byte_emb = nn.Embedding(BYTE_PAD + 1, d)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.text_max_len, d) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(2, d) * 0.02)  # 0 image, 1 text
        self.fuse = TransformerStack(cfg.vl_layers, d, cfg.n_heads, cfg.ffn_mult, cfg.dropout)

    @property
    def num_tokens(self) -> int:
        return self.num_image_tokens + self.text_max_len

    def forward(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
        x = self.stem(images_to_float(images))  # B D H/p W/p
        img = x.flatten(2).transpose(1, 2) + self.image_pos + self.type_emb[0]  # B Ni D
        ids, pad = encode_bytes(texts, self.text_max_len)
        ids, pad = ids.to(img.device), pad.to(img.device)
        txt = self.byte_emb(ids) + self.text_pos + self.type_emb[1]  # B L D
        tokens = torch.cat([img, txt], dim=1)  # B N D
        pad_mask = torch.cat([torch.zeros(img.shape[:2], dtype=torch.bool, device=img.device), pad], dim=1)  # B N
        return self.fuse(tokens, pad_mask), pad_mask


class HFVLEncoder(nn.Module):
    """A transformers dual-tower model (CLIP, SigLIP, ...) as the VL encoder.

    Loads `cfg.hf_model` (hub id or local directory) with AutoModel and AutoTokenizer; images are
    resized to the vision tower's size and normalised with the processor's mean/std when a
    processor config is present (else mean = std = 0.5). Vision and text last hidden states are
    projected to d_model and concatenated, like the compact encoder's output."""

    def __init__(self, cfg: LaMPConfig):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if not cfg.hf_model:
            raise ValueError("vl_backend=hf needs hf_model (a model id or local directory)")
        self.model = AutoModel.from_pretrained(cfg.hf_model)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.hf_model)
        vcfg = self.model.config.vision_config
        tcfg = self.model.config.text_config
        self.image_res = int(vcfg.image_size)
        self.text_max_len = min(cfg.text_max_len, int(getattr(tcfg, "max_position_embeddings", cfg.text_max_len)))
        mean, std = [0.5] * 3, [0.5] * 3
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(cfg.hf_model)
            mean, std = list(proc.image_mean), list(proc.image_std)
        except Exception:  # no preprocessor_config.json: keep the SigLIP-style 0.5/0.5
            pass
        self.register_buffer("pix_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pix_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.vision_proj = nn.Linear(int(vcfg.hidden_size), cfg.d_model)
        self.text_proj = nn.Linear(int(tcfg.hidden_size), cfg.d_model)
        self.type_emb = nn.Parameter(torch.zeros(2, cfg.d_model))
        self.frozen = cfg.hf_freeze
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
        x = images.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else images
        x = nn.functional.interpolate(x, size=(self.image_res, self.image_res), mode="bilinear", align_corners=False)
        x = (x - self.pix_mean) / self.pix_std
        tok = self.tokenizer([t or "" for t in texts], padding="max_length", truncation=True,
                             max_length=self.text_max_len, return_tensors="pt")
        ids = tok["input_ids"].to(x.device)
        attn = tok.get("attention_mask", torch.ones_like(ids)).to(x.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            vis = self.model.vision_model(pixel_values=x).last_hidden_state  # B Nv Dv
            txt = self.model.text_model(input_ids=ids, attention_mask=attn).last_hidden_state  # B L Dt
        img_tokens = self.vision_proj(vis) + self.type_emb[0]
        txt_tokens = self.text_proj(txt) + self.type_emb[1]
        pad = attn == 0
        pad[:, 0] = False
        pad_mask = torch.cat([torch.zeros(img_tokens.shape[:2], dtype=torch.bool, device=x.device), pad], dim=1)
        return torch.cat([img_tokens, txt_tokens], dim=1), pad_mask


def build_vl_encoder(cfg: LaMPConfig) -> nn.Module:
    if cfg.vl_backend == "compact":
        return CompactVLEncoder(cfg)
    if cfg.vl_backend == "hf":
        return HFVLEncoder(cfg)
    raise ValueError(f"unknown vl_backend {cfg.vl_backend!r} (compact | hf)")
