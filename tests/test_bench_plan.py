"""`curate bench pipeline`'s planning figures (cli/bench/plan.py) on a curated dataset."""

import pytest

from cli.bench.plan import bytes_written, fsync_cost, openx_projection


def test_fsync_cost_writes_and_syncs_a_shard_of_the_dataset(curated_dir, tmp_path):
    r = fsync_cost(curated_dir, tmp_path, repeats=1)
    assert r["frames"] > 0 and r["write_s_per_1000_frames"] > 0 and r["fsync_s_per_1000_frames"] > 0
    assert r["fsync_vs_write"] == pytest.approx(r["fsync_s_per_1000_frames"] / r["write_s_per_1000_frames"])
    assert list(tmp_path.iterdir()) == []  # its scratch shards are removed


def test_bytes_written_counts_every_file_but_the_job_state(curated_dir):
    r = bytes_written(curated_dir, frames=1000)
    files = [p for p in curated_dir.rglob("*") if p.is_file() and ".job" not in p.relative_to(curated_dir).parts]
    assert r["total_bytes"] == sum(p.stat().st_size for p in files)
    assert sum(r["per_array_bytes_per_1000_frames"].values()) == pytest.approx(r["total_bytes"])
    assert "tracks_px" in r["per_array_bytes_per_1000_frames"]


def test_openx_projection_arithmetic():
    r = openx_projection(core_s_per_1000=18.0, bytes_per_1000=2e6, episodes=1000, steps=100, cores=10)
    assert r["frames"] == 100_000 and r["core_hours"] == pytest.approx(0.5) and r["wall_hours_on_cores"] == pytest.approx(0.05)
    assert r["bytes"] == pytest.approx(2e8) and r["terabytes"] == pytest.approx(2e-4)
