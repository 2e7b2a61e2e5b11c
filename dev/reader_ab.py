"""CPU ms per triplet of the curated-dataset reader alone, cold (every read block read and decoded
again each round), for several datasets with verification on and off, the configurations
interleaved round by round and the best round kept: on a shared, loaded machine that compares them
under the same load, which consecutive `curate bench loader` runs do not.

    python dev/reader_ab.py --rounds 8 --out bench-results/reader-ab.json DATASET_DIR...

With --loader-reads each dataset is also read as the training loader reads it (verification on):
the default policy's camera and labels only (policy.loader.cameras_read / labels_read).

`curate bench loader`'s "reader alone, every block read" rows measure the same thing one
configuration after another.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--loader-reads", action="store_true", help="also read as the loader does (camera, labels)")
    args = ap.parse_args()
    from curation import open_dataset
    from policy.config import LaMPConfig
    from policy.loader import cameras_read, labels_read

    cfg = LaMPConfig()
    loader = {"labels": labels_read(cfg), "cameras": cameras_read(cfg)}
    configs = [(path, verify, False) for path in args.datasets for verify in (True, False)]
    configs += [(path, True, True) for path in args.datasets] if args.loader_reads else []
    opened = {c: open_dataset(c[0], verify=c[1]) for c in configs}
    best = {c: float("inf") for c in configs}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds + 1):  # the first round: imports, metadata, page cache
        for c, ds in opened.items():
            ds.__dict__.pop("_blocks", None)
            c0 = time.process_time()
            n = sum(1 for _ in ds.iter_triplets(prefetch=0, **(loader if c[2] else {})))
            best[c] = min(best[c], (time.process_time() - c0) / n * 1000)
    load.append(os.getloadavg()[0])
    rows = [{"dataset": p, "contract": opened[(p, v, lr)].info.get("contract_version"), "verify": v,
             "reads": "loader's (camera, labels)" if lr else "every array", "triplets": opened[(p, v, lr)].num_triplets(),
             "cpu_ms_per_triplet": best[(p, v, lr)]} for p, v, lr in configs]
    for r in rows:
        print(f"{r['dataset']:45s} contract {r['contract']}  verify {'on ' if r['verify'] else 'off'}  "
              f"{r['reads']:26s} {r['cpu_ms_per_triplet']:.2f} CPU ms / triplet")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rounds": args.rounds, "load_avg": load, "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
