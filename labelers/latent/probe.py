"""What the latent tokens are worth: codebook use, reconstruction, and an action probe.

- codebook usage: share of the V codes that appear at all on the evaluation pairs;
  perplexity: exp(entropy) of the pooled code distribution (V when uniform, 1 when collapsed).
- reconstruction: PSNR (peak 1.0) of the decoded frame t+gap against the true one, next to
  the PSNR of simply copying frame t (the floor every model starts from). Both pooled over
  all pixels, and over "moving" pixels only (|frame t+gap - frame t| > 8/255 in any channel),
  because most pixels of a robot video are static and dominate the pooled figure.
- action probe: ridge regression (strength by episode-grouped CV on the fitting half) or a
  small MLP, from the tokens, one-hot per position
  (L x V features), to the true action, fitted on one half of the evaluation episodes and
  scored (R^2, averaged over action dimensions that vary) on the other half.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labelers.latent.data import FrameStore
from labelers.latent.model import LatentActionModel
from labelers.latent.train import batch_tensors

MOVING_THRESHOLD = 8.0 / 255.0


@torch.no_grad()
def encode_store(model: LatentActionModel, store: FrameStore, gap: int, batch: int = 64, progress: bool = False) -> dict:
    """Tokens and reconstruction errors for every (t, t+gap) pair of the store."""
    model.eval()
    pairs = store.pairs(gap)
    frames = torch.from_numpy(store.frames)
    first = torch.from_numpy(pairs[:, 2])
    tokens, se_rec, se_copy, n_px, se_rec_mov, se_copy_mov, n_mov = [], 0.0, 0.0, 0, 0.0, 0.0, 0
    chunks = range(0, len(first), batch)
    if progress:
        from schemas.progress import progress_bar

        chunks = progress_bar(chunks, desc="latent encode", unit="batch", leave=False)
    for i in chunks:
        x_t, x_tg = batch_tensors(frames, first[i:i + batch], gap)
        out = model(x_t, x_tg)
        tokens.append(out["indices"])
        rec = out["recon"].clamp(0.0, 1.0)
        err_rec, err_copy = (rec - x_tg) ** 2, (x_t - x_tg) ** 2
        moving = ((x_tg - x_t).abs() > MOVING_THRESHOLD).any(1, keepdim=True).expand_as(x_t)
        se_rec += float(err_rec.sum()); se_copy += float(err_copy.sum()); n_px += err_rec.numel()
        se_rec_mov += float(err_rec[moving].sum()); se_copy_mov += float(err_copy[moving].sum()); n_mov += int(moving.sum())
    return {
        "pairs": pairs,
        "tokens": torch.cat(tokens).numpy() if tokens else np.zeros((0, model.config.num_tokens), np.int64),
        "psnr_recon": psnr(se_rec / max(n_px, 1)),
        "psnr_copy": psnr(se_copy / max(n_px, 1)),
        "psnr_recon_moving": psnr(se_rec_mov / n_mov) if n_mov else float("nan"),
        "psnr_copy_moving": psnr(se_copy_mov / n_mov) if n_mov else float("nan"),
        "moving_share": n_mov / max(n_px, 1),
    }


def psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def codebook_stats(tokens: np.ndarray, codebook_size: int) -> dict:
    """Usage share and perplexity of the pooled codes, plus distinct token sequences."""
    if tokens.size == 0:
        return {"usage": float("nan"), "perplexity": float("nan"), "codes_used": 0, "distinct_sequences": 0}
    counts = np.bincount(tokens.reshape(-1), minlength=codebook_size).astype(np.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "usage": float((counts > 0).mean()),
        "codes_used": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
        "distinct_sequences": int(len({tuple(r) for r in tokens.tolist()})),
    }


def action_targets(store: FrameStore, pairs: np.ndarray, gap: int, mode: str = "window") -> np.ndarray:
    """The action a probe should recover for each pair (episode, t):
    "window": mean of actions t .. t+gap-1 (what moved frame t to frame t+gap; step t holds
    the observation before action t); "step": the action at t alone."""
    out = []
    for e, t, _ in pairs:
        a = store.actions[e]
        out.append(a[t:t + gap].mean(0) if mode == "window" else a[t])
    return np.asarray(out, np.float64)


def one_hot(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    M, L = tokens.shape
    x = np.zeros((M, L * codebook_size), np.float64)
    x[np.arange(M)[:, None], np.arange(L)[None, :] * codebook_size + tokens] = 1.0
    return x


def r2_per_dim(y: np.ndarray, pred: np.ndarray, min_var: float = 1e-8) -> np.ndarray:
    """R^2 of each column; NaN for columns that do not vary in y."""
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    ss_res = ((y - pred) ** 2).sum(0)
    r2 = 1.0 - ss_res / np.maximum(ss_tot, 1e-300)
    r2[ss_tot <= min_var * len(y)] = np.nan
    return r2


def fit_predict(x_train, y_train, x_test, kind: str = "linear", seed: int = 0, ridge: float = 1e-2) -> np.ndarray:
    mu, sd = y_train.mean(0), y_train.std(0) + 1e-8
    yz = (y_train - mu) / sd
    if kind == "linear":
        a = np.concatenate([x_train, np.ones((len(x_train), 1))], 1)
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ yz)
        pred = np.concatenate([x_test, np.ones((len(x_test), 1))], 1) @ w
    elif kind == "mlp":
        g = torch.Generator().manual_seed(seed)
        d_in, d_out = x_train.shape[1], y_train.shape[1]
        w1 = torch.nn.Parameter(torch.randn(d_in, 64, generator=g) / math.sqrt(d_in))
        b1 = torch.nn.Parameter(torch.zeros(64))
        w2 = torch.nn.Parameter(torch.randn(64, d_out, generator=g) / 8.0)
        b2 = torch.nn.Parameter(torch.zeros(d_out))
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=1e-2, weight_decay=1e-3)
        xt, yt = torch.tensor(x_train, dtype=torch.float32), torch.tensor(yz, dtype=torch.float32)
        for _ in range(300):
            loss = ((torch.relu(xt @ w1 + b1) @ w2 + b2 - yt) ** 2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            pred = (torch.relu(torch.tensor(x_test, dtype=torch.float32) @ w1 + b1) @ w2 + b2).numpy()
    else:
        raise ValueError(f"unknown probe {kind!r} (linear, mlp)")
    return pred * sd + mu


RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def select_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid=RIDGE_GRID, folds: int = 4) -> float:
    """Ridge strength by episode-grouped cross-validation inside the fitting half (mean R^2
    over varying dims); the scoring half is never looked at."""
    ids = list(dict.fromkeys(groups.tolist()))
    k = min(folds, len(ids))
    if k < 2:
        return 1.0
    fold_of = {e: i % k for i, e in enumerate(ids)}
    f = np.array([fold_of[e] for e in groups.tolist()])
    best, best_score = grid[0], -np.inf
    for alpha in grid:
        scores = []
        for i in range(k):
            tr, te = f != i, f == i
            r2 = r2_per_dim(y[te], fit_predict(x[tr], y[tr], x[te], kind="linear", ridge=alpha))
            if np.isfinite(r2).any():
                scores.append(np.nanmean(r2))
        score = float(np.mean(scores)) if scores else -np.inf
        if score > best_score:
            best, best_score = alpha, score
    return best


def action_probe(tokens: np.ndarray, targets: np.ndarray, episodes: np.ndarray, codebook_size: int,
                 kind: str = "linear", seed: int = 0) -> dict:
    """Fit on the first half of the episodes (by order of appearance), score on the second.
    The linear probe's ridge strength is chosen by grouped CV on the first half."""
    ids = list(dict.fromkeys(episodes.tolist()))
    if len(ids) < 2:
        raise ValueError("the action probe needs at least 2 episodes (one to fit, one to score)")
    fit_eps = set(ids[: len(ids) // 2])
    fit = np.array([e in fit_eps for e in episodes.tolist()])
    x = one_hot(tokens, codebook_size)
    extra = {}
    if kind == "linear":
        alpha = select_ridge(x[fit], targets[fit], episodes[fit])
        pred = fit_predict(x[fit], targets[fit], x[~fit], kind="linear", ridge=alpha)
        extra["ridge"] = alpha
    else:
        pred = fit_predict(x[fit], targets[fit], x[~fit], kind=kind, seed=seed)
    r2 = r2_per_dim(targets[~fit], pred)
    return {
        "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
        "r2_per_dim": [None if not np.isfinite(v) else float(v) for v in r2],
        "fit_pairs": int(fit.sum()),
        "score_pairs": int((~fit).sum()),
        **extra,
    }


def evaluate(model: LatentActionModel, store: FrameStore, gap: int, probes=("linear", "mlp"),
             target: str = "window", seed: int = 0, progress: bool = False) -> dict:
    enc = encode_store(model, store, gap, progress=progress)
    V = model.config.codebook_size
    result = {k: v for k, v in enc.items() if k not in ("pairs", "tokens")}
    result.update(codebook_stats(enc["tokens"], V))
    targets = action_targets(store, enc["pairs"], gap, target)
    for kind in probes:
        result[f"probe_{kind}"] = action_probe(enc["tokens"], targets, enc["pairs"][:, 0], V, kind=kind, seed=seed)
    result["pairs"] = int(len(enc["pairs"]))
    result["episodes"] = store.num_episodes
    return result
