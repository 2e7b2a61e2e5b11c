"""Configuration of the dual-expert (LaMP-style) policy and of its training runs.

Two dataclasses, each flat so a YAML/JSON file can override any field:

    policy:            # LaMPConfig: the network and its inputs/outputs
      d_model: 128
      fusion: gated_sigmoid
    train:             # TrainConfig: the optimisation of one phase
      steps: 3000
      batch_size: 32

Fields marked "from data" are filled from the dataset (manifest/info) by the
trainer before the model is built, and saved with every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.config import strict_from_dict

FUSIONS = ("gated_sigmoid", "gated_tanh", "concat", "add", "none")
MOTION_REPRS = ("uvd", "xyz", "uv")
# Channels per point and step of each motion representation: uv is the 2D-track prior
# (LaMP's ablation of 3D scene flow), pixel displacement only.
MOTION_CHANNELS = {"uvd": 3, "xyz": 3, "uv": 2}
NORM_MODES = ("mean_std", "quantile")
# What is trained beside the two experts (policy/variants.py). "lamp" is the dual-expert trainer
# itself: scratch, none, lamp, lamp_gt and lamp_2d of the motion-prior experiment differ only by
# fusion and stage 1. Each other name adds its own parts (heads, a pretraining phase).
VARIANTS = ("lamp", "motion_image", "action_prior", "lafp")  # lafp: latent action flow policy (policy/lafp.py)
# Each variant's own fields of LaMPConfig: a stage-2 run takes them from its config, not from the
# stage-1 checkpoint it starts from (policy/train.py config_from_init).
VARIANT_FIELDS: dict[str, tuple[str, ...]] = {
    "lamp": (),
    "motion_image": ("motion_image_grid", "motion_image_layers", "motion_image_weight"),
    "action_prior": ("prior_history", "prior_layers", "prior_distill_weight", "prior_distill_frac"),
    "lafp": (),
}
# Training phases: the two of the dual-expert trainer, then those a variant adds.
PHASES = ("motion", "action", "prior", "latent")  # prior: action_prior's stage 1; latent: lafp's (policy/lafp.py)
# Phases that read no actions (frames, language and labels only): the action-free corpus's.
ACTION_FREE_PHASES = ("motion", "latent")
# Stage-2 choices a run takes from its own config over the stage-1 checkpoint's (config_from_init).
STAGE2_FIELDS = ("fusion", "n_action_steps", "num_inference_steps", "lafp_interp")


@dataclass
class LaMPConfig:
    # --- inputs / outputs (from data) ---
    camera: str = ""  # camera the policy sees; "" = the dataset's primary camera
    image_size: tuple[int, int] = (128, 128)  # H, W (from data)
    action_dim: int = 4  # A (from data)
    state_dim: int = 4  # P (from data; 0 = no proprio)
    chunk_size: int = 10  # C, actions predicted per chunk
    n_action_steps: int = 10  # actions executed from each chunk before re-planning (select_action)
    normalization: str = "quantile"  # mean_std: (x - mean) / std ; quantile: q01/q99 -> [-1, 1]

    # --- width shared by all parts ---
    d_model: int = 128
    n_heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0  # 0 keeps a resumed run bit-identical without extra RNG plumbing

    # --- vision-language encoder ---
    vl_backend: str = "compact"  # compact | hf
    hf_model: str = ""  # transformers model id or local directory (vl_backend=hf)
    hf_freeze: bool = True  # keep the pretrained VLM frozen (as LaMP does)
    image_patch: int = 16  # compact: one token per patch -> (H/p) * (W/p) image tokens
    text_max_len: int = 32  # compact: UTF-8 bytes of the instruction kept
    vl_layers: int = 2  # compact: transformer layers over [image; text] tokens

    # --- motion expert ---
    motion_repr: str = "uvd"  # uvd: (du, dv, d depth) from the anchor; xyz: camera-frame 3D; uv: (du, dv) 2D tracks
    motion_points: int = 100  # K used by the model (subsampled from the data's grid, strided)
    motion_horizon: int = 16  # T used by the model (subsampled from the data's horizon, strided)
    motion_layers: int = 3
    motion_tau: float = 0.1  # partial-denoising target time (t = 0 is noise for this expert)
    motion_time_beta: bool = True  # sample t as 1 - Beta(1.5, 1) (dense near noise) else U(0, 1)

    # --- fusion of motion features into the VL tokens ---
    fusion: str = "gated_sigmoid"  # gated_sigmoid (LaMP) | gated_tanh (Flamingo) | concat | add | none

    # --- variant: the parts beside the two experts (policy/variants.py) ---
    variant: str = "lamp"
    # motion_image (policy/motion_image_head.py): the anchor's optical flow pooled to G x G cells
    motion_image_grid: int = 8  # G; 8 = one cell per image token at 96 px with 12 px patches
    motion_image_layers: int = 2  # the head is lighter than the experts (3 layers): it is only a training signal
    motion_image_weight: float = 1.0  # loss = action + weight * motion image; the paper sums the two
    # action_prior (policy/action_prior.py): history encoder + distillation of the VL latent
    prior_history: int = 8  # H past actions: two anchors back at the curated stride of 4 steps
    prior_layers: int = 2
    prior_distill_weight: float = 1.0
    prior_distill_frac: float = 0.3  # KD in the first 30 % of stage 2 ("early-stage latent distillation")

    # --- action expert ---
    action_layers: int = 3
    num_inference_steps: int = 10  # Euler steps from t = 1 (noise) to t = 0 (actions)

    # --- latent action flow policy (variant lafp, policy/lafp.py) ---
    latent_tokens: int = 4  # L: tokens per latent action (from the latent action model; its presets use 4)
    latent_dim: int = 8  # c: numbers per code vector (from the latent action model; `small` uses 8)
    latent_codebook: tuple = ()  # V x c code vectors of that model (from it: `curate policy train --latent-checkpoint`)
    latent_layers: int = 2  # Latent Expert depth: L = 4 tokens of 8 numbers need less than the C x A chunk's 3
    # Euler steps of the latent policy, also run in every decoder training step (no gradient): with 10
    # that step cost 2.2x the `none` variant's on one core, with 4 1.6x (`curate bench policy`, 96 px).
    latent_inference_steps: int = 4
    lafp_interp: float = 0.5  # decoder training input: sampled latent moved this far towards the demo's (0..1)

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.motion_repr not in MOTION_REPRS:
            raise ValueError(f"motion_repr must be one of {MOTION_REPRS}, got {self.motion_repr!r}")
        if self.normalization not in NORM_MODES:
            raise ValueError(f"normalization must be one of {NORM_MODES}, got {self.normalization!r}")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if not 0 < self.motion_tau < 1:
            raise ValueError("motion_tau must be in (0, 1)")
        if self.motion_image_grid < 1 or self.prior_history < 1:
            raise ValueError("motion_image_grid and prior_history must be >= 1")
        if not 0 <= self.prior_distill_frac <= 1:
            raise ValueError("prior_distill_frac must be in [0, 1]")
        if self.n_action_steps > self.chunk_size:
            raise ValueError("n_action_steps must be <= chunk_size")
        self.latent_codebook = tuple(tuple(float(x) for x in row) for row in self.latent_codebook)
        if any(len(row) != self.latent_dim for row in self.latent_codebook):
            raise ValueError(f"latent_codebook rows must have latent_dim = {self.latent_dim} numbers")
        if not 0.0 <= self.lafp_interp <= 1.0:
            raise ValueError(f"lafp_interp must be in [0, 1], got {self.lafp_interp}")

    @property
    def uses_motion(self) -> bool:
        return self.fusion != "none"

    @property
    def latent_codes(self) -> int:
        """V: codes in the latent action model's codebook."""
        return len(self.latent_codebook)

    @property
    def motion_channels(self) -> int:
        """M: values per point and step of the motion target (3 for uvd / xyz, 2 for uv)."""
        return MOTION_CHANNELS[self.motion_repr]


