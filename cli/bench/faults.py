"""`curate bench faults [--json]`: a fault campaign, measured.

1. kills: `curate run` SIGKILLed (its whole process group) at a random moment of its run, with the
   local engine and with Ray, then run again with the same arguments. Each result is compared with
   the uninterrupted run (manifest rows, episode checksums, every array); after the rerun, no
   process of the killed run may be alive and no temporary shard may be left.
2. source corruptions: random byte flips and truncations of a copy of the source tfrecord, each
   followed by a job (local engine, in this process). An episode whose record was damaged must be
   quarantined with a reason or written identical to the reference; every undamaged episode must
   be written identical; written + quarantined must account for every planned episode.
3. published flips: one random byte flipped in a random file of a published version (and put
   back afterwards): `verify` and the reader (`open_dataset` then every triplet) must both catch it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from cli.bench.cluster import FAST_LABELS, compare_datasets, curate_cmd, run_args
from cli.output import add_report_args, emit, write_bench_json
from curation.formats import format_table

SHARD_EPISODES = 3
KILL_WINDOW = (0.05, 0.95)  # a kill lands between 5 % and 95 % of the engine's uninterrupted wall time
RERUN_TIMEOUT_S = 900
EXIT_GRACE_S = 15.0  # how long a killed run's processes may take to notice and exit
STDERR_TAIL_CHARS = 2000  # of a failed run's stderr in the error: its last lines, where the error is
MAX_DRAWS = 3  # kill moments drawn for one trial before a run that keeps finishing first is reported unkilled
FIRST_WORKER = "first-worker"  # a kill moment: when the first Ray worker process appears (start-up)
RAY_WORKER_SCRIPT = "default_worker.py"  # the program of every Ray worker process


def add_bench(bench_sub) -> None:
    p = bench_sub.add_parser("faults", help="kill, corrupt and tamper: resumes equal, nothing lost, all caught")
    p.add_argument("--source", default=None, help="RLDS dataset (default: the shared Bridge episodes)")
    p.add_argument("--kills-local", type=int, default=10)
    p.add_argument("--kills-ray", type=int, default=5)
    p.add_argument("--kills-ray-startup", type=int, default=2,
                   help="Ray kills at the moment its first worker process appears (mid start-up)")
    p.add_argument("--corruptions", type=int, default=50)
    p.add_argument("--flips", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the datasets go (default a temp dir, removed after)")
    add_report_args(p, bench="faults")
    p.set_defaults(func=cmd_bench_faults)


# ------------------------------------------------------------------------------ kills


def _run_cmd(source, out: Path, runner: str) -> list[str]:
    workers = ["--workers", "2"] if runner == "ray" else []
    return curate_cmd() + ["run", "--runner", runner] + workers + run_args(source, out, SHARD_EPISODES)


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: set[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def _names(pids: list[int]) -> list[str]:
    """The program and first argument of each process (e.g. `raylet`, `gcs_server`, `python -m ...`)."""
    import psutil

    out = []
    for pid in pids:
        try:
            out.append(" ".join(psutil.Process(pid).cmdline()[:3])[:120])
        except psutil.NoSuchProcess:
            continue
    return out


def timed_run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=RERUN_TIMEOUT_S, start_new_session=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({res.returncode}): {res.stderr[-STDERR_TAIL_CHARS:]}")
    return time.perf_counter() - t0


def _killed_run(cmd: list[str], when) -> tuple[bool, set[int], float]:
    """Start `cmd` in a session of its own and SIGKILL its process group at `when`: seconds after
    the start, or FIRST_WORKER (as soon as a Ray worker process exists: mid start-up). Returns
    (killed, every descendant seen, seconds it ran)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: set[int] = set()
    t0 = time.perf_counter()

    def due() -> bool:
        if when == FIRST_WORKER:
            return any(RAY_WORKER_SCRIPT in name for name in _names(sorted(seen)))
        return time.perf_counter() - t0 >= when

    while not due() and proc.poll() is None:
        seen.update(_descendants(proc.pid))  # Ray's raylet, workers, ...: must all die with the job
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        seen.update(_descendants(proc.pid))
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed, seen, time.perf_counter() - t0


