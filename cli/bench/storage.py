"""`curate bench storage`: what a curated dataset costs on disk against its source.

For each source (default: the shared Bridge episodes, JPEG cameras; and a simulated Meta-World
dataset at 256 px with depth, PNG camera, made once under the work dir) the curation job runs with
the default labels (local runner, card off); then, per array of the dataset:
- bytes on disk (its shard files and zarr.json over all shards), per frame or per anchor, the
  decoded bytes and the ratio, its encoding, codecs and which Zarr v3 readers can open it;
- encode and decode throughput (MB of decoded values per second): the array of each shard read
  back with zarr, and written again by the shard writer's own code into a scratch group;
- for every lossy array the largest error of what a reader decodes against the labeler's output
  (the episodes labelled again in this process, with the job's per-episode seeds) and its bound;
  for frames, the PSNR against TFDS's decode of the source (inf: identical).
Totals: the dataset's bytes (every file but the job state in .job/) against the source's
tfrecord files of the split read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cli.output import add_report_args, emit, format_table, write_bench_json

SIM_TASKS = ["pick-place-v3", "drawer-open-v3"]
# Which Zarr v3 readers open an array, by its encoding: the plain arrays use only codecs of the v3
# spec (sharding_indexed, bytes, blosc, crc32c); the two of ours need this package's codecs.
READERS = {"plain": "zarr-python, tensorstore, any v3 reader",
           "fixed_point": "zarr-python with triplet-curator (curator.fixed_point)",
           "image": "zarr-python with triplet-curator (curator.image)"}
JOB_SETS = ["curation.card=false"]


def add_bench(bench_sub) -> None:
    p = bench_sub.add_parser("storage", help="bytes per array, frame and anchor against the source; codec speed and error")
    p.add_argument("--source", action="append", default=None,
                   help="RLDS dataset directory (repeatable; default: the shared Bridge episodes and a 256 px simulated one)")
    p.add_argument("--sim-size", type=int, default=256, help="image size of the default simulated dataset (default 256)")
    p.add_argument("--sim-steps", type=int, default=50, help="steps per simulated episode (default 50)")
    p.add_argument("--workdir", default=None, help="where datasets go (default a temp dir, removed after)")
    add_report_args(p, bench="storage")
    p.set_defaults(func=cmd_bench_storage)


def cmd_bench_storage(args) -> int:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        sources = args.source or [str(_default_bridge()), str(_sim_source(work, args.sim_size, args.sim_steps))]
        results = [bench_source(Path(s), work / f"ds-{i}") for i, s in enumerate(sources)]
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result = {"sources": results}
    path = write_bench_json("storage", result, args.out_json)
    emit(result, args.json, _text(results) + f"\nwrote {path}")
    return 0


def _default_bridge() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"


def _sim_source(work: Path, size: int, steps: int) -> Path:
    from curation.sources.metaworld.rollout import simulate_dataset

    return Path(simulate_dataset(work / f"sim-{size}", tasks=SIM_TASKS, episodes_per_task=1, size=size,
                                 max_steps=steps, seed=0, progress=False))


def bench_source(src: Path, out: Path) -> dict:
    """Curate `src` into `out` and measure it (module docstring)."""
    from curation.sources.rlds import RLDSSource
    from pipelines.config import JobConfig
    from pipelines.job import run_job

    cfg = JobConfig.load(None, JOB_SETS, **{"source.path": str(src), "engine.runner": "local", "engine.workers": 1})
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_job(cfg, out, progress=False)
    job_s = time.perf_counter() - t0
    source = RLDSSource(str(src), split=cfg.source.split)
    source_bytes = sum(Path(f.path).stat().st_size for f in source.files)
    dataset_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and ".job" not in p.relative_to(out).parts)
    arrays = _array_sizes(out)
    _add_speeds(out, arrays)
    _add_errors(cfg, source, out, arrays)
    return {"source": str(src), "dataset": str(out), "source_bytes": source_bytes, "dataset_bytes": dataset_bytes,
            "dataset_over_source": dataset_bytes / source_bytes, "frames": summary["counts"].get("frames_written"),
            "episodes": summary["counts"].get("written"), "job_seconds": job_s, "arrays": arrays}


def _array_sizes(out: Path) -> dict[str, dict]:
    """{array: bytes on disk, decoded bytes, axis-0 length, encoding, codecs} summed over shards."""
    import zarr

    from curation.store.reader import array_names
    from curation.store.encodings import inner_codecs
    from schemas.dataset import spec_for

    sizes: dict[str, dict] = {}
    for shard in sorted((out / "shards").iterdir()):
        group = zarr.open_group(str(shard), mode="r")
        for name in array_names(group):
            arr, spec = group[name], spec_for(name)
            e = sizes.setdefault(name, {"bytes": 0, "decoded_bytes": 0, "length": 0, "per": spec.per,
                                        "encoding": spec.encoding, "max_abs_error_bound": spec.max_abs_error,
                                        "readers": READERS[spec.encoding],
                                        "codecs": [c.to_dict()["name"] for c in inner_codecs(arr)]})
            e["bytes"] += sum(p.stat().st_size for p in (shard / name).rglob("*") if p.is_file())
            e["decoded_bytes"] += int(np.prod(arr.shape)) * arr.dtype.itemsize
            e["length"] += arr.shape[0]
    total = sum(e["bytes"] for e in sizes.values())
    for e in sizes.values():
        e["share"] = e["bytes"] / total
        e["bytes_per_item"] = e["bytes"] / max(e["length"], 1)
        e["decoded_over_bytes"] = e["decoded_bytes"] / max(e["bytes"], 1)
    return sizes


def _add_speeds(out: Path, arrays: dict[str, dict]) -> None:
    """Decode (zarr read) and encode (the writer's own write of the same values) MB/s per array."""
    import zarr

    from curation.store.writer import EncodedFrames, _write_array_fast

    enc_s = {n: 0.0 for n in arrays}
    dec_s = {n: 0.0 for n in arrays}
    for shard in sorted((out / "shards").iterdir()):
        group = zarr.open_group(str(shard), mode="r")
        with tempfile.TemporaryDirectory() as d:
            for name in arrays:
                if name not in group:
                    continue
                t = time.perf_counter()
                data = group[name][...]
                dec_s[name] += time.perf_counter() - t
                source = _stored_images(shard / name) if arrays[name]["encoding"] == "image" else None
                t = time.perf_counter()  # the source's bytes: the write is their copy into the shard file
                _write_array_fast(Path(d), name, data, 16, "zstd", EncodedFrames(*source) if source else None)
                enc_s[name] += time.perf_counter() - t
    for name, e in arrays.items():
        e["decode_mb_s"] = e["decoded_bytes"] / 1e6 / max(dec_s[name], 1e-9)
        e["encode_mb_s"] = e["decoded_bytes"] / 1e6 / max(enc_s[name], 1e-9)


def _stored_images(array_dir: Path):
    """(format, blobs) of a curator.image array written from source bytes, or None."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    if not meta["attributes"].get("source_bytes"):
        return None
    fmt = meta["codecs"][0]["configuration"]["codecs"][0]["configuration"]["format"]
    data = (array_dir / ".".join("0" for _ in meta["shape"])).read_bytes()
    n = meta["shape"][0]
    index = np.frombuffer(data[-(16 * n + 4):-4], "<u8").reshape(n, 2)
    return fmt, tuple(data[int(o):int(o) + int(b)] for o, b in index)


def _add_errors(cfg, source, out: Path, arrays: dict[str, dict]) -> None:
    """Largest |decoded - labeler output| per lossy array; frames' PSNR against TFDS's decode."""
    from curation import open_dataset
    from pipelines.stages import _set_seeds, episode_arrays, local_labeler

    ds = open_dataset(str(out))
    labeler = local_labeler(cfg)
    err = {n: 0.0 for n in arrays}
    sq = {n: [0.0, 0] for n in arrays if n.startswith("frames/")}
    for ep in source.read():
        if ep.episode_id not in ds.episode_ids:
            continue
        _set_seeds(cfg.seed, ep.episode_id)
        want = episode_arrays(ep, labeler(ep))
        got = ds.episode_arrays(ep.episode_id)
        for name in arrays:
            if name not in want or name not in got:
                continue
            a, b = got[name].astype(np.float64), want[name].astype(np.float64)
            if name in sq:
                sq[name][0] += float(((a - b) ** 2).sum())
                sq[name][1] += a.size
            both = np.isfinite(a) & np.isfinite(b)
            if (np.isnan(a) != np.isnan(b)).any():
                err[name] = float("inf")
            elif both.any():
                err[name] = max(err[name], float(np.abs(a[both] - b[both]).max()))
    for name, e in arrays.items():
        e["max_abs_error"] = err[name]
        if name in sq:  # JSON has no inf: identical frames are psnr null, identical_to_source true
            mse = sq[name][0] / max(sq[name][1], 1)
            e["identical_to_source"] = mse == 0
            e["psnr_db_vs_source"] = None if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _psnr_text(e: dict) -> str:
    if "identical_to_source" not in e:
        return ""
    return "inf (identical)" if e["identical_to_source"] else f"{e['psnr_db_vs_source']:.1f}"


def _text(results: list[dict]) -> str:
    parts = []
    for r in results:
        rows = [{"array": n, "encoding": e["encoding"], "bytes": e["bytes"], "share": e["share"],
                 "B per": f"{e['bytes_per_item']:.0f} /{e['per']}", "x smaller": e["decoded_over_bytes"],
                 "enc MB/s": e["encode_mb_s"], "dec MB/s": e["decode_mb_s"],
                 "max err": e["max_abs_error"], "bound": e["max_abs_error_bound"],
                 "PSNR dB": _psnr_text(e)}
                for n, e in sorted(r["arrays"].items(), key=lambda kv: -kv[1]["bytes"])]
        parts.append(f"{r['source']}: {r['episodes']} episodes, {r['frames']} frames; dataset {r['dataset_bytes']:,} B, "
                     f"source {r['source_bytes']:,} B = {r['dataset_over_source']:.3f} of the source "
                     f"(job {r['job_seconds']:.1f} s)\n" + format_table(rows, floatfmt=".4g"))
    return "\n\n".join(parts)
