"""Check a curated dataset against the data contract (schemas/), listing EVERY violation.

    validate_dataset(path) -> list[Violation]

What is checked:
- files: dataset.json (contract version), manifest.parquet (MANIFEST_SCHEMA, non-null
  columns, unique episode ids derived from provenance), quarantine.parquet /
  filtered.parquet schemas, no leftover temporary shards, no shard missing its commit
  record, no committed shard with episodes that the manifest does not list;
- arrays of every shard: known names only, every required array present, dtypes and
  ranks per SHARD_ARRAYS, symbolic shapes consistent (F, N, K, T, A, P, L; H and W per
  camera) and equal to the manifest's (height, width, camera_sizes, action_dim,
  proprio_dim, cameras);
- encodings (contract 3.x): each array's codecs and its `encoding` / `max_abs_error` attributes as
  its ArraySpec says (curation/store/encodings.py), fixed-point values on their grid; (3.1 on)
  crc32c the last of every array's inner codecs and of its shard index's (curation/store/chunks.py);
- offsets: frame/anchor ranges inside the arrays, not overlapping;
- content: per-episode checksums recomputed; NaN only where the spec allows it;
  masks consistent (visible => in range; out-of-range track steps are NaN, never
  faked; valid_3d => finite points and depth, visible, in range; latent tokens are
  the pad value exactly where latent_valid is False); depth >= 0; anchors inside
  the episode and increasing.

The per-episode part (`check_episode_arrays`) is also run by the job on every
episode before it is written, so a labeler bug is quarantined, not published.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from schemas.dataset import (
    DATASET_JSON, FILTERED, MANIFEST, MANIFEST_SCHEMA, QUARANTINE, QUARANTINE_SCHEMA,
    SHARD_ARRAYS, SHARDS_DIR, ArraySpec, chunk_checksum_contract, contract_problem, encoded_contract, spec_for,
)
from schemas.triplet import LATENT_PAD_TOKEN

REQUIRED = [s.name for s in SHARD_ARRAYS if not s.optional]


@dataclass(frozen=True)
class Violation:
    kind: str  # missing_file, schema, missing_array, unknown_array, dtype, shape, offsets, checksum, nan, mask, range, ...
    where: str  # file / shard / array / episode
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.message}"


# ---------------------------------------------------------------------------------------
# Per-episode checks (arrays of ONE episode: frame arrays F x ..., anchor arrays N x ...)
# ---------------------------------------------------------------------------------------

def _symbol_key(sym: str, spec: ArraySpec, name: str) -> str:
    """The key a shape symbol is bound under: image symbols per camera (frames/{camera} and
    depth_m/{camera} of one camera agree; cameras may differ), motion images on their own."""
    if sym in ("H", "W"):
        if "{camera}" in spec.name:
            return f"{sym}@{name.split('/', 1)[1]}"
        if spec.name == "motion_image":
            return "m" + sym
    return sym


def _check_shapes(arrays: dict[str, np.ndarray], out: list[tuple[str, str, str]]) -> dict[str, int]:
    """dtype/rank per spec and consistency of the shape symbols; returns the bound symbols."""
    dims: dict[str, int] = {}
    for name in sorted(arrays):
        a = arrays[name]
        spec = spec_for(name)
        if spec is None:
            out.append(("unknown_array", name, "array not in the contract (SHARD_ARRAYS)"))
            continue
        if a.dtype != np.dtype(spec.dtype):
            out.append(("dtype", name, f"dtype {a.dtype}, contract says {spec.dtype}"))
        if a.ndim != len(spec.shape):
            out.append(("shape", name, f"rank {a.ndim} (shape {a.shape}), contract says {spec.shape}"))
            continue
        for sym, size in zip(spec.shape, a.shape):
            if sym.isdigit():
                if int(sym) != size:
                    out.append(("shape", name, f"axis {sym!r} has size {size} (shape {a.shape})"))
                continue
            key = _symbol_key(sym, spec, name)
            if key in dims and dims[key] != size:
                others = f"other {key.split('@')[1]} arrays" if "@" in key else "other arrays"
                out.append(("shape", name, f"axis {sym} = {size} but {others} have {dims[key]} (shape {a.shape})"))
            else:
                dims.setdefault(key, size)
    for req in REQUIRED:
        if "{camera}" in req:
            if not any(n.startswith("frames/") for n in arrays):
                out.append(("missing_array", "frames/*", "no camera frames"))
        elif req not in arrays:
            out.append(("missing_array", req, "required array missing"))
    return dims


def _check_content(arrays: dict[str, np.ndarray], dims: dict[str, int], out: list[tuple[str, str, str]]) -> None:
    for name, a in arrays.items():
        spec = spec_for(name)
        if spec is None:
            continue
        if np.issubdtype(a.dtype, np.floating):
            if not spec.nan_ok and not np.isfinite(a).all():
                out.append(("nan", name, f"{int((~np.isfinite(a)).sum())} non-finite values where the contract allows none"))
            elif spec.nan_ok and np.isinf(a).any():
                out.append(("nan", name, f"{int(np.isinf(a).sum())} infinite values (NaN marks unknown; inf is never valid)"))
        if spec.units == "metres" and name.startswith("depth") and np.issubdtype(a.dtype, np.floating):
            with np.errstate(invalid="ignore"):
                if (a < 0).any():
                    out.append(("range", name, f"{int((a < 0).sum())} negative depths (metres)"))
    steps = arrays.get("anchor_step")
    F = dims.get("F")
    if steps is not None and steps.ndim == 1 and F is not None and steps.size:
        if steps.min() < 0 or steps.max() >= F:
            out.append(("range", "anchor_step", f"anchor steps {steps.min()}..{steps.max()} outside the episode's {F} frames"))
        if (np.diff(steps) <= 0).any():
            out.append(("range", "anchor_step", "anchor steps not strictly increasing"))
    vis, inr, tr = arrays.get("visible"), arrays.get("in_range"), arrays.get("tracks_px")
    ok_shapes = vis is not None and inr is not None and vis.ndim == 3 and inr.ndim == 2 and vis.shape[::2] == inr.shape
    if ok_shapes:
        inr_k = np.broadcast_to(inr[:, None, :], vis.shape)
        if (vis & ~inr_k).any():
            out.append(("mask", "visible", f"{int((vis & ~inr_k).sum())} points visible at out-of-range steps"))
        if steps is not None and F is not None and steps.ndim == 1 and steps.shape[0] == inr.shape[0]:
            expect = (steps[:, None] + np.arange(inr.shape[1])[None, :]) < F
            if (expect != inr).any():
                out.append(("mask", "in_range", f"{int((expect != inr).sum())} steps where in_range disagrees with anchor + j < frames"))
        if tr is not None and tr.shape[:3] == vis.shape:
            faked = np.isfinite(tr).any(-1) & ~inr_k
            if faked.any():
                out.append(("mask", "tracks_px", f"{int(faked.sum())} finite track positions at out-of-range steps (must be NaN)"))
            lost = ~np.isfinite(tr).all(-1) & vis
            if lost.any():
                out.append(("mask", "tracks_px", f"{int(lost.sum())} visible points with NaN position"))
        v3 = arrays.get("valid_3d")
        if v3 is not None and v3.shape == vis.shape:
            if (v3 & ~(vis & inr_k)).any():
                out.append(("mask", "valid_3d", f"{int((v3 & ~(vis & inr_k)).sum())} valid_3d steps not visible or not in range"))
            pts = arrays.get("points_cam_m")
            if pts is not None and pts.shape[:3] == v3.shape:
                bad = v3 & ~np.isfinite(pts).all(-1)
                if bad.any():
                    out.append(("mask", "points_cam_m", f"{int(bad.sum())} valid_3d points that are not finite"))
            dep = arrays.get("depth_track_m")
            if dep is not None and dep.shape == v3.shape:
                bad = v3 & ~np.isfinite(dep)
                if bad.any():
                    out.append(("mask", "depth_track_m", f"{int(bad.sum())} valid_3d steps without a finite depth"))
    tok, lv = arrays.get("latent_tokens"), arrays.get("latent_valid")
    if tok is not None and lv is not None and tok.ndim == 2 and lv.shape == tok.shape[:1]:
        pad = (tok == LATENT_PAD_TOKEN)
        if (pad.any(1) & lv).any() or (~pad.all(1) & ~lv).any():
            out.append(("mask", "latent_tokens", "pad tokens do not match latent_valid (pad exactly where invalid)"))


def check_episode_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """Contract problems of one episode's arrays, as messages ([] = fine)."""
    out: list[tuple[str, str, str]] = []
    dims = _check_shapes(arrays, out)
    _check_content(arrays, dims, out)
    return [f"[{k}] {w}: {m}" for k, w, m in out]