def _leftovers(seen: set[int]) -> list[str]:
    """What of a killed run outlives the grace period (named for the report), then stopped so
    that one trial's leftovers cannot reach the next."""
    exit_deadline = time.perf_counter() + EXIT_GRACE_S
    while _alive(seen) and time.perf_counter() < exit_deadline:
        time.sleep(0.2)
    left = _alive(seen)
    names = _names(left)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return names


def kill_trial(source, out: Path, runner: str, when, reference: Path, rng: random.Random) -> dict:
    """Start a run, SIGKILL its process group at `when`, run again, compare with `reference`.
    A run that finishes before its kill (the machine was faster than the reference run) is
    started again with a moment drawn from its own wall time, up to MAX_DRAWS times."""
    cmd = _run_cmd(source, out, runner)
    for draw in range(1, MAX_DRAWS + 1):
        killed, seen, ran_s = _killed_run(cmd, when)
        if killed or when == FIRST_WORKER or draw == MAX_DRAWS:
            break
        shutil.rmtree(out, ignore_errors=True)  # finished whole: nothing to resume, so start over
        when = rng.uniform(*KILL_WINDOW) * ran_s
    left_names = _leftovers(seen)
    timed_run(cmd)
    cmp = compare_datasets(reference, out)
    tmp_anywhere = sorted(str(p.relative_to(out)) for p in out.rglob(".tmp*"))
    return {
        "runner": runner, "kill_at": when if when == FIRST_WORKER else round(when, 2), "draws": draw,
        "killed": killed, "killed_after_s": round(ran_s, 2),
        "equal": cmp["manifest_rows_equal"] and cmp["checksums_equal"] and cmp["arrays_equal"],
        "episodes": cmp["episodes"], "processes_left": len(left_names), "processes_left_names": left_names,
        "tmp_left": len(tmp_anywhere),
    }


def kill_campaign(source, work: Path, n_local: int, n_ray: int, n_ray_startup: int, rng: random.Random) -> dict:
    reference = work / "reference-local"
    walls = {"local": timed_run(_run_cmd(source, reference, "local"))}
    trials = []
    if n_ray or n_ray_startup:
        ray_ref = work / "reference-ray"
        walls["ray"] = timed_run(_run_cmd(source, ray_ref, "ray"))
        c = compare_datasets(reference, ray_ref)
        walls["ray_equals_local"] = c["manifest_rows_equal"] and c["arrays_equal"]
    plan = [("local", None)] * n_local + [("ray", None)] * n_ray + [("ray", FIRST_WORKER)] * n_ray_startup
    for i, (runner, when) in enumerate(plan):
        when = when or rng.uniform(*KILL_WINDOW) * walls[runner]
        trials.append({"trial": i, **kill_trial(source, work / f"kill-{i:02d}", runner, when, reference, rng)})
        shutil.rmtree(work / f"kill-{i:02d}", ignore_errors=True)
    return {"reference_wall_s": walls, "trials": trials, "reference": str(reference)}


# ------------------------------------------------------------------------------ source corruptions


