"""Loader sharding/determinism/normalisation, overfitting, resume equality, the HF encoder path
and the CLI end to end on a dataset written by our pipeline."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_torch_thread")

from policy.config import LaMPConfig, TrainConfig
from policy.loader import TripletStream, collate, make_loader, relative_motion
from policy.testing.synthetic import SyntheticDataset

TINY = dict(image_patch=8, d_model=32, n_heads=2, vl_layers=1, motion_layers=1, action_layers=1,
            motion_points=9, motion_horizon=4, text_max_len=24)


@pytest.fixture(scope="module")
def syn():
    return SyntheticDataset(num_shards=4, episodes_per_shard=2, anchors_per_episode=6)


def ids_of(stream, num_workers=0):
    out = []
    for batch in make_loader(stream, 5, num_workers, seed=0):
        out += list(zip(batch["episode_id"], batch["anchor"]))
    return out


def all_ids(ds):
    return sorted((t.episode_id, t.anchor) for t in ds.iter_triplets())


@pytest.mark.parametrize("shards", [4, 1])  # shard-level split, and triplet-level when shards < workers
def test_loader_covers_each_triplet_once_across_ranks_and_workers(shards):
    ds = SyntheticDataset(num_shards=shards, episodes_per_shard=8 // shards, anchors_per_episode=6)
    cfg = LaMPConfig(image_size=(32, 32), **TINY)
    seen = []
    for rank in range(2):
        stream = TripletStream(ds, cfg, seed=3, shuffle_buffer=7, epochs=1, rank=rank, world_size=2)
        seen += ids_of(stream, num_workers=2)
    assert len(seen) == len(ds) == 48
    assert sorted(seen) == all_ids(ds)
    assert max(Counter(seen).values()) == 1


def test_loader_is_deterministic_for_a_seed(syn):
    cfg = LaMPConfig(image_size=(32, 32), **TINY)
    a = ids_of(TripletStream(syn, cfg, seed=1, shuffle_buffer=16, epochs=2), num_workers=2)
    b = ids_of(TripletStream(syn, cfg, seed=1, shuffle_buffer=16, epochs=2), num_workers=2)
    c = ids_of(TripletStream(syn, cfg, seed=2, shuffle_buffer=16, epochs=2), num_workers=2)
    assert a == b and a != c
    assert len(a) == 2 * len(syn)
    # in one process the stream is epoch after epoch: each a permutation, shuffled differently
    d = ids_of(TripletStream(syn, cfg, seed=1, shuffle_buffer=16, epochs=2), num_workers=0)
    assert sorted(d[: len(syn)]) == all_ids(syn) == sorted(d[len(syn):])
    assert d[: len(syn)] != d[len(syn):]


def _assert_same_batch(unpacked, plain, tensors):
    assert list(plain) == list(unpacked)
    for k in plain:
        if k in tensors:
            assert unpacked[k].dtype == plain[k].dtype and unpacked[k].shape == plain[k].shape, k
            assert torch.equal(unpacked[k], plain[k]), k
        else:
            assert unpacked[k] == plain[k], k
    base = unpacked["image"].untyped_storage()
    assert {unpacked[k].untyped_storage().data_ptr() for k in tensors} == {base.data_ptr()}
    assert all((unpacked[k].data_ptr() - base.data_ptr()) % 64 == 0 for k in tensors)


def _tiny_samples(syn, n=3):
    cfg = LaMPConfig(image_size=(32, 32), **TINY)
    samples = [next(iter(TripletStream(syn, cfg, seed=1, shuffle_buffer=1, epochs=1)))] * n
    return [dict(s, image=s["image"] + i, action_valid=s["action_valid"] ^ (i % 2 == 1)) for i, s in enumerate(samples)]


def test_a_packed_batch_is_one_aligned_buffer_with_collates_values(syn):
    import pickle

    from policy.batch_transport import pack

    samples = _tiny_samples(syn)
    plain = collate(samples)
    tensors = [k for k, v in plain.items() if torch.is_tensor(v)]
    assert {"image", "motion", "motion_mask", "action_valid", "state"} <= set(tensors)
    shared = pack(samples)
    assert torch.is_tensor(shared.buffer) and shared.buffer.is_shared() and shared.slot is None
    piped = pickle.loads(pickle.dumps(pack(samples, shared=False), protocol=4))
    assert piped.nbytes == shared.nbytes == shared.buffer.numel()
    for unpacked in (shared.unpack(), piped.unpack()):
        _assert_same_batch(unpacked, plain, tensors)


def test_a_worker_reuses_its_slots_and_never_overwrites_a_batch_the_trainer_holds(syn, monkeypatch):
    """SlotCollate as a worker (worker 0 of 1) runs it: slot after slot of a ring of 2, the slot's
    tensor sent once; a slot the main process has not freed is never written: that batch goes in
    a fresh segment instead."""
    import types

    import policy.batch_transport as bt

    monkeypatch.setattr(bt, "get_worker_info", lambda: types.SimpleNamespace(id=0))
    monkeypatch.setattr(bt, "SLOT_WAIT_S", 0.05)
    samples = _tiny_samples(syn)
    plain = collate(samples)
    tensors = [k for k, v in plain.items() if torch.is_tensor(v)]
    c = bt.SlotCollate(collate, slots=2)
    c.busy = torch.zeros(1, 2, dtype=torch.int32)
    first, second = c(samples), c(samples)
    assert (first.slot, second.slot) == ((0, 0), (0, 1)) and c.busy.tolist() == [[1, 1]]
    assert first.buffer.is_shared() and first.buffer.data_ptr() != second.buffer.data_ptr()
    held = {first.slot: first.buffer, second.slot: second.buffer}
    third = c(samples)  # slot 0 still busy: not touched, a fresh segment
    assert third.slot is None and third.buffer.is_shared() and c.busy.tolist() == [[1, 1]]
    _assert_same_batch(third.unpack(), plain, tensors)
    c.busy[0, 0] = 0  # the main process copied the first batch out
    fourth = c([dict(s, image=s["image"] + 10) for s in samples])
    assert fourth.slot == (0, 0) and fourth.buffer is None  # reused: the main process holds its tensor
    got = fourth.unpack(held[fourth.slot][:fourth.nbytes].clone())
    assert torch.equal(got["image"], plain["image"] + 10) and torch.equal(got["motion"], plain["motion"])


def test_batches_from_workers_equal_in_process_batches_even_when_all_are_kept(syn):
    """make_loader with 2 workers: every triplet equals the 0-worker loader's, with all batches of
    the pass kept at once (a slot reused under a batch still held would change it), the slots'
    tensors sent once per slot, and two passes alike."""
    cfg = LaMPConfig(image_size=(32, 32), **TINY)
    stream = TripletStream(syn, cfg, seed=1, shuffle_buffer=16, epochs=1)
    in_main = {key: (b["motion"][i], b["image"][i], b["action"][i]) for b in make_loader(stream, 2, 0, seed=0)
               for i, key in enumerate(zip(b["episode_id"], b["anchor"]))}
    loader = make_loader(stream, 2, 2, seed=0)
    for _ in range(2):
        kept = list(loader)
        assert len(kept) > 2 * loader.collate.slots  # enough batches that every slot was reused
        assert loader.stats["slot_tensors"] <= 2 * loader.collate.slots and loader.stats["fresh"] == 0
        seen = 0
        for b in kept:
            for i, key in enumerate(zip(b["episode_id"], b["anchor"])):
                motion, image, action = in_main[key]
                assert torch.equal(b["motion"][i], motion) and torch.equal(b["image"][i], image)
                assert torch.equal(b["action"][i], action)
                seen += 1
        assert seen == len(in_main) == len(syn)


def test_loader_normalises_with_dataset_stats(syn):
    cfg = LaMPConfig(image_size=(32, 32), normalization="mean_std", **TINY)
    stream = TripletStream(syn, cfg, seed=0, shuffle_buffer=1, epochs=1)
    tr = next(syn.iter_triplets())
    s = stream.transform(tr)
    st = syn.stats["datasets"]["synthetic"]
    mean, std = np.array(st["actions"]["mean"]), np.array(st["actions"]["std"])
    std = np.where(std < 1e-6, 1.0, std)
    assert np.allclose(s["action"], (tr.action_chunk - mean) / std, atol=1e-5)
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == np.uint8
    # quantile mode maps q01/q99 to -1/+1
    q = TripletStream(syn, LaMPConfig(image_size=(32, 32), normalization="quantile", **TINY), epochs=1).transform
    lo, hi = np.array(st["proprio"]["q01"]), np.array(st["proprio"]["q99"])
    ok = hi - lo > 1e-6
    expect = (tr.proprio - (lo + hi) / 2) / np.where(ok, (hi - lo) / 2, 1.0)
    assert np.allclose(q(tr)["state"], expect, atol=1e-5)


def test_relative_motion_masks():
    K, T = 2, 3
    tracks = np.array([[[10, 10], [12, 10], [14, 10]], [[5, 5], [np.nan, np.nan], [5, 9]]], np.float32)
    visible = np.array([[True, True, True], [True, False, True]])
    depth = np.array([[1.0, 1.1, np.nan], [2.0, 2.0, 2.5]], np.float32)
    valid3 = np.isfinite(depth) & visible
    m = {"tracks_px": tracks, "visible": visible, "in_range": np.array([True, True, False]),
         "depth_track_m": depth, "valid_3d": valid3}
    val, mask, anchor = relative_motion(m, "uvd")
    assert np.allclose(anchor, [[10, 10], [5, 5]])
    assert np.allclose(val[0, 1], [2, 0, 0.1], atol=1e-6) and mask[0, 1].all()
    assert not mask[:, 2].any()  # step 2 is out of range
    assert not mask[1, 1].any() and np.all(val[~mask] == 0)


def tiny_train_config(**kw):
    base = dict(steps=8, batch_size=4, log_every=2, warmup_steps=2, checkpoint_every=1000, shuffle_buffer=8, seed=0)
    return TrainConfig(**{**base, **kw})


def test_overfits_a_tiny_dataset():
    from policy.train import train

    ds = SyntheticDataset(num_shards=1, episodes_per_shard=2, anchors_per_episode=2)
    cfg = LaMPConfig(**TINY)
    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tc = tiny_train_config(phase="action", steps=150, lr=3e-3, warmup_steps=10, log_every=10, shuffle_buffer=1)
        train(ds, d, cfg, tc, progress=False)
        recs = [json.loads(x) for x in open(f"{d}/metrics.jsonl")]
    first, last = recs[0]["loss"], np.mean([r["loss"] for r in recs[-3:]])
    assert last < first / 5, (first, last)


def test_resume_equals_uninterrupted_run(tmp_path, syn):
    from safetensors.torch import load_file

    from policy.train import train

    cfg = LaMPConfig(**TINY)
    tc = tiny_train_config(phase="motion", steps=8)
    full = train(syn, tmp_path / "full", cfg, tc, progress=False)
    part = train(syn, tmp_path / "resumed", cfg, tc, progress=False, stop_after=3)
    assert part["steps"] == 3
    resumed = train(syn, tmp_path / "resumed", cfg, tc, progress=False)
    assert resumed["steps"] == 8
    wa, wb = load_file(f"{full['checkpoint']}/model.safetensors"), load_file(f"{resumed['checkpoint']}/model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert full["state_sha1"] == resumed["state_sha1"]
    la = [json.loads(x)["loss"] for x in open(tmp_path / "full" / "metrics.jsonl")]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert la[-1] == lb[-1]
    # the checkpoint carries the configs and the dataset version
    from safetensors import safe_open

    with safe_open(f"{full['checkpoint']}/model.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["dataset_version"] == "synthetic@0.1.0" and json.loads(meta["policy_config"])["d_model"] == 32


def test_action_phase_from_motion_checkpoint_freezes_motion_expert(tmp_path, syn):
    from safetensors.torch import load_file

    from policy.train import train

    cfg = LaMPConfig(**TINY)
    m = train(syn, tmp_path / "m", cfg, tiny_train_config(phase="motion", steps=4), progress=False)
    a = train(syn, tmp_path / "a", cfg, tiny_train_config(phase="action", steps=4), init=str(tmp_path / "m"), progress=False)
    wm, wa = load_file(f"{m['checkpoint']}/model.safetensors"), load_file(f"{a['checkpoint']}/model.safetensors")
    me = [k for k in wm if k.startswith("motion_expert.")]
    assert me and all(torch.equal(wm[k], wa[k]) for k in me)  # frozen in stage 2
    ae = [k for k in wm if k.startswith("action_expert.")]
    assert any(not torch.equal(wm[k], wa[k]) for k in ae)
    # a `none` variant from the same motion checkpoint
    n = train(syn, tmp_path / "n", LaMPConfig(**{**TINY, "fusion": "none"}), tiny_train_config(phase="action", steps=2),
              init=str(tmp_path / "m"), progress=False)
    assert n["fusion"] == "none"


def test_hf_vl_encoder_with_a_tiny_random_clip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from policy.modeling_lamp import LaMPPolicy
    from cli.bench.policy import synthetic_batch

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "pick", "up", "the", "puck", "move", "block", "left"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(tmp_path)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)).save_pretrained(tmp_path)
    cfg = LaMPConfig(**{**TINY, "vl_backend": "hf", "hf_model": str(tmp_path), "image_size": (32, 32)})
    p = LaMPPolicy(cfg)
    batch = synthetic_batch(cfg, 2)
    batch["language"] = ["pick up the puck", "move block left"]
    vl, pad = p.encode(batch)
    assert vl.shape == (2, 16 + 1 + 16, 32)  # 16 patches + CLS, 16 text positions (max_position_embeddings)
    assert pad[0, 17:].sum() == 16 - 4 and not pad[:, :17].any()
    p.set_phase("action")
    loss, _ = p(batch)
    loss.backward()
    assert all(q.grad is None for q in p.vl_encoder.model.parameters())  # the pretrained VLM stays frozen
    assert p.vl_encoder.vision_proj.weight.grad is not None
    assert p.predict_action_chunk(batch).shape == (2, 10, 4)


def test_cli_train_both_phases_and_eval_on_curated_data(curated_dir, tmp_path, capsys):
    from cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("policy: {d_model: 32, n_heads: 2, vl_layers: 1, motion_layers: 1, action_layers: 1, "
                   "motion_points: 16, motion_horizon: 4}\ntrain: {batch_size: 4, log_every: 1, warmup_steps: 1, shuffle_buffer: 4}\n")
    m, a = tmp_path / "m", tmp_path / "a"
    assert main(["policy", "train", "--data", str(curated_dir), "--phase", "motion", "--config", str(cfg),
                 "--steps", "3", "--out", str(m), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 3 and res["dataset_version"] == "metaworld_sim@1.0.0" and np.isfinite(res["final_loss"])
    assert main(["policy", "train", "--data", str(curated_dir), "--phase", "action", "--config", str(cfg),
                 "--steps", "3", "--out", str(a), "--init", str(m), "--json"]) == 0
    capsys.readouterr()
    recs = [json.loads(x) for x in open(a / "metrics.jsonl")]
    assert len(recs) == 3 and recs[0]["gate"] == pytest.approx(0.5, abs=0.01)
    # MuJoCo's OSMesa renderer cannot share a process with TensorFlow (imported above by `curate run`):
    # evaluate in a fresh process, as a user would.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cli.main", "policy", "eval", "--checkpoint", str(a),
                           "--task", "drawer-open-v3", "--episodes", "1", "--max-steps", "12", "--threads", "1",
                           "--strips", str(tmp_path / "strips"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads(proc.stdout)
    row = ev["tasks"][0]
    assert row["episodes"] == 1 and row["successes"] in (0, 1) and 0 <= row["ci95_low"] <= row["ci95_high"] <= 1
    assert (tmp_path / "strips" / "drawer-open-v3.png").stat().st_size > 1000
    assert ev["image_size"] == [64, 64]


def test_train_from_a_published_version_records_its_reference(curated_dir, tmp_path, capsys):
    """`--data URL/NAME@V`: the trainer reads the published copy and the checkpoint names that
    reference (not the source dataset's own name), so a policy can be traced to its data."""
    from cli.main import main

    reg = f"file://{tmp_path / 'registry'}"
    assert main(["publish", str(curated_dir), "--name", "mw-tiny", "--version", "2.0.0", "--to", reg, "--json"]) == 0
    capsys.readouterr()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("policy: {d_model: 16, n_heads: 2, vl_layers: 1, motion_layers: 1, action_layers: 1, "
                   "motion_points: 16, motion_horizon: 4}\ntrain: {batch_size: 2, log_every: 1, warmup_steps: 1, shuffle_buffer: 4}\n")
    ref = f"{reg}/mw-tiny@2.0.0"
    assert main(["policy", "train", "--data", ref, "--phase", "motion", "--config", str(cfg), "--steps", "2",
                 "--out", str(tmp_path / "m"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset_version"] == ref
    state = json.loads(next((tmp_path / "m" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["dataset_version"] == ref


def test_wilson_interval():
    from policy.evaluate import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)


def test_curves_png(tmp_path):
    from policy.train import plot_curves, read_metrics

    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": scale / s}) + "\n" for s in range(1, 20)))
    assert read_metrics(tmp_path / "a")[2] == {"step": 3, "loss": pytest.approx(1 / 3)}
    png = plot_curves({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "c.png")
    from PIL import Image

    assert Image.open(png).size == (840, 480)


def test_loader_on_the_real_reader_covers_each_triplet_once(curated_dir):
    from curation import open_dataset
    from policy.train import config_for_data

    ds = open_dataset(str(curated_dir))
    cfg = config_for_data(ds, LaMPConfig(**{**TINY, "motion_points": 16}))
    assert cfg.image_size == (64, 64) and cfg.action_dim == 4 and cfg.state_dim == 4
    seen = []
    for rank in range(2):  # 2 ranks x 2 workers over the dataset's shards, opened by path in each worker
        stream = TripletStream(str(curated_dir), cfg, seed=0, shuffle_buffer=5, epochs=1, rank=rank, world_size=2)
        seen += ids_of(stream, num_workers=2)
    expected = sorted((t.episode_id, t.anchor) for t in ds.iter_triplets())
    assert len(expected) == ds.num_triplets() > 0
    assert sorted(seen) == expected
    batch = next(iter(make_loader(TripletStream(str(curated_dir), cfg, seed=0, epochs=1), 4)))
    assert batch["motion"].shape == (4, 16, 4, 3) and batch["image"].shape == (4, 3, 64, 64)
    assert batch["motion_mask"].any() and torch.isfinite(batch["motion"]).all()
    assert batch["language"][0] in ("pick up the puck and place it at the goal", "pull the drawer open")


def _ddp_rank(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from policy.train import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ds = SyntheticDataset(num_shards=4, episodes_per_shard=2, anchors_per_episode=6)
        res = train(ds, out, LaMPConfig(**TINY), tiny_train_config(phase="motion", steps=3), progress=False)
        torch.save({"result": res}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_training_two_ranks_keeps_replicas_identical(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt")["result"]
    r1 = torch.load(out / "rank1.pt")["result"]
    assert (r0["rank"], r0["world_size"], r1["rank"]) == (0, 2, 1)
    assert r0["final_loss"] != r1["final_loss"]  # each rank saw its own shards and noise ...
    assert r0["state_sha1"] == r1["state_sha1"]  # ... and gradient averaging kept the replicas identical
    w = load_file(f"{r0['checkpoint']}/model.safetensors")  # ... yet one model: written once, by rank 0
    assert (out / "checkpoints" / "LAST").read_text().strip() == "step-0000003"
    assert len([x for x in open(out / "metrics.jsonl")]) == 2  # log_every 2: steps 2 and 3, rank 0 only
    assert any(k.startswith("motion_expert.") for k in w)
