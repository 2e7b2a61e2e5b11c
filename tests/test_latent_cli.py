"""`curate latent train / label` through the project's RLDS reader on the shared Bridge episodes."""

from __future__ import annotations

import json

import pytest

from cli.main import main


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_resume_label_on_bridge(bridge_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["latent", "train", "--source", str(bridge_dir), "--episodes", "0:4", "--out", str(run),
            "--batch", "4", "--gap", "1", "--checkpoint-every", "1", "--json"]
    rc, out, err = _run(capsys, base + ["--steps", "2"])
    assert rc == 0, err
    first = json.loads(out)
    assert (first["steps"], first["resumed_from"], first["episodes"], first["pairs"]) == (2, 0, 4, 36)  # 4 x (10 - 1)
    rc, out, err = _run(capsys, base + ["--steps", "3"])
    assert rc == 0, err
    second = json.loads(out)
    assert (second["resumed_from"], second["steps"], second["steps_run"]) == (2, 3, 1)
    assert (run / "model.safetensors").is_file()

    rc, out, err = _run(capsys, ["latent", "label", "--checkpoint", str(run), "--source", str(bridge_dir),
                                 "--episodes", "0:2", "--json"])
    assert rc == 0, err
    lab = json.loads(out)
    assert lab["gap"] == 1 and lab["pad_token"] == -1 and len(lab["episodes"]) == 2
    for ep in lab["episodes"]:
        assert ep["steps"] == 10 and ep["anchors"] == list(range(10))
        assert ep["valid"] == [True] * 9 + [False]  # the last step has no frame t + 1
        assert ep["tokens"][-1] == [-1, -1, -1, -1]
        assert all(0 <= v < 16 for tok in ep["tokens"][:-1] for v in tok)  # the small preset's 16 codes
    assert 1 <= lab["summary"]["codes_used"] <= 16

    # a rerun with another gap is refused with a message naming the checkpoint and the setting
    rc, out, err = _run(capsys, base[:-1] + ["--steps", "4", "--gap", "2"])
    assert rc == 2 and "gap" in err and "step-00000003" in err


def test_bad_inputs_are_clear_errors(bridge_dir, tmp_path, capsys):
    rc, _, err = _run(capsys, ["latent", "train", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert rc == 2 and "nope" in err
    rc, _, err = _run(capsys, ["latent", "train", "--source", str(bridge_dir), "--episodes", "5", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--episodes" in err
    rc, _, err = _run(capsys, ["latent", "label", "--checkpoint", str(tmp_path / "missing"), "--source", str(bridge_dir)])
    assert rc == 2 and "missing" in err


def test_bench_run_dir_depends_on_config_and_resume_settings_not_steps(tmp_path):
    from cli.bench.latent import _run_dir
    from labelers.latent.config import get_config
    from labelers.latent.train import TrainSettings

    small = get_config("small")
    a = _run_dir(tmp_path, "sim", small, TrainSettings(steps=100, gap=8))
    assert a == _run_dir(tmp_path, "sim", small, TrainSettings(steps=1500, gap=8))  # more steps resume
    assert a.name.startswith("run-sim-gap8-seed0-")
    assert a != _run_dir(tmp_path, "sim", get_config("small", pool="attention"), TrainSettings(steps=100, gap=8))
    assert a != _run_dir(tmp_path, "sim", small, TrainSettings(steps=100, gap=8, lr=1e-3))


def test_bench_mean_row_averages_tasks_and_skips_dimensions_that_do_not_vary():
    from cli.bench.latent import _mean_row

    keys = ("usage", "perplexity", "psnr_recon", "psnr_copy", "psnr_moving_recon", "psnr_moving_copy",
            "probe_r2_linear", "probe_r2_mlp")
    rows = [
        {"data": "sim a", "model": "trained", "pairs": 10, **{k: 1.0 for k in keys},
         "r2_linear_per_dim": "0.50 - 1.00", "r2_mlp_per_dim": "- - 0.20"},
        {"data": "sim b", "model": "trained", "pairs": 20, **{k: 3.0 for k in keys},
         "r2_linear_per_dim": "0.70 - 0.00", "r2_mlp_per_dim": "0.10 - 0.40"},
        {"data": "sim a", "model": "random", "pairs": 10, **{k: -5.0 for k in keys},
         "r2_linear_per_dim": "0 0 0", "r2_mlp_per_dim": "0 0 0"},
        {"data": "bridge", "model": "trained", "pairs": 5, **{k: 9.0 for k in keys},
         "r2_linear_per_dim": "9 9 9", "r2_mlp_per_dim": "9 9 9"},
    ]
    m = _mean_row(rows, "trained", 2)
    assert m["pairs"] == 30 and m["probe_r2_mlp"] == 2.0 and m["usage"] == 2.0
    assert m["r2_linear_per_dim"] == "0.60 - 0.50" and m["r2_mlp_per_dim"] == "0.10 - 0.30"


def test_bench_set_overrides_preset_fields_with_their_types(tmp_path, capsys):
    from cli.bench.latent import _run_dir
    from labelers.latent.config import get_config, parse_overrides
    from labelers.latent.train import TrainSettings

    got = parse_overrides(["moving_weight=10", "num_tokens=8", "center_latents=false", "pool=attention"])
    assert got == {"moving_weight": 10.0, "num_tokens": 8, "center_latents": False, "pool": "attention"}
    assert type(got["moving_weight"]) is float and type(got["num_tokens"]) is int
    config = get_config("small", **parse_overrides(["moving_weight=10"]))
    assert (config.moving_weight, config.codebook_size, config.pool) == (10.0, 16, "flatten")
    settings = TrainSettings(steps=100, gap=8)
    assert _run_dir(tmp_path, "sim", config, settings) != _run_dir(tmp_path, "sim", get_config("small"), settings)
    for bad, match in (("moving_weight", "KEY=VALUE"), ("colour=1", "KEY=VALUE"), ("num_tokens=two", "takes a int"),
                       ("center_latents=maybe", "takes a bool")):
        with pytest.raises(ValueError, match=match):
            parse_overrides([bad])
    rc, _, err = _run(capsys, ["bench", "latent", "--workdir", str(tmp_path), "--set", "moving_weight=-1", "--bridge", ""])
    assert rc == 1 and "moving_weight must be >= 0" in err  # the config's own check, before any simulation
    rc, _, err = _run(capsys, ["bench", "latent", "--workdir", str(tmp_path), "--checkpoint", str(tmp_path),
                               "--set", "moving_weight=5", "--bridge", ""])
    assert rc == 1 and "does not apply to --checkpoint" in err
    assert not any(tmp_path.iterdir())  # neither simulated nor trained anything