def record_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte span of every record of an intact tfrecord (framing included)."""
    from curation.sources.tfrecord_scan import FOOTER_BYTES, HEADER_BYTES, scan_buffer

    spans = []
    for slot in scan_buffer(path.read_bytes()):
        spans.append((slot.offset, slot.offset + HEADER_BYTES + len(slot.data) + FOOTER_BYTES))
    return spans


def corrupt(data: bytes, rng: random.Random) -> tuple[bytes, dict]:
    """Flip 1-8 bytes at one random place, or cut the file at a random length."""
    if rng.random() < 0.7:
        at = rng.randrange(len(data))
        n = rng.randint(1, 8)
        buf = bytearray(data)
        for k in range(at, min(at + n, len(buf))):
            buf[k] ^= rng.randint(1, 255)
        return bytes(buf), {"kind": "flip", "at": at, "bytes": n}
    cut = rng.randrange(1, len(data))
    return data[:cut], {"kind": "truncate", "at": cut}


def damaged_records(spans: list[tuple[int, int]], what: dict) -> set[int]:
    if what["kind"] == "truncate":
        return {i for i, (_, end) in enumerate(spans) if end > what["at"]}
    lo, hi = what["at"], what["at"] + what["bytes"]
    return {i for i, (a, b) in enumerate(spans) if a < hi and lo < b}


# Where an episode sits (its shard and offsets) moves when an earlier episode of its unit is lost;
# everything else of its manifest row (checksum included) must not.
POSITION_FIELDS = ("source_file", "shard", "frame_start", "anchor_start")


def _content(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in POSITION_FIELDS}


def _rows(path: Path, name: str) -> list[dict]:
    import pyarrow.parquet as pq

    p = path / name
    return pq.read_table(p).to_pylist() if p.exists() else []


def corruption_trial(src_copy: Path, tfrecord: Path, clean: bytes, spans, reference_rows: dict, out: Path,
                     rng: random.Random) -> dict:
    """One corruption of the copied source's tfrecord, one job, the episodes accounted for."""
    from pipelines.config import JobConfig
    from pipelines.job import run_job

    data, what = corrupt(clean, rng)
    tfrecord.write_bytes(data)
    damaged = damaged_records(spans, what)
    cfg = JobConfig.load(None, list(FAST_LABELS), **{"source.path": str(src_copy), "engine.runner": "local",
                                                      "writer.shard_episodes": SHARD_EPISODES})
    s = run_job(cfg, out, progress=False)
    written = {r["episode_index"]: _content(r) for r in _rows(out, "manifest.parquet")}
    quarantined = {r["episode_index"]: r["reason"] for r in _rows(out, "quarantine.parquet")}
    undamaged = [i for i in reference_rows if i not in damaged]
    lost = [i for i in undamaged if written.get(i) != reference_rows[i]]
    bad_damaged = [i for i in damaged if i in reference_rows and written.get(i) != reference_rows[i]
                   and not quarantined.get(i)]
    tfrecord.write_bytes(clean)
    shutil.rmtree(out, ignore_errors=True)
    return {**what, "damaged_episodes": len(damaged), "written": len(written), "quarantined": len(quarantined),
            "undamaged_lost": len(lost), "damaged_unaccounted": len(bad_damaged),
            "unaccounted": s["counts"].get("unaccounted", 0),
            "ok": not lost and not bad_damaged and s["counts"].get("unaccounted", 0) == 0}


def corruption_campaign(source: Path, reference: Path, work: Path, n: int, rng: random.Random) -> dict:
    src_copy = work / "src-copy"
    shutil.copytree(source, src_copy, dirs_exist_ok=True)
    for p in src_copy.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    tfrecord = sorted(src_copy.glob("*-train.tfrecord-*"))[0]
    clean = tfrecord.read_bytes()
    spans = record_spans(tfrecord)
    reference_rows = {r["episode_index"]: _content(r) for r in _rows(reference, "manifest.parquet")}
    trials = [{"trial": i, **corruption_trial(src_copy, tfrecord, clean, spans, reference_rows,
                                              work / f"corrupt-{i:02d}", rng)} for i in range(n)]
    return {"file": tfrecord.name, "records": len(spans), "trials": trials}


# ------------------------------------------------------------------------------ published flips


def _reader_catches(ref: str) -> Optional[str]:
    """The reader's error on opening `ref` and reading every triplet, or None if it read cleanly."""
    from curation import open_dataset

    try:
        ds = open_dataset(ref)
        for _ in ds.iter_triplets():
            pass
    except Exception as exc:  # noqa: BLE001 - any refusal counts; what it says is reported
        return f"{type(exc).__name__}: {exc}"
    return None


def flip_trial(ref: str, root: Path, files: list[str], rng: random.Random) -> dict:
    from curation.registry.verify import verify

    rel = rng.choice(files)
    path = root / rel
    data = path.read_bytes()
    at = rng.randrange(len(data))
    buf = bytearray(data)
    buf[at] ^= rng.randint(1, 255)
    path.chmod(0o644)
    path.write_bytes(bytes(buf))
    try:
        v = verify(ref, progress=False)
        verify_names = any(m["path"] == rel for m in v.mismatched)
        reader = _reader_catches(ref)
    finally:
        path.write_bytes(data)
    return {"file": rel, "at": at, "verify_caught": (not v.ok) and verify_names,
            "reader_caught": reader is not None, "reader_names_file": bool(reader and rel in reader),
            "reader_error": (reader or "")[:200]}


