"""`curate bench loader`: triplets/s of the training loader (policy.loader.TripletStream through a
torch DataLoader) with 0, 1 and 2 workers, against the same transform + collate over triplets
already in memory, from a dataset directory and from a published version on an S3 server on
loopback (moto's server in its own process), with and without read-side verification, and the
peak RSS of the loader's processes (main + workers).

The datasets are real `curate run` outputs: simulated Meta-World episodes at each image size,
curated with the default labels (made once under the work dir). The machine may be shared: every
configuration is measured `repeats` times and the best rate kept, the in-memory rate is measured
in the same run (before and after the loaders, best kept), and the load average is recorded.
Each row also has the CPU seconds per 1,000 triplets of all the loader's processes, and its ratio
to the in-memory path's: what the loader costs whatever share of the cores it is given. A bench
dataset fits the loader's block cache, so the loader rows decode each block once; the "reader
alone, every block read" rows (`reader_cold`) give the cost of reading and decoding every block
each epoch, as on a dataset larger than the cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

# Episodes x steps of the simulated source per image size: 8 episodes of 40 steps give 4 shards
# of 2 episodes (the pipeline bench's unit), enough for 2 workers to each read their own shards.
BENCH_EPISODES, BENCH_STEPS = 8, 40
BUCKET = "bench-loader"
# Credentials of the throw-away loopback S3 server (moto accepts any).
S3_KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def curated_dataset(workdir: Path, size: int) -> Path:
    """A `curate run` (local engine) of BENCH_EPISODES simulated episodes at `size` px, cached."""
    from cli.bench.pipeline import _dataset, _run

    out = workdir / f"curated-{size}"
    if not (out / "manifest.parquet").is_file():
        src = _dataset(workdir, BENCH_EPISODES, BENCH_STEPS, size)
        _run(src, out, "local", 1)
    return out


def published_version(dataset: Path, to_url: str, name: str) -> str:
    from curation.registry.publish import publish

    return publish(str(dataset), name, "1.0.0", to_url=to_url, progress=False).ref


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on loopback in its own process (not a thread of this one: it must not take
    the measured process's CPU), with the AWS_* environment pointing at it; yields the endpoint."""
    import boto3
    import s3fs

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", *S3_KEYS)}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, **S3_KEYS)
    try:
        for _ in range(200):  # up to 20 s for the server to listen
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            time.sleep(0.1)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        s3fs.S3FileSystem.clear_instance_cache()