# ---------------------------------------------------------------------------------------
# Whole dataset
# ---------------------------------------------------------------------------------------

def _check_table(path: Path, schema, label: str, out: list[Violation]):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001
        out.append(Violation("unreadable", label, f"cannot read {path.name}: {exc}"))
        return None
    got = {f.name: f.type for f in table.schema}
    for f in schema:
        if f.name not in got:
            out.append(Violation("schema", label, f"column {f.name!r} missing"))
        elif got[f.name] != f.type:
            out.append(Violation("schema", label, f"column {f.name!r} has type {got[f.name]}, contract says {f.type}"))
        elif not f.nullable and table.column(f.name).null_count:
            out.append(Violation("schema", label, f"column {f.name!r} has {table.column(f.name).null_count} nulls"))
    extra = set(got) - {f.name for f in schema}
    if extra:
        out.append(Violation("schema", label, f"columns not in the contract: {sorted(extra)}"))
    return table


def validate_dataset(path: str | Path, checksums: bool = True, progress: bool = False) -> list[Violation]:
    """Every violation of the contract in the dataset at `path` ([] = valid)."""
    import zarr

    from curation.store.writer import COMMIT_RECORD, TMP_PREFIX, episode_checksum, read_commit
    from schemas.episode import Provenance

    root = Path(path)
    out: list[Violation] = []
    if not root.is_dir():
        return [Violation("missing_file", str(root), "dataset directory does not exist")]
    info_path = root / DATASET_JSON
    version = None  # the dataset's contract version (dataset.json)
    if not info_path.is_file():
        out.append(Violation("missing_file", DATASET_JSON, "dataset.json missing"))
    else:
        try:
            info = json.loads(info_path.read_text())
            version = info.get("contract_version")
            problem = contract_problem(version)
            if problem:
                out.append(Violation("schema", DATASET_JSON, problem))
        except ValueError as exc:
            out.append(Violation("unreadable", DATASET_JSON, str(exc)))
    for name, schema in ((QUARANTINE, QUARANTINE_SCHEMA),):
        if (root / name).is_file():
            _check_table(root / name, schema, name, out)
    if not (root / MANIFEST).is_file():
        out.append(Violation("missing_file", MANIFEST, "manifest.parquet missing (job not finalized?)"))
        return out
    manifest = _check_table(root / MANIFEST, MANIFEST_SCHEMA, MANIFEST, out)
    if manifest is None:
        return out
    rows = manifest.to_pylist()
    ids = [r.get("episode_id") for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        out.append(Violation("duplicate_episode", MANIFEST, f"episode ids listed more than once: {dup[:5]}"))
    for r in rows:
        try:
            expect = Provenance(r["dataset"], r["version"], r["split"], int(r["episode_index"])).episode_id
            if expect != r["episode_id"]:
                out.append(Violation("schema", f"episode {r['episode_id']}", f"id does not match its provenance (expected {expect})"))
        except (KeyError, TypeError, ValueError):
            pass  # schema violations are already reported
    shards_dir = root / SHARDS_DIR
    on_disk = sorted(d.name for d in shards_dir.iterdir()) if shards_dir.is_dir() else []
    for name in on_disk:
        if name.startswith(TMP_PREFIX):
            out.append(Violation("stale_tmp", f"{SHARDS_DIR}/{name}", "temporary shard left behind (unfinished write)"))
        elif read_commit(shards_dir / name) is None:
            out.append(Violation("uncommitted", f"{SHARDS_DIR}/{name}", f"shard without a readable {COMMIT_RECORD}"))
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r.get("shard"), []).append(r)
    for name in on_disk:
        rec = read_commit(shards_dir / name)
        if rec and rec.get("episodes") and name not in by_shard and not name.startswith(TMP_PREFIX):
            listed = [e["episode_id"] for e in rec["episodes"] if e.get("shard", name) == name]
            if listed:
                out.append(Violation("orphan_shard", f"{SHARDS_DIR}/{name}", f"{len(listed)} committed episodes not in the manifest"))
    shard_iter: Iterable = sorted(by_shard.items(), key=lambda kv: str(kv[0]))
    if progress:
        from schemas.progress import progress_bar

        shard_iter = progress_bar(list(shard_iter), desc="validate", unit="shard")
    for shard, srows in shard_iter:
        _validate_shard(root, str(shard), srows, checksums, out, zarr, episode_checksum, chunk_checksum_contract(version))
    return out