@dataclass
class TrainConfig:
    phase: str = "motion"  # one of PHASES: motion | action, or a variant's own pretraining phase
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-4  # LaMP stage 2 uses 1e-4 on a pretrained VLM; small models from scratch like more
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    shuffle_buffer: int = 512
    log_every: int = 10
    checkpoint_every: int = 500
    torch_threads: int = 0  # intra-op threads; 0 = torch's default. On a shared/oversubscribed CPU, 1 is often fastest
    train_vl_in_action_phase: bool = True  # LaMP freezes its VLM; our compact encoder is small and learns

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        self.betas = tuple(float(b) for b in self.betas)


def _from_dict(cls, d: dict[str, Any]):
    return strict_from_dict(cls, d, f"{cls.__name__} fields")


def config_to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def policy_config_from_dict(d: dict[str, Any]) -> LaMPConfig:
    return _from_dict(LaMPConfig, dict(d))


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    return _from_dict(TrainConfig, dict(d))


def load_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a YAML or JSON file with optional `policy:` and `train:` sections; returns
    the two override dicts (apply them with dataclasses.replace or the constructors)."""
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with policy:/train: sections")
    unknown = set(data) - {"policy", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (expected policy, train)")
    return dict(data.get("policy") or {}), dict(data.get("train") or {})