class PeakRSS:
    """Peak resident memory of this process and its children (DataLoader workers), sampled."""

    def __init__(self, every_s: float = 0.02):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = self.proc.memory_info().rss + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def stream_for(ref: Any, cfg, verify: bool, seed: int = 0):
    """A TripletStream over `ref`; `verify` passed where the loader takes it (today's code opens
    every reference verified, so verify=False is measured only where it is supported)."""
    import inspect

    from policy.loader import TripletStream

    kwargs = dict(seed=seed, shuffle_buffer=64, epochs=None)
    if "verify" in inspect.signature(TripletStream.__init__).parameters:
        kwargs["verify"] = verify
    elif not verify:
        return None
    return TripletStream(ref, cfg, **kwargs)


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) so far of this process and its live children (the workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def loader_rate(stream, workers: int, num_triplets: int, batch_size: int, seed: int = 0) -> tuple[float, int, float]:
    """(triplets/s, peak RSS bytes, CPU seconds per 1,000 triplets of all the loader's processes)
    of one DataLoader run: start-up, the first batch and the batches already prefetched are not
    throughput. The CPU figure does not depend on how many cores the others leave free."""
    from policy.loader import make_loader

    with PeakRSS() as rss:
        loader = make_loader(stream, batch_size, workers, seed=seed)
        it = iter(loader)
        for _ in range(1 + 4 * workers):
            next(it)
        n, t0, c0 = 0, time.perf_counter(), _tree_cpu_seconds()
        while n < num_triplets:
            n += len(next(it)["language"])
        dt, cpu = time.perf_counter() - t0, _tree_cpu_seconds() - c0
        del it, loader
    return n / dt, rss.peak, cpu / n * 1000


def memory_rate(ds, stream, num_triplets: int, batch_size: int) -> float:
    """The same transform + collate over triplets already read (raw arrays in memory)."""
    from policy.loader import collate, transform_samples

    raw = []
    for tr in ds.iter_triplets(shards=stream.shards):
        raw.append(tr)
        if len(raw) >= num_triplets:
            break
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < num_triplets:
        for i in range(0, len(raw), batch_size):
            collate(list(transform_samples(stream.transform, iter(raw[i: i + batch_size]))))
            n += len(raw[i: i + batch_size])
            if n >= num_triplets:
                break
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1000


def reader_cold(ref: str, verify: bool, epochs: int = 3, cfg=None) -> tuple[float, float]:
    """(triplets/s, CPU s per 1,000 triplets) of the reader alone (`iter_triplets`, no transform,
    no prefetch thread), every read block read and decoded again each epoch, best of `epochs`. The
    loader's block cache (4 shards per worker) holds a bench dataset whole, so the loader rows
    re-read nothing after their first epoch; on a real dataset every block is read once per epoch,
    which is what this measures. With `cfg`, the reads are the loader's for it (its camera and
    labels only), else every array."""
    from curation import open_dataset
    from policy.loader import cameras_read, labels_read

    ds = open_dataset(ref, verify=verify)
    reads = {} if cfg is None else {"labels": labels_read(cfg), "cameras": cameras_read(cfg)}
    best = (0.0, float("inf"))
    for _ in range(epochs + 1):  # the first: imports, metadata
        ds.__dict__.pop("_blocks", None)
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(1 for _ in ds.iter_triplets(prefetch=0, **reads))
        rate, cpu = n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1000
        best = (max(best[0], rate), min(best[1], cpu))
    return best


def bench_source(label: str, ref: str, size: int, workers: tuple[int, ...], num_triplets: int, batch_size: int,
                 repeats: int, policy=None) -> list[dict]:
    """Rows for one dataset reference: each worker count with and without verification, best of
    `repeats` rates (the highest peak RSS of the runs is reported)."""
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.train import config_for_data

    cfg = config_for_data(open_dataset(ref), policy or LaMPConfig())
    rows = []
    for verify in (True, False):
        stream = stream_for(ref, cfg, verify)
        if stream is None:
            continue
        for nw in workers:
            row = {"size": size, "source": label, "verify": verify, "workers": nw}
            try:
                runs = [loader_rate(stream, nw, num_triplets, batch_size) for _ in range(repeats)]
            except Exception as exc:  # noqa: BLE001 - a configuration that cannot run is a result
                rows.append(dict(row, triplets_per_s=None, peak_rss_MB=None, error=f"{type(exc).__name__}: {exc}"[-300:]))
                continue
            rows.append(dict(row, triplets_per_s=max(r for r, _, _ in runs), runs_per_s=[r for r, _, _ in runs],
                             peak_rss_MB=max(m for _, m, _ in runs) / 1e6,
                             cpu_s_per_1000_triplets=min(c for _, _, c in runs)))
        rate, cpu = reader_cold(ref, verify, cfg=cfg)
        rows.append({"size": size, "source": f"{label}: reader alone, every block read", "verify": verify,
                     "workers": 0, "triplets_per_s": rate, "peak_rss_MB": None, "cpu_s_per_1000_triplets": cpu,
                     "reader_only": True})
    return rows


def measure_ref(ref: str, size: int, workers: tuple[int, ...], num_triplets: int, batch_size: int, repeats: int,
                s3_copy: bool = False, policy=None) -> dict:
    """The in-memory rate (best of `repeats` runs before and of `repeats` after the loaders), the
    loader rows of `ref` and, with s3_copy, of its version published to the loopback S3 server."""
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.train import config_for_data

    ds = open_dataset(ref)
    cfg = config_for_data(ds, policy or LaMPConfig())
    base = stream_for(ref, cfg, True)
    mem = [memory_rate(ds, base, num_triplets, batch_size) for _ in range(repeats)]  # (rate, CPU s / 1000)
    rows = bench_source("directory", ref, size, workers, num_triplets, batch_size, repeats, policy)
    if s3_copy:
        with s3_server():
            pub = published_version(Path(ref), f"s3://{BUCKET}/v{size}-{time.time_ns()}", f"bench{size}")
            rows += bench_source("s3 (published)", pub, size, workers, num_triplets, batch_size, repeats, policy)
    mem += [memory_rate(ds, base, num_triplets, batch_size) for _ in range(repeats)]
    best, best_cpu = max(m for m, _ in mem), min(c for _, c in mem)
    for r in rows:
        if r.get("reader_only"):  # no transform: not comparable with the in-memory path
            continue
        r["ratio_vs_memory"] = r["triplets_per_s"] / best if r["triplets_per_s"] else None
        if r.get("cpu_s_per_1000_triplets"):
            r["cpu_ratio_vs_memory"] = best_cpu / r["cpu_s_per_1000_triplets"]  # memory's CPU per triplet / the loader's
    return {"size": size, "dataset": ref, "triplets": ds.num_triplets(), "episodes": len(ds),
            "shards": len(ds.shard_names), "memory_per_s": best, "memory_cpu_s_per_1000_triplets": best_cpu,
            "memory_runs_per_s": [m for m, _ in mem], "rows": rows}


def _finish(result: dict) -> dict:
    result["conditions"]["load_avg_end"] = os.getloadavg()
    result["rows"] = [dict(r, memory_per_s=s["memory_per_s"]) for s in result["sizes"] for r in s["rows"]]
    return result


def _start(batch_size: int, num_triplets: int, repeats: int) -> dict:
    return {"conditions": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
            "batch_size": batch_size, "triplets_per_run": num_triplets, "repeats": repeats,
            "targets": {"ratio_2_workers_vs_memory": 0.9, "triplets_per_s_2_workers": 3 * 828}}


def bench_size_of_ref(ref: str, workers: tuple[int, ...] = (0, 1, 2), num_triplets: int = 1024,
                      batch_size: int = 32, repeats: int = 3, policy=None) -> dict:
    """The loader bench of one given dataset (directory or URL; no S3 copy)."""
    from curation import open_dataset

    first = next(iter(open_dataset(ref).iter_triplets(chunk=1)))
    size = int(next(iter(first.images.values())).shape[0])
    result = _start(batch_size, num_triplets, repeats)
    result["sizes"] = [measure_ref(ref, size, workers, num_triplets, batch_size, repeats, policy=policy)]
    return _finish(result)


def bench_loader(workdir: Path, sizes: tuple[int, ...] = (64, 128), workers: tuple[int, ...] = (0, 1, 2),
                 num_triplets: int = 1024, batch_size: int = 32, repeats: int = 3, with_s3: bool = True,
                 progress: bool = True, policy=None) -> dict:
    """The loader bench on `curate run` outputs at each image size (module docstring); policy:
    the LaMPConfig whose K, T and camera the samples take (default the shipped one)."""
    from schemas.progress import progress_bar

    workdir.mkdir(parents=True, exist_ok=True)
    result = _start(batch_size, num_triplets, repeats)
    result["sizes"] = [measure_ref(str(curated_dataset(workdir, s)), s, workers, num_triplets, batch_size, repeats,
                                   s3_copy=with_s3, policy=policy)
                       for s in progress_bar(sizes, desc="bench loader", unit="size", disable=not progress, leave=False)]
    return _finish(result)


def table_rows(result: dict) -> list[dict]:
    return [{"px": r["size"], "source": r["source"], "verify": "on" if r["verify"] else "off", "workers": r["workers"],
             "triplets/s": r["triplets_per_s"], "memory/s": r["memory_per_s"], "ratio": r.get("ratio_vs_memory"),
             "peak RSS MB": r["peak_rss_MB"], "CPU s/1000": r.get("cpu_s_per_1000_triplets"),
             "error": r.get("error", "")[-60:]} for r in result["rows"]]


def default_workdir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "curate-bench-loader"


def clean(workdir: Optional[Path]) -> None:
    shutil.rmtree(workdir or default_workdir(), ignore_errors=True)