def _off_grid(name: str, a: np.ndarray, spec: ArraySpec) -> str:
    """A fixed-point array's decoded values must sit on its grid of 1/scale steps."""
    if spec.encoding != "fixed_point" or not a.size:
        return ""
    from curation.store.encodings import bound_slack

    with np.errstate(invalid="ignore"):
        steps = a.astype(np.float64) * spec.scale
        off = np.abs(steps - np.rint(steps))
        bad = int((off > 1e-3 + bound_slack(a) * spec.scale).sum())  # float32's rounding of q / scale
    return f"{bad} values off the 1/{spec.scale:g} grid of its fixed-point encoding" if bad else ""


def _check_encodings(group, names: list[str], data: dict, where: str, out: list[Violation], chunk_crc: bool) -> None:
    """Each array's codecs and attributes as its spec says; with `chunk_crc` (3.1 on) crc32c last."""
    from curation.store.chunks import chunk_checksum_problems
    from curation.store.encodings import encoding_problems

    for name in names:
        spec = spec_for(name)
        if spec is None or name not in data:
            continue
        for msg in encoding_problems(name, group[name], spec) + (chunk_checksum_problems(group[name]) if chunk_crc else []):
            out.append(Violation("encoding", f"{where}/{name}", msg))
        msg = _off_grid(name, data[name], spec)
        if msg:
            out.append(Violation("encoding", f"{where}/{name}", msg))


