"""What `curate latent ...` and `curate bench latent` share: episodes read into a FrameStore, a
model loaded from a checkpoint, the thread limit, and the row of the scores table."""

from __future__ import annotations

import sys


def episode_range(text: str | None) -> tuple[int | None, int | None]:
    """'A:B', 'A:', ':B' or None -> (start, stop)."""
    if not text:
        return None, None
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--episodes must look like A:B, A: or :B, got {text!r}")
    try:
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"--episodes must look like A:B with integers, got {text!r}") from None
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"--episodes {text!r} is empty")
    return start, stop


def load_store(source: str, split: str, episodes: str | None, size: int, camera: str | None, what: str):
    """Read episodes through the project reader into a FrameStore; bad episodes are skipped
    with a warning naming them. Raises ValueError when nothing usable is left."""
    from schemas.progress import progress_bar

    from curation.sources.rlds import read_episodes
    from labelers.latent.data import store_from_episodes
    from schemas.episode import EpisodeError

    start, stop = episode_range(episodes)
    good, bad = [], []
    for item in progress_bar(read_episodes(source, split, start, stop, on_error="yield"), desc=f"read {what}", unit="ep", leave=False):
        if isinstance(item, EpisodeError):
            bad.append(str(item))
            print(f"warning: skipping episode: {item}", file=sys.stderr)
        else:
            good.append(item)
    try:
        store = store_from_episodes(good, size, camera)
    except EpisodeError as e:
        raise ValueError(str(e)) from e
    if store.num_episodes == 0:
        raise ValueError(f"{source} split={split} episodes={episodes or 'all'}: no usable episodes ({len(bad)} bad)")
    return store, good, bad


def load_model(checkpoint: str):
    from labelers.latent.checkpoint import load_weights
    from labelers.latent.model import LatentActionModel

    config, state, extra = load_weights(checkpoint)
    model = LatentActionModel(config)
    model.load_state_dict(state)
    return model.eval(), extra


def set_threads(n: int) -> None:
    from labelers.threads import limit_threads

    limit_threads(n)


def score_row(dataset: str, model: str, r: dict) -> dict:
    """One row of the latent scores table (curate latent eval, curate bench latent)."""
    return {
        "data": dataset, "model": model, "pairs": r["pairs"],
        "usage": r["usage"], "perplexity": r["perplexity"],
        "psnr_recon": r["psnr_recon"], "psnr_copy": r["psnr_copy"],
        "psnr_moving_recon": r["psnr_recon_moving"], "psnr_moving_copy": r["psnr_copy_moving"],
        "probe_r2_linear": r["probe_linear"]["r2"], "probe_r2_mlp": r["probe_mlp"]["r2"],
        "r2_linear_per_dim": _dims(r["probe_linear"]["r2_per_dim"]),
        "r2_mlp_per_dim": _dims(r["probe_mlp"]["r2_per_dim"]),
    }


def _dims(values: list) -> str:
    """Per-dimension R^2 as one table cell, '-' for a dimension that does not vary."""
    return " ".join("-" if v is None else f"{v:.2f}" for v in values)
