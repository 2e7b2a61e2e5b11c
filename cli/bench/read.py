"""`curate bench read`: RLDS read throughput (episodes/s, frames/s, MB/s) of curation.sources.rlds
against TFDS's own per-step decoding, on a dataset directory or a synthetic 256 px JPEG dataset."""

from __future__ import annotations

import time


def add_bench(bench_subparsers) -> None:
    from cli.output import add_report_args

    p = bench_subparsers.add_parser(
        "read", help="RLDS read throughput (episodes/s, frames/s) of curation.sources.rlds vs TFDS's own decoding")
    p.add_argument("path", nargs="?", default=None,
                   help="dataset directory (default: write a synthetic 256 px JPEG dataset to a temp dir)")
    p.add_argument("--split", default="train")
    p.add_argument("--episodes", type=int, default=12, help="synthetic episodes (default 12)")
    p.add_argument("--steps", type=int, default=50, help="steps per synthetic episode (default 50)")
    p.add_argument("--size", type=int, default=256, help="synthetic image size in px (default 256)")
    p.add_argument("--no-baseline", action="store_true", help="skip the TFDS as_dataset baseline")
    add_report_args(p, bench="read")
    p.set_defaults(func=run_bench_read)


def write_synthetic_jpeg_dataset(root, episodes: int, steps: int, size: int):
    """A contributed-style dataset with two 256 px JPEG cameras and smooth, textured frames."""
    import numpy as np
    import tensorflow_datasets as tfds

    from curation.sources.rlds_write import write_rlds_dataset

    img = tfds.features.Image(shape=(size, size, 3), dtype=np.uint8, encoding_format="jpeg")
    feats = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "image": img, "wrist_image": img, "state": tfds.features.Tensor(shape=(8,), dtype=np.float32)}),
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
    })
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]

    def episode(i):
        t = np.arange(steps)[:, None, None]
        base = ((xx[None] + 3 * t + 17 * i) % 256).astype(np.uint8)
        frames = np.stack([base, ((yy[None] + 2 * t) % 256).astype(np.uint8), (base // 2 + 40)], -1)
        frames = np.clip(frames + rng.integers(0, 24, frames.shape, dtype=np.uint8), 0, 255).astype(np.uint8)
        return {"steps": {"observation": {"image": frames, "wrist_image": frames[:, ::-1],
                                          "state": rng.normal(size=(steps, 8)).astype(np.float32)},
                          "action": rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
                          "language_instruction": [f"task {i % 3}"] * steps},
                "episode_metadata": {"file_path": f"synthetic/{i}"}}

    return write_rlds_dataset(root, "bench_read_synthetic", "1.0.0", feats,
                              {"train": (episode(i) for i in range(episodes))}, episodes_per_shard=4)


def run_bench_read(args) -> int:
    import os
    import tempfile

    import tensorflow_datasets as tfds
    from schemas.progress import progress_bar

    from cli.output import emit, write_bench_json

    from curation.formats import format_table
    from curation.sources.rlds import RLDSSource

    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_read_")
        t = time.perf_counter()
        path = str(write_synthetic_jpeg_dataset(tmp.name, args.episodes, args.steps, args.size))
        print(f"wrote synthetic dataset in {time.perf_counter() - t:.1f} s: {path}", file=__import__("sys").stderr)
    try:
        src = RLDSSource(path, args.split)
        nbytes = sum(os.path.getsize(f.path) for f in src.files if "://" not in f.path)
        rows = []
        t = time.perf_counter()
        episodes = frames = steps = 0
        for ep in progress_bar(src.read(), total=src.num_episodes, desc="curation.sources.rlds", unit="ep"):
            episodes += 1
            steps += ep.num_steps
            frames += ep.num_steps * len(ep.frames)
        dt = time.perf_counter() - t
        rows.append({"reader": "curation.sources.rlds (bulk parse + TFDS decoders)", "episodes": episodes, "frames": frames,
                     "seconds": dt, "episodes_per_s": episodes / dt, "frames_per_s": frames / dt,
                     "MB_per_s": nbytes / 1e6 / dt})
        if not args.no_baseline:
            cams = [f"observation/{c}" for c in src.config.cameras]
            builder = tfds.builder_from_directory(path)
            t = time.perf_counter()
            n = f = 0
            for ep in progress_bar(tfds.as_numpy(builder.as_dataset(split=args.split)), total=src.num_episodes,
                           desc="tfds as_dataset", unit="ep"):
                n += 1
                for s in ep["steps"]:
                    obs = s["observation"]
                    f += sum(1 for c in cams if c.split("/", 1)[1] in obs)
            dt = time.perf_counter() - t
            rows.append({"reader": "tfds as_dataset (per-step)", "episodes": n, "frames": f, "seconds": dt,
                         "episodes_per_s": n / dt, "frames_per_s": f / dt, "MB_per_s": nbytes / 1e6 / dt})
        result = {"path": path, "dataset": src.name, "split": args.split, "episodes": src.num_episodes,
                  "steps": steps, "cameras": list(src.config.cameras), "tfrecord_MB": nbytes / 1e6,
                  "cpu_count": os.cpu_count(), "rows": rows}
        out = write_bench_json("read", result, args.out_json)
        emit(result, args.json, format_table(rows) + f"\n\nwrote {out}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
