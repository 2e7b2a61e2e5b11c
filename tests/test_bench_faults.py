"""The fault campaign of `curate bench faults`, small: one SIGKILL of a local `curate run` then a
resume equal to the uninterrupted run, random corruptions of the Bridge tfrecord with every
undamaged episode written, and byte flips in a published version caught by verify and the reader.
The full campaign (10 + 5 kills, 50 + 50 faults) is the bench; its table is in the README."""

from __future__ import annotations

import random

from cli.bench.faults import bench_faults, corrupt, damaged_records


def test_damaged_records_of_a_flip_and_a_cut():
    spans = [(0, 100), (100, 250), (250, 300)]
    assert damaged_records(spans, {"kind": "flip", "at": 99, "bytes": 2}) == {0, 1}
    assert damaged_records(spans, {"kind": "flip", "at": 120, "bytes": 1}) == {1}
    assert damaged_records(spans, {"kind": "truncate", "at": 250}) == {2}
    assert damaged_records(spans, {"kind": "truncate", "at": 251}) == {2}
    data, what = corrupt(bytes(300), random.Random(3))
    assert (len(data) == what["at"]) if what["kind"] == "truncate" else (data != bytes(300) and len(data) == 300)


def test_small_fault_campaign(bridge_dir, tmp_path):
    r = bench_faults(bridge_dir, tmp_path, kills_local=1, kills_ray=0, corruptions=2, flips=2, seed=1)
    (kill,) = r["kills"]["trials"]
    assert kill["killed"] and kill["equal"] and kill["processes_left"] == 0 and kill["tmp_left"] == 0 and kill["episodes"] > 0
    for t in r["corruptions"]["trials"]:
        assert t["ok"], t
        assert t["written"] + t["quarantined"] >= r["corruptions"]["records"] - t["damaged_episodes"]
    assert sum(t["damaged_episodes"] for t in r["corruptions"]["trials"]) > 0
    for t in r["flips"]["trials"]:
        assert t["verify_caught"] and t["reader_caught"], t
    assert r["flips"]["reads_clean_after"] and r["all_ok"]
