"""What the latent tokens are worth: codebook use, reconstruction, and an action probe.

- codebook usage: share of the V codes that appear at all on the evaluation pairs;
  perplexity: exp(entropy) of the pooled code distribution (V when uniform, 1 when collapsed).
- reconstruction: PSNR (peak 1.0) of the decoded frame t+gap against the true one, next to
  the PSNR of simply copying frame t (the floor every model starts from). Both pooled over
  all pixels, and over "moving" pixels only (|frame t+gap - frame t| > 8/255 in any channel),
  because most pixels of a robot video are static and dominate the pooled figure.
- action probe: ridge regression (strength by episode-grouped CV on the fitting half) or a
  small MLP, from what the tokens say (`PROBE_FEATURES`: the token ids one-hot per position,
  L x V features; the quantised code vectors of the L tokens concatenated, L x c; or both) to
  the true action, fitted on one half of the evaluation episodes and scored (R^2, averaged over
  action dimensions that vary) on the other half. `cv_r2` is the same probe scored by
  episode-grouped cross-validation INSIDE the fitting half: the figure to choose settings by,
  so that the scoring half stays unseen by every choice.

The probe target is the mean action over the gap; the summed action is the same target up to
a factor `gap`, and R^2 does not change under scaling, so the two score the same.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labelers.latent.config import PROBE_FEATURES
from labelers.latent.data import FrameStore
from labelers.latent.model import MOVING_THRESHOLD, LatentActionModel
from labelers.latent.train import batch_tensors

# What a probe reads: "onehot" token ids (L x V), "codes" the quantised code vectors (L x c),
# "onehot+codes" both side by side.
CV_FOLDS = 3  # episode-grouped folds of the fitting half for cv_r2 (6-8 fitting episodes per task)


@torch.no_grad()
def encode_store(model: LatentActionModel, store: FrameStore, gap: int, batch: int = 64, progress: bool = False) -> dict:
    """Tokens and reconstruction errors for every (t, t+gap) pair of the store."""
    model.eval()
    pairs = store.pairs(gap)
    frames = torch.from_numpy(store.frames)
    first = torch.from_numpy(pairs[:, 2])
    tokens, codes, se_rec, se_copy, n_px, se_rec_mov, se_copy_mov, n_mov = [], [], 0.0, 0.0, 0, 0.0, 0.0, 0
    chunks = range(0, len(first), batch)
    if progress:
        from schemas.progress import progress_bar

        chunks = progress_bar(chunks, desc="latent encode", unit="batch", leave=False)
    for i in chunks:
        x_t, x_tg = batch_tensors(frames, first[i:i + batch], gap)
        out = model(x_t, x_tg)
        tokens.append(out["indices"])
        codes.append(model.vq.codebook[out["indices"]].flatten(1))  # B (L c): the hard codes the decoder saw
        rec = out["recon"].clamp(0.0, 1.0)
        err_rec, err_copy = (rec - x_tg) ** 2, (x_t - x_tg) ** 2
        moving = ((x_tg - x_t).abs() > MOVING_THRESHOLD).any(1, keepdim=True).expand_as(x_t)
        se_rec += float(err_rec.sum()); se_copy += float(err_copy.sum()); n_px += err_rec.numel()
        se_rec_mov += float(err_rec[moving].sum()); se_copy_mov += float(err_copy[moving].sum()); n_mov += int(moving.sum())
    return {
        "pairs": pairs,
        "tokens": torch.cat(tokens).numpy() if tokens else np.zeros((0, model.config.num_tokens), np.int64),
        "codes": torch.cat(codes).numpy().astype(np.float64) if codes else np.zeros((0, model.config.num_tokens * model.config.code_dim)),
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


def probe_features(tokens: np.ndarray, codes: np.ndarray | None, codebook_size: int, features: str = "onehot") -> np.ndarray:
    """M x K probe inputs from tokens M L (ids) and codes M (L c) (their code vectors)."""
    if features not in PROBE_FEATURES:
        raise ValueError(f"unknown probe features {features!r} ({', '.join(PROBE_FEATURES)})")
    parts = []
    if "onehot" in features:
        parts.append(one_hot(tokens, codebook_size))
    if "codes" in features:
        if codes is None:
            raise ValueError(f"probe features {features!r} need the code vectors")
        parts.append(np.asarray(codes, np.float64))
    return np.concatenate(parts, 1)


def _fit_score(x, y, groups, fit, kind: str, seed: int) -> tuple[np.ndarray, dict]:
    """Fit on rows `fit`, predict the rest; the linear probe picks its ridge by grouped CV on the fit rows."""
    if kind == "linear":
        alpha = select_ridge(x[fit], y[fit], groups[fit])
        return fit_predict(x[fit], y[fit], x[~fit], kind="linear", ridge=alpha), {"ridge": alpha}
    return fit_predict(x[fit], y[fit], x[~fit], kind=kind, seed=seed), {}


def grouped_cv_r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, seed: int = 0, folds: int = CV_FOLDS) -> float:
    """Mean R^2 of the probe over episode-grouped folds of (x, y): the selection figure."""
    ids = list(dict.fromkeys(groups.tolist()))
    k = min(folds, len(ids))
    if k < 2:
        return float("nan")
    fold = np.array([ids.index(e) % k for e in groups.tolist()])
    scores = []
    for i in range(k):
        pred, _ = _fit_score(x, y, groups, fold != i, kind, seed)
        r2 = r2_per_dim(y[fold == i], pred)
        if np.isfinite(r2).any():
            scores.append(float(np.nanmean(r2)))
    return float(np.mean(scores)) if scores else float("nan")


def action_probe(x: np.ndarray, targets: np.ndarray, episodes: np.ndarray, kind: str = "linear", seed: int = 0,
                 cv: bool = True) -> dict:
    """Probe features x (M K, see probe_features) -> targets (M A). Fit on the first half of
    the episodes (by order of appearance), score on the second; cv_r2 is grouped CV inside the
    first half only."""
    ids = list(dict.fromkeys(episodes.tolist()))
    if len(ids) < 2:
        raise ValueError("the action probe needs at least 2 episodes (one to fit, one to score)")
    fit_eps = set(ids[: len(ids) // 2])
    fit = np.array([e in fit_eps for e in episodes.tolist()])
    pred, extra = _fit_score(x, targets, episodes, fit, kind, seed)
    r2 = r2_per_dim(targets[~fit], pred)
    if cv:
        extra["cv_r2"] = grouped_cv_r2(x[fit], targets[fit], episodes[fit], kind, seed)
    return {
        "r2": float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan"),
        "r2_per_dim": [None if not np.isfinite(v) else float(v) for v in r2],
        "fit_pairs": int(fit.sum()),
        "score_pairs": int((~fit).sum()),
        **extra,
    }


def evaluate(model: LatentActionModel, store: FrameStore, gap: int, probes=("linear", "mlp"),
             target: str = "window", seed: int = 0, progress: bool = False, features: str = "onehot") -> dict:
    enc = encode_store(model, store, gap, progress=progress)
    V = model.config.codebook_size
    result = {k: v for k, v in enc.items() if k not in ("pairs", "tokens", "codes")}
    result.update(codebook_stats(enc["tokens"], V))
    targets = action_targets(store, enc["pairs"], gap, target)
    x = probe_features(enc["tokens"], enc["codes"], V, features)
    for kind in probes:
        result[f"probe_{kind}"] = action_probe(x, targets, enc["pairs"][:, 0], kind=kind, seed=seed)
    result["probe_features"] = features
    result["pairs"] = int(len(enc["pairs"]))
    result["episodes"] = store.num_episodes
    return result
