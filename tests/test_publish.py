"""Publishing to a local registry: immutability, atomic visibility, verify,
diff, refs, the CLI, and two racing publishers."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from curation.registry import content, diff as D, gc, publish as P, refs, storage, verify as V, versions
from cli.main import main as curate
from schemas.dataset import CONTRACT_VERSION
from test_curation_helpers import make_episode, make_labels, write_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """v1: episodes 0-3; v2: episodes 1-4 with episode 2 relabelled."""
    root = tmp_path_factory.mktemp("pub")
    pairs = []
    for i in range(5):
        ep = make_episode(i, T=12)
        pairs.append((ep, make_labels(ep, seed=i)))
    v1 = write_dataset(root / "v1", pairs[:4])
    changed = list(pairs[1:])
    ep2 = changed[1][0]
    changed[1] = (ep2, make_labels(ep2, seed=99, visibility=0.8))
    v2 = write_dataset(root / "v2", changed)
    ids = [ep.episode_id for ep, _ in pairs]
    return v1, v2, ids


@pytest.fixture
def registry(tmp_path, monkeypatch):
    reg = tmp_path / "registry"
    monkeypatch.setenv("CURATE_REGISTRY", str(reg))
    return reg


def test_publish_list_verify_resolve(datasets, registry):
    v1, _, _ = datasets
    pv = P.publish(v1, "synth", "0.1.0", progress=False)
    assert pv.created_now and pv.version == "0.1.0" and pv.episodes == 4
    assert pv.num_files == len(content.dataset_files(v1)) > 5
    index = json.loads((registry / "synth" / "0.1.0" / refs.INDEX).read_text())
    files = content.hash_dataset(v1, progress=False)
    assert index["files"] == files  # every file with its sha256 and size
    assert index["content_checksum"] == content.content_checksum(files) == pv.content_checksum
    assert index["contract_version"] == CONTRACT_VERSION and index["created"]
    assert [v.version for v in versions.list_versions("synth")] == ["0.1.0"]
    result = V.verify("synth@0.1.0", progress=False)
    assert result.ok and result.files_checked == pv.num_files and result.bytes_checked == pv.total_bytes
    fs, root, version = versions.resolve(f"{registry}/synth@latest")
    assert version == "0.1.0"
    assert fs.cat_file(f"{root}/manifest.parquet") == (v1 / "manifest.parquet").read_bytes()


def test_same_version_same_content_is_noop_and_other_content_refused(datasets, registry):
    v1, v2, _ = datasets
    first = P.publish(v1, "synth", "1.0.0", progress=False)
    again = P.publish(v1, "synth", "1.0.0", progress=False)
    assert not again.created_now and again.content_checksum == first.content_checksum and again.root == first.root
    index_before = (registry / "synth" / "1.0.0" / refs.INDEX).read_bytes()
    with pytest.raises(refs.VersionConflict, match="different content.*immutable"):
        P.publish(v2, "synth", "1.0.0", progress=False)
    assert (registry / "synth" / "1.0.0" / refs.INDEX).read_bytes() == index_before
    assert len(list((registry / "synth" / "1.0.0").glob("files-*"))) == 1  # nothing left by the refused publish
    assert V.verify("synth@1.0.0", progress=False).ok


def _killed(*args, **kwargs):
    raise KeyboardInterrupt("killed before the index write")


def test_crash_before_index_leaves_no_visible_version(datasets, registry):
    v1, _, _ = datasets
    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(P, "create_exclusive", _killed)  # the process dies right before the index write
        P.publish(v1, "synth", "0.2.0", progress=False)
    assert list((registry / "synth" / "0.2.0").glob("files-*/manifest.parquet"))  # the files were uploaded ...
    assert versions.list_versions("synth") == []  # ... but no version is visible
    with pytest.raises(refs.PublishError, match=r"synth@0.2.0 is not published: no index.json \(1 unfinished"):
        V.verify("synth@0.2.0", progress=False)
    with pytest.raises(refs.PublishError, match="not published"):
        versions.resolve("synth@0.2.0")
    assert len(gc.unfinished_publishes("synth")) == 1
    # a retry publishes normally; the crashed attempt's files stay unreferenced
    pv = P.publish(v1, "synth", "0.2.0", progress=False)
    assert pv.created_now and V.verify("synth@0.2.0", progress=False).ok
    assert len(gc.unfinished_publishes("synth")) == 1
    assert gc.remove_unfinished("synth", older_than_hours=1.0) == []  # too young: may still be running
    removed = gc.remove_unfinished("synth", older_than_hours=0.0)
    assert len(removed) == 1 and gc.unfinished_publishes("synth") == []
    assert V.verify("synth@0.2.0", progress=False).ok  # the published version is untouched


def test_verify_catches_flipped_byte_missing_and_extra_files(datasets, registry):
    v1, _, _ = datasets
    pv = P.publish(v1, "synth", "0.3.0", progress=False)
    root = Path(pv.root)
    victim = sorted(p for p in root.rglob("*") if p.is_file() and "/shards/" in p.as_posix() and p.name != "zarr.json")[0]  # a Zarr shard file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    r = V.verify("synth@0.3.0", progress=False)
    rel = victim.relative_to(root).as_posix()
    assert not r.ok and [m["path"] for m in r.mismatched] == [rel] and not r.missing
    (root / "dataset.json").unlink()
    (root / "stray.txt").write_text("x")
    r = V.verify("synth@0.3.0", progress=False)
    assert r.missing == ["dataset.json"] and r.unexpected == ["stray.txt"] and not r.ok


def test_diff_counts_added_removed_changed(datasets, registry):
    v1, v2, ids = datasets
    P.publish(v1, "synth", "0.1.0", progress=False)
    P.publish(v2, "synth", "0.2.0", progress=False)
    d = D.diff("synth@0.1.0", "synth@0.2.0")
    assert d["added"] == [ids[4]] and d["removed"] == [ids[0]] and d["changed"] == [ids[2]]
    assert d["unchanged"] == 2 and d["episodes_a"] == 4 and d["episodes_b"] == 4
    assert "manifest.parquet" in d["files_changed"] and not any(f.startswith("shards/") for f in d["files_changed"])
    same = D.diff("synth@0.2.0", str(v2))  # a local dataset dir is a ref too
    assert same["added"] == same["removed"] == same["changed"] == same["files_changed"] == [] and same["unchanged"] == 4


def test_refs_names_and_latest(datasets, registry):
    v1, _, _ = datasets
    for v in ("0.9.0", "0.10.0", "0.10.0-rc.1"):
        P.publish(v1, "synth", v, progress=False)
    assert [v.version for v in versions.list_versions("synth")] == ["0.9.0", "0.10.0-rc.1", "0.10.0"]
    assert versions.resolve("synth@latest")[2] == "0.10.0"
    assert refs.parse_ref("s3://bucket/datasets/bridge@1.2.3") == ("s3://bucket/datasets", "bridge", "1.2.3")
    assert refs.parse_ref("bridge@latest") == (str(registry), "bridge", "latest")
    for bad in ("synth", "synth@1.0", "synth@v1.0.0", "s3://synth@1.0.0", "bad name@1.0.0"):
        with pytest.raises(refs.PublishError):
            refs.parse_ref(bad)
    with pytest.raises(refs.PublishError, match="not a semantic version"):
        P.publish(v1, "synth", "1.0", progress=False)
    with pytest.raises(refs.PublishError, match="no published version"):
        versions.resolve("nothing@latest")


def test_invalid_dataset_is_refused(datasets, tmp_path, registry):
    v1, _, _ = datasets
    broken = tmp_path / "broken"
    shutil.copytree(v1, broken)
    shard_file = sorted(p for p in (broken / "shards").rglob("*") if p.is_file() and p.parent.name == "actions" and p.name != "zarr.json")[0]
    raw = bytearray(shard_file.read_bytes())
    raw[0] ^= 0xFF  # an action value changes: the manifest checksum no longer matches
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(refs.PublishError, match="refusing to publish an invalid dataset"):
        P.publish(broken, "synth", "0.1.0", progress=False)
    (broken / "manifest.parquet").unlink()
    with pytest.raises(refs.PublishError, match="manifest.parquet"):
        P.publish(broken, "synth", "0.1.0", progress=False)
    assert versions.list_versions("synth") == []


def test_two_racing_local_publishers_exactly_one_wins(datasets, registry):
    v1, v2, _ = datasets
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(label, path):
        barrier.wait()
        try:
            outcomes[label] = P.publish(path, "race", "1.0.0", progress=False)
        except refs.PublishError as exc:
            outcomes[label] = exc

    threads = [threading.Thread(target=run, args=(k, p)) for k, p in (("a", v1), ("b", v2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [k for k, o in outcomes.items() if isinstance(o, refs.PublishedVersion)]
    lost = [k for k, o in outcomes.items() if isinstance(o, refs.VersionConflict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert "different content" in str(outcomes[lost[0]])
    winner = outcomes[won[0]]
    assert versions.open_version("race@1.0.0").content_checksum == winner.content_checksum
    assert V.verify("race@1.0.0", progress=False).ok
    assert gc.unfinished_publishes("race") == []  # the loser cleaned up its upload


def test_cli_publish_versions_diff_verify(datasets, registry, capsys, tmp_path):
    v1, v2, ids = (shutil.copytree(datasets[0], tmp_path / "v1"), shutil.copytree(datasets[1], tmp_path / "v2"), datasets[2])
    assert curate(["publish", str(v1), "--name", "cli", "--version", "0.1.0", "--to", str(registry), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["created_now"] and out["ref"] == f"{registry}/cli@0.1.0"
    assert (v1 / "stats.json").is_file() and (v1 / "README.md").is_file()  # prepared before publishing
    assert curate(["publish", str(v1), "--name", "cli", "--version", "0.1.0", "--to", str(registry)]) == 0
    assert "identical content" in capsys.readouterr().out
    assert curate(["publish", str(v2), "--name", "cli", "--version", "0.1.0", "--to", str(registry), "--json"]) == 1
    assert "different content" in json.loads(capsys.readouterr().out)["error"]
    assert curate(["publish", str(v2), "--name", "cli", "--version", "0.2.0", "--to", str(registry)]) == 0
    capsys.readouterr()
    assert curate(["versions", f"{registry}/cli", "--json"]) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)["versions"]] == ["0.1.0", "0.2.0"]
    assert curate(["diff", f"{registry}/cli@0.1.0", f"{registry}/cli@0.2.0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["added"], d["removed"], d["changed"]) == ([ids[4]], [ids[0]], [ids[2]])
    assert curate(["verify", f"{registry}/cli@latest"]) == 0
    assert "OK" in capsys.readouterr().out
    root = Path(versions.open_version(f"{registry}/cli@0.2.0").root)
    (root / "manifest.parquet").write_bytes((root / "manifest.parquet").read_bytes() + b"\0")
    assert curate(["verify", f"{registry}/cli@0.2.0", "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert not r["ok"] and r["mismatched"][0]["path"] == "manifest.parquet"
    assert curate(["verify", f"{registry}/cli@9.9.9"]) == 1
    assert "not published" in capsys.readouterr().err


def test_exclusive_create_on_local_fs_never_overwrites(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    path = str(tmp_path / "index.json")
    storage.create_exclusive(fs, path, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(fs, path, b"second")
    assert (tmp_path / "index.json").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]  # no temp file left


def test_dataset_modified_during_publish_is_refused(datasets, tmp_path, registry, monkeypatch):
    v1, _, _ = datasets
    ds = tmp_path / "moving"
    shutil.copytree(v1, ds)
    real_hash = content.hash_dataset

    def hash_then_modify(path, progress=True):
        files = real_hash(path, progress)
        (Path(path) / "dataset.json").write_text((Path(path) / "dataset.json").read_text() + " ")  # a writer touches it
        return files

    monkeypatch.setattr(P, "hash_dataset", hash_then_modify)
    with pytest.raises(refs.PublishError, match="dataset.json: changed while being published"):
        P.publish(ds, "synth", "0.1.0", progress=False)
    assert versions.list_versions("synth") == [] and gc.unfinished_publishes("synth") == []  # its upload was removed


def test_symlinks_and_non_regular_files_are_refused(datasets, registry, tmp_path):
    import os
    import shutil

    v1 = datasets[0]
    copy = tmp_path / "ds"
    shutil.copytree(v1, copy)
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = FAKE-SECRET\n")
    (copy / "card").mkdir(exist_ok=True)
    os.symlink(secret, copy / "card" / "x.png")
    with pytest.raises(refs.PublishError, match=r"card/x.png: is a symbolic link"):
        P.publish(copy, "synth", "9.0.0", progress=False, validate=False)
    (copy / "card" / "x.png").unlink()
    os.mkfifo(copy / "card" / "pipe")
    with pytest.raises(refs.PublishError, match=r"card/pipe: not a regular file"):
        P.publish(copy, "synth", "9.0.0", progress=False, validate=False)
    assert versions.list_versions(f"{registry}/synth") == []


def test_local_index_without_hard_links_is_refused_not_trusted(datasets, registry, monkeypatch):
    import errno
    import os

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(refs.PublishError, match="offers no hard links"):
        P.publish(datasets[0], "synth", "9.1.0", progress=False)
    with pytest.raises(refs.PublishError, match="is not published: no index.json"):
        versions.open_version(f"{registry}/synth@9.1.0")


def test_publish_waits_for_no_writer_it_refuses_while_a_job_holds_the_lock(datasets, registry):
    from curation.store.lock import dataset_lock

    with dataset_lock(datasets[0]):  # a running `curate run` holds it exclusively
        with pytest.raises(refs.PublishError, match="refusing to publish: .* a curate run is writing this dataset"):
            P.publish(datasets[0], "synth", "9.2.0", progress=False)
    assert P.publish(datasets[0], "synth", "9.2.0", progress=False).created_now