def _validate_shard(root: Path, shard: str, rows: list[dict], checksums: bool, out: list[Violation], zarr, episode_checksum,
                    chunk_crc: bool = False) -> None:
    """Every check of one shard; `chunk_crc`: the dataset's contract has chunk checksums (3.1 on)."""
    where = f"{SHARDS_DIR}/{shard}"
    sdir = root / SHARDS_DIR / shard
    if not (sdir / "zarr.json").is_file():
        out.append(Violation("missing_file", where, "shard group missing"))
        return
    try:
        group = zarr.open_group(str(sdir), mode="r")
    except Exception as exc:  # noqa: BLE001
        out.append(Violation("unreadable", where, f"cannot open Zarr group: {exc}"))
        return
    from curation.store.reader import array_names

    names = array_names(group)
    data: dict[str, np.ndarray] = {}
    for name in names:
        try:
            data[name] = group[name][...]  # bulk read: one shard file per array
        except Exception as exc:  # noqa: BLE001
            out.append(Violation("unreadable", f"{where}/{name}", f"cannot read array: {exc}"))
    if encoded_contract(version := group.attrs.get("contract_version")):
        _check_encodings(group, names, data, where, out, chunk_crc or chunk_checksum_contract(version))
    # Whole-shard checks: axis-0 sizes agree per kind.
    problems: list[tuple[str, str, str]] = []
    _check_shapes({n: a[:0] if a.ndim else a for n, a in data.items()}, problems)
    for kind, w, m in problems:
        out.append(Violation(kind, f"{where}/{w}", m))
    F = {n: a.shape[0] for n, a in data.items() if spec_for(n) and spec_for(n).per == "frame" and a.ndim}
    N = {n: a.shape[0] for n, a in data.items() if spec_for(n) and spec_for(n).per == "anchor" and a.ndim}
    for label, sizes in (("frame", F), ("anchor", N)):
        if len(set(sizes.values())) > 1:
            out.append(Violation("shape", where, f"{label} arrays disagree on length: {sizes}"))
    nF = max(F.values(), default=0)
    nN = max(N.values(), default=0)
    spans = {"frame": [], "anchor": []}
    for r in rows:
        eid = r.get("episode_id")
        ew = f"{where} episode {eid}"
        fs, fc, as_, ac = (int(r.get(k) or 0) for k in ("frame_start", "frame_count", "anchor_start", "anchor_count"))
        if fs < 0 or fc < 1 or fs + fc > nF:
            out.append(Violation("offsets", ew, f"frames [{fs}, {fs + fc}) outside the shard's {nF} frames"))
            continue
        if as_ < 0 or ac < 0 or as_ + ac > nN:
            out.append(Violation("offsets", ew, f"anchors [{as_}, {as_ + ac}) outside the shard's {nN} anchors"))
            continue
        spans["frame"].append((fs, fs + fc, eid))
        spans["anchor"].append((as_, as_ + ac, eid))
        sl = {}
        for n, a in data.items():
            spec = spec_for(n)
            if spec is None or not a.ndim:
                continue
            sl[n] = a[fs:fs + fc] if spec.per == "frame" else a[as_:as_ + ac]
        for kind, w, m in [tuple(p) for p in _episode_problems(sl)]:
            out.append(Violation(kind, f"{ew} {w}", m))
        cams = sorted(n.split("/", 1)[1] for n in sl if n.startswith("frames/"))
        if sorted(r.get("cameras") or []) != cams:
            out.append(Violation("schema", ew, f"manifest cameras {r.get('cameras')} but shard has {cams}"))
        if r.get("primary_camera") not in cams:
            out.append(Violation("schema", ew, f"primary camera {r.get('primary_camera')!r} not stored"))
        else:
            h, w = sl[f"frames/{r['primary_camera']}"].shape[1:3]
            if (h, w) != (r.get("height"), r.get("width")):
                out.append(Violation("shape", ew, f"manifest says {r.get('height')}x{r.get('width')}, frames are {h}x{w}"))
        _check_camera_sizes(r, sl, ew, out)
        if "actions" in sl and sl["actions"].ndim == 2 and sl["actions"].shape[1] != r.get("action_dim"):
            out.append(Violation("shape", ew, f"manifest action_dim {r.get('action_dim')}, actions have {sl['actions'].shape[1]}"))
        if ("proprio" in sl) != (r.get("proprio_dim") is not None):
            out.append(Violation("schema", ew, "proprio_dim and the proprio array disagree on presence"))
        elif "proprio" in sl and sl["proprio"].ndim == 2 and sl["proprio"].shape[1] != r.get("proprio_dim"):
            out.append(Violation("shape", ew, f"manifest proprio_dim {r.get('proprio_dim')}, proprio has {sl['proprio'].shape[1]}"))
        if checksums and episode_checksum(sl) != r.get("checksum"):
            out.append(Violation("checksum", ew, "content checksum does not match the manifest"))
    for label, sp in spans.items():
        sp.sort()
        for (a0, a1, e0), (b0, b1, e1) in zip(sp, sp[1:]):
            if b0 < a1:
                out.append(Violation("offsets", where, f"{label} ranges of episodes {e0} and {e1} overlap"))


def _check_camera_sizes(r: dict, sl: dict[str, np.ndarray], ew: str, out: list[Violation]) -> None:
    """The manifest's camera_sizes: one [H, W] per listed camera, equal to its stored frames."""
    cams, sizes = r.get("cameras") or [], r.get("camera_sizes")
    if sizes is None or len(sizes) != len(cams):
        out.append(Violation("schema", ew, f"camera_sizes {sizes} does not give one [H, W] per camera of {cams}"))
        return
    for cam, size in zip(cams, sizes):
        frames = sl.get(f"frames/{cam}")
        if frames is not None and frames.ndim == 4 and list(frames.shape[1:3]) != list(size):
            out.append(Violation("shape", ew, f"manifest camera_sizes says {cam} is {size[0]}x{size[1]}, "
                                              f"frames are {frames.shape[1]}x{frames.shape[2]}"))


def _episode_problems(arrays: dict[str, np.ndarray]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    dims = _check_shapes(arrays, [])  # shapes were reported shard-wide; bind the symbols only
    _check_content(arrays, dims, out)
    return out