def flip_campaign(dataset: Path, work: Path, n: int, rng: random.Random) -> dict:
    from curation.registry.publish import publish
    from curation.registry.versions import read_index

    pv = publish(dataset, "faults", "1.0.0", to_url=str(work / "registry"), progress=False)
    files = sorted(read_index(pv.ref)["files"])
    root = Path(pv.root)
    trials = [{"trial": i, **flip_trial(pv.ref, root, files, rng)} for i in range(n)]
    clean = _reader_catches(pv.ref) is None
    return {"ref": pv.ref, "files": len(files), "trials": trials, "reads_clean_after": clean}


# ------------------------------------------------------------------------------ the command


def _default_source() -> Path:
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openx" / "bridge_dataset" / "1.0.0"
    if not shared.is_dir():
        raise SystemExit(f"no default source at {shared}: pass --source")
    return shared


def summarise(result: dict) -> list[dict]:
    rows = []
    for runner in ("local", "ray"):
        t = [x for x in result["kills"]["trials"] if x["runner"] == runner]
        if t:
            rows.append({"campaign": f"SIGKILL + resume ({runner})", "trials": len(t),
                         "ok": sum(x["equal"] and not x["processes_left"] and not x["tmp_left"] for x in t),
                         "detail": f"{sum(x['killed'] for x in t)} killed mid-run "
                                   f"({sum(x['kill_at'] == FIRST_WORKER for x in t)} at the first worker's start); "
                                   f"equal {sum(x['equal'] for x in t)}; "
                                   f"processes left {sum(x['processes_left'] for x in t)}; "
                                   f"tmp left {sum(x['tmp_left'] for x in t)}"})
    c = result["corruptions"]["trials"]
    if c:
        rows.append({"campaign": "source tfrecord corruptions", "trials": len(c), "ok": sum(x["ok"] for x in c),
                     "detail": f"{sum(x['kind'] == 'flip' for x in c)} flips, {sum(x['kind'] == 'truncate' for x in c)} "
                               f"cuts; undamaged lost {sum(x['undamaged_lost'] for x in c)}; damaged unaccounted "
                               f"{sum(x['damaged_unaccounted'] for x in c)}"})
    f = result["flips"]["trials"]
    if f:
        rows.append({"campaign": "published-version byte flips", "trials": len(f),
                     "ok": sum(x["verify_caught"] and x["reader_caught"] for x in f),
                     "detail": f"verify caught {sum(x['verify_caught'] for x in f)}; reader caught "
                               f"{sum(x['reader_caught'] for x in f)} (naming the file {sum(x['reader_names_file'] for x in f)})"})
    return rows


def bench_faults(source: Path, work: Path, kills_local: int, kills_ray: int, corruptions: int, flips: int,
                 seed: int, kills_ray_startup: int = 0) -> dict:
    rng = random.Random(seed)
    kills = kill_campaign(source, work, kills_local, kills_ray, kills_ray_startup, rng)
    reference = Path(kills["reference"])
    result = {"source": str(source), "seed": seed, "labels": FAST_LABELS, "kills": kills,
              "corruptions": corruption_campaign(source, reference, work, corruptions, rng),
              "flips": flip_campaign(reference, work, flips, rng) if flips else {"trials": []}}
    result["summary"] = summarise(result)
    result["all_ok"] = all(r["ok"] == r["trials"] for r in result["summary"])
    return result


def cmd_bench_faults(args) -> int:
    import tempfile

    for k, v in {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        os.environ.setdefault(k, v)
    source = Path(args.source) if args.source else _default_source()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = bench_faults(source, work, args.kills_local, args.kills_ray, args.corruptions, args.flips, args.seed,
                              args.kills_ray_startup)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    path = write_bench_json("faults", result, args.out_json)
    text = "\n".join([format_table(result["summary"]), "", f"all ok: {result['all_ok']}  "
                      f"({result['wall_s']} s)", f"-> {path}"])
    emit(result, args.json, text)
    return 0 if result["all_ok"] else 1
