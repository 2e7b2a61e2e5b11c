"""LaMP-style dual-expert policy: the wrapper the trainer and the evaluator use.

    image, instruction ─► VL encoder ─► VL tokens ──────────────────────────────┐
                                          │                                     │
                                          ▼ (frozen in phase "action")          ▼
                       Motion Expert: noise ─Euler→ tau ─forward→ hidden ─► fusion (gated x-attn
                                                                           │     / concat / add / none)
                                                                           ▼
                                              guided VL tokens (+ a variant's context tokens)
                                                                           ▼
                          state, noisy chunk ─► Action Expert (joint attention with guided VL)
                                                        │ 10 Euler steps, t = 1 → 0
                                                        ▼
                                                action chunk C x A ─► queue ─► select_action

Phase "motion" (stage 1): loss = Motion Expert flow matching (+ trains the VL encoder).
Phase "action" (stage 2): Motion Expert frozen; loss = Action Expert flow matching;
trains the fusion block, the Action Expert and (TrainConfig.train_vl_in_action_phase) the
VL encoder.

Batches are dicts of tensors (see policy/loader.py `collate`):
  image B 3 H W uint8, language list[str], state B P, action B C A, action_valid B C,
  motion B K T 3, motion_mask B K T 3, anchor_uv B K 2     (all normalised by the loader)
Normalisation statistics live in buffers, so a checkpoint alone is enough to act.

Variants (LaMPConfig.variant, policy/variants.py) plug in beside this diagram: extra context
tokens after the guided VL tokens, extra loss terms in phase "action", pretraining phases of their
own. The default "lamp" builds none of them, and every hook below is then skipped.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from policy.action_expert import ActionExpert
from policy.config import LaMPConfig
from policy.gated_xattn import build_fusion
from policy.motion_expert import MotionExpert
from policy.normalize import center_scale
from policy.variants import build_variant_parts
from policy.vl_encoder import build_vl_encoder


class LaMPPolicy(nn.Module):
    name = "lamp"

    def __init__(self, config: LaMPConfig, stats: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.config = cfg = config
        self.vl_encoder = build_vl_encoder(cfg)
        self.motion_expert = MotionExpert(cfg)
        self.fusion = build_fusion(cfg.fusion, cfg.d_model, cfg.n_heads, cfg.dropout)
        self.action_expert = ActionExpert(cfg)
        # Normalisation and the query grid: buffers so they travel in the checkpoint.
        self.register_buffer("action_center", torch.zeros(cfg.action_dim))
        self.register_buffer("action_scale", torch.ones(cfg.action_dim))
        self.register_buffer("state_center", torch.zeros(cfg.state_dim))
        self.register_buffer("state_scale", torch.ones(cfg.state_dim))
        self.register_buffer("query_uv", torch.zeros(cfg.motion_points, 2))  # K 2 in [-1, 1]
        if stats is not None:
            self.set_stats(stats)
        self.extra = build_variant_parts(cfg)  # built last: the base modules' initial weights stay as they are
        self.phase = "action"
        self._queue: deque = deque()
        self._generator: Optional[torch.Generator] = None

    # ------------------------------------------------------------------ setup
    def set_stats(self, stats: Mapping[str, Any]) -> None:
        """stats: {"actions": {...}, "proprio": {...}} entries of stats.json."""
        mode = self.config.normalization
        c, s = center_scale(stats["actions"], mode)
        self.action_center.copy_(torch.from_numpy(c[: self.config.action_dim]))
        self.action_scale.copy_(torch.from_numpy(s[: self.config.action_dim]))
        if self.config.state_dim and stats.get("proprio"):
            c, s = center_scale(stats["proprio"], mode)
            self.state_center.copy_(torch.from_numpy(c[: self.config.state_dim]))
            self.state_scale.copy_(torch.from_numpy(s[: self.config.state_dim]))

    def set_query_uv(self, anchor_uv: Tensor) -> None:
        """The K query positions (normalised to [-1, 1]) the Motion Expert is asked about at inference."""
        self.query_uv.copy_(torch.as_tensor(anchor_uv, dtype=torch.float32).reshape(self.config.motion_points, 2))

    def set_phase(self, phase: str, train_vl: bool = True) -> None:
        """Select the loss and freeze what the phase does not train."""
        own = self.extra.phases if self.extra is not None else ()
        if phase not in ("motion", "action", *own):
            raise ValueError(f"phase {phase!r}: variant {self.config.variant} trains motion, action{''.join(', ' + p for p in own)}")
        self.phase = phase
        self.requires_grad_(False)
        if phase == "motion":
            self.vl_encoder.requires_grad_(True)
            self.motion_expert.requires_grad_(True)
        elif phase == "action":
            self.fusion.requires_grad_(True)
            self.action_expert.requires_grad_(True)
            self.vl_encoder.requires_grad_(train_vl)
        if self.extra is not None:
            self.extra.trainable(self, phase)
        if getattr(self.vl_encoder, "frozen", False):  # a frozen pretrained VLM stays frozen; its projections learn
            self.vl_encoder.model.requires_grad_(False)

    def at_step(self, step: int, total: int) -> None:
        """The trainer is about to run step `step` of `total` (a variant's schedules follow it)."""
        if self.extra is not None:
            self.extra.at_step(step, total)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.phase != "motion":
            self.motion_expert.eval()  # frozen in stage 2 (and in a variant's own phases)
        return self

    # ------------------------------------------------------------------ model
    def encode(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return self.vl_encoder(batch["image"], list(batch["language"]))  # B N D, B N

    def motion_features(self, vl: Tensor, vl_pad: Tensor, anchor_uv: Optional[Tensor] = None,
                        generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
        """One-step partial denoising of the (frozen) Motion Expert: B K D, or None for fusion none."""
        if not self.config.uses_motion:
            return None
        B = vl.shape[0]
        uv = self.query_uv.expand(B, -1, -1) if anchor_uv is None else anchor_uv
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.phase == "motion"):
            h, _ = self.motion_expert.partial_denoise(uv, vl, vl_pad, generator=generator)
        return h

    def guided_tokens(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """The tokens the Action Expert attends to: B N(+X) D and their padding."""
        return self.conditioning(batch, generator)[2:]

    def conditioning(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None):
        """(VL tokens B N D, their padding B N, guided tokens B N+X D, their padding): the guided
        tokens are the VL tokens after fusion, followed by a variant's X context tokens."""
        vl, vl_pad = self.encode(batch)
        m = self.motion_features(vl, vl_pad, batch.get("anchor_uv"), generator)
        tokens, pad = (vl if m is None else self.fusion(vl, m)), vl_pad
        ctx = self.extra.context_tokens(self, batch, vl, vl_pad, generator) if self.extra is not None else None  # B X D
        if ctx is not None:
            tokens = torch.cat([tokens, ctx], dim=1)
            if pad is not None:
                pad = torch.cat([pad, torch.zeros(ctx.shape[:2], dtype=torch.bool, device=pad.device)], dim=1)
        return vl, vl_pad, tokens, pad

    def forward(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None) -> tuple[Tensor, dict]:
        """Training loss of the current phase and a dict of logged values (LeRobot ACT style)."""
        if self.phase == "motion":
            vl, vl_pad = self.encode(batch)
            return self.motion_expert.loss(batch["motion"], batch["motion_mask"].to(torch.bool), batch["anchor_uv"],
                                           vl, vl_pad, generator)
        if self.phase != "action":
            return self.extra.phase_loss(self, batch, generator)
        vl, vl_pad, tokens, pad = self.conditioning(batch, generator)
        loss, logs = self.action_expert.loss(batch["action"], batch["action_valid"].to(torch.bool), self._state(batch),
                                             tokens, pad, generator)
        if hasattr(self.fusion, "gate"):
            logs["gate"] = float(self.fusion.gate.detach())
        if self.extra is not None:  # after the action loss: its noise draws are those of the base trainer
            aux, aux_logs = self.extra.aux_loss(self, batch, vl, vl_pad, generator)
            logs = {**logs, **aux_logs}
            if aux is not None:
                loss = loss + aux
        return loss, logs

    def _state(self, batch: Mapping[str, Any]) -> Tensor:
        if self.config.state_dim == 0 or "state" not in batch:
            return torch.zeros(len(batch["language"]), self.config.state_dim)  # B 0 (or B P of zeros)
        return batch["state"].to(torch.float32)

    # ------------------------------------------------------------------ inference
    def reset(self) -> None:
        """Call at the start of every episode: drops queued actions."""
        self._queue.clear()
        if self.extra is not None:
            self.extra.reset()

    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], generator: Optional[torch.Generator] = None) -> Tensor:
        """Normalised-input batch -> action chunk B C A in the dataset's action units (anchor_uv taken
        from the query grid, not from the batch: at test time nothing is tracked)."""
        was_training = self.training
        self.eval()
        inputs = {k: v for k, v in batch.items() if k != "anchor_uv"}
        tokens, pad = self.guided_tokens(inputs, generator)
        a = self.action_expert.sample(self._state(inputs), tokens, pad, generator=generator)  # B C A
        self.train(was_training)
        return a * self.action_scale + self.action_center

    @torch.no_grad()
    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        """One raw observation {image: H W 3 uint8, state: P (dataset units), language: str} ->
        one action A (dataset units). Plans a chunk when the queue is empty and executes its
        first n_action_steps actions."""
        if not self._queue:
            batch = self.prepare_observation(observation)
            chunk = self.predict_action_chunk(batch, self._generator)[0]  # C A
            self._queue.extend(chunk[: self.config.n_action_steps].cpu().numpy())
        action = self._queue.popleft()
        if self.extra is not None:
            self.extra.executed(self, action)
        return action

    def prepare_observation(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        img = torch.as_tensor(np.ascontiguousarray(observation["image"]))
        if img.dim() == 3:
            img = img[None]
        if img.shape[-1] == 3:  # B H W 3 -> B 3 H W
            img = img.permute(0, 3, 1, 2)
        state = torch.as_tensor(np.asarray(observation.get("state", np.zeros(self.config.state_dim)), np.float32))
        state = state.reshape(img.shape[0], -1)[:, : self.config.state_dim]
        state = (state - self.state_center) / self.state_scale
        lang = observation.get("language", "")
        batch = {"image": img.contiguous(), "state": state, "language": [lang] * img.shape[0] if isinstance(lang, str) else list(lang)}
        if self.extra is not None:
            self.extra.observe(self, observation, batch)
        return batch

    def set_seed(self, seed: int) -> None:
        """Make sampling reproducible (noise of both experts)."""
        self._generator = torch.Generator().manual_seed(int(seed))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
