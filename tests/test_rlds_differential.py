"""Open-X read exactly as TFDS reads it.

For every feature kind the Open-X datasets use (tests/rlds_formats.py: uint8 Images as PNG,
as declared JPEG and as undeclared JPEG bytes; float32 Images; uint16 PNG depth; float and
int depth Tensors; Text and tf.string language; int32 code-point language; ZLIB-compressed
tf.string tensors; nested dicts and keys containing '/'; episode metadata; cameras of
different sizes; BGR cameras), a small dataset is written with TFDS's own writer and
features, then read through our reader, `curate inspect` and `curate run`, and compared with
what `builder.as_dataset()` decodes: bit for bit, JPEG included (the reader runs TFDS's own
decoders; `curate run` stores JPEG and PNG cameras as the source's own bytes and decodes them the
same way; depth is stored in millimetres, so it matches within the contract's 0.5 mm). The values
we wrote are a second oracle where the encoding is lossless.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cli.main import main as curate
from curation.sources.openx.registry import LANG_CODEPOINTS, REGISTRY
from curation.sources.rlds import RLDSSource
from curation.sources.rlds_write import write_rlds_dataset
from curation.store.encodings import within_bound
from schemas.dataset import spec_for
from rlds_formats import FORMATS, make_episode, zlib_floats

N_EPISODES = 2
T = 10  # >= the job's default min_steps (8), so `curate run` keeps every episode
FAST = ["labels.grid=6", "labels.horizon=6", "labels.stride=4", "curation.card=false"]
KUKA_POSE, KUKA_BOUNDS = "observation/clip_function_input/base_pose_tool_reached", "observation/clip_function_input/workspace_bounds"


def _overrides(name: str, i: int) -> dict:
    """Values a format needs to be realistic: kuka's ZLIB proprio and placeholder language,
    language_table's code points."""
    rng = np.random.default_rng(100 + i)
    if name == "kuka":
        return {"observation/natural_language_instruction": ["pick anything"] * T,
                KUKA_POSE: [zlib_floats(rng.normal(size=7)) for _ in range(T)],
                KUKA_BOUNDS: [zlib_floats(rng.normal(size=9)) for _ in range(T)],
                "observation/gripper_closed": [zlib_floats([t % 2]) for t in range(T)]}
    if name == "language_table":
        text = ["push the red star to the café corner", "slide the blue cube left"][i % 2]
        codes = np.zeros((T, 512), np.int32)
        codes[:, : len(text)] = [ord(ch) for ch in text]
        return {"observation/instruction": codes}
    return {}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> (dataset directory, the episodes written); each format written once per module."""
    root = tmp_path_factory.mktemp("openx-formats")
    made: dict = {}

    def get(name: str):
        if name not in made:
            features, _ = FORMATS[name]
            episodes = [make_episode(features, T, seed=i, overrides=_overrides(name, i)) for i in range(N_EPISODES)]
            made[name] = (write_rlds_dataset(root, name, "0.1.0", features, {"train": episodes}), episodes)
        return made[name]

    return get


# ------------------------------------------------------------------------------ the TFDS oracle


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def tfds_episodes(path) -> list[tuple[dict, dict]]:
    """(steps {path: T x ...}, episode_metadata {path: value}) of every episode, as
    `builder.as_dataset()` decodes them."""
    builder = tfds.builder_from_directory(str(path))
    out = []
    for ep in tfds.as_numpy(builder.as_dataset(split="train")):
        steps = [_flat(s) for s in ep["steps"]]
        out.append(({k: np.stack([s[k] for s in steps]) for k in steps[0]}, _flat(ep.get("episode_metadata", {}))))
    return out


def _numbers(steps: dict, keys) -> np.ndarray:
    """The keys' values as TFDS gives them, T x D float32 (ZLIB float32 bytes unpacked)."""
    parts = []
    for key in keys:
        a = steps[key]
        if a.dtype.kind in "OS":  # kuka: ZLIB-compressed little-endian float32 in a tf.string tensor
            a = np.stack([np.frombuffer(zlib.decompress(b), "<f4") for b in a])
        parts.append(a.reshape(len(a), -1).astype(np.float32))
    return np.concatenate(parts, axis=1)


def expected(cfg, steps: dict) -> dict:
    """What our episode must hold, computed from TFDS's decoded steps and the registry entry."""
    frames = {}
    for cam in cfg.cameras:
        img = steps[f"observation/{cam}"]
        frames[cam] = img[..., ::-1] if cam in cfg.bgr_cameras else img  # stored BGR: flipped to RGB
    depth = {}
    for d in cfg.depth:
        raw = steps[d.key]
        raw = raw[..., 0] if raw.ndim == 4 else raw
        m = raw.astype(np.float32) * np.float32(d.scale_to_m)
        if d.zero_is_invalid:
            m[raw == 0] = np.nan
        depth[d.camera] = m
    if cfg.language_kind == LANG_CODEPOINTS:
        language = "".join(chr(c) for c in steps[cfg.language_key][0] if c)
    else:
        language = steps[cfg.language_key][0].decode() if cfg.language_key else ""
    return {"frames": frames, "depth": depth, "actions": _numbers(steps, cfg.action_keys),
            "proprio": _numbers(steps, cfg.proprio_keys) if cfg.proprio_keys else None, "language": language}


# ------------------------------------------------------------------------------ reader and inspect


def _assert_written_values(name, cfg, ep, written_ep):
    """Lossless encodings give back exactly what was written (a second oracle beside TFDS)."""
    features = FORMATS[name][0]["steps"].feature["observation"]
    obs = written_ep["steps"]["observation"]
    for cam in cfg.cameras:
        if features[cam].encoding_format == "png":
            stored = np.asarray(obs[cam])
            np.testing.assert_array_equal(ep.frames[cam], stored[..., ::-1] if cam in cfg.bgr_cameras else stored)
    for d in cfg.depth:
        raw = np.asarray(obs[d.key.removeprefix("observation/")])
        raw = raw[..., 0] if raw.ndim == 4 else raw
        got = ep.depth_m[d.camera]
        assert np.array_equal(np.isnan(got), raw == 0), d.key
        np.testing.assert_array_equal(got[raw != 0], raw[raw != 0].astype(np.float32) * np.float32(d.scale_to_m))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_reader_and_inspect_equal_tfds(name, written, capsys):
    path, episodes = written(name)
    src = RLDSSource(str(path))
    cfg = src.config
    assert not cfg.inferred and set(cfg.cameras) >= {REGISTRY[name].primary_camera}
    ours = list(src.read())
    refs = tfds_episodes(path)
    assert len(ours) == len(refs) == N_EPISODES
    for ep, (steps, _), written_ep in zip(ours, refs, episodes):
        want = expected(cfg, steps)
        assert list(ep.frames) == list(cfg.cameras)
        for cam, frames in want["frames"].items():
            assert ep.frames[cam].dtype == np.uint8
            np.testing.assert_array_equal(ep.frames[cam], frames, err_msg=f"{name} camera {cam}")
        assert sorted(ep.depth_m) == sorted(want["depth"])
        for cam, depth in want["depth"].items():
            np.testing.assert_array_equal(ep.depth_m[cam], depth, err_msg=f"{name} depth of {cam}")  # NaN == NaN
        np.testing.assert_array_equal(ep.actions, want["actions"])
        if want["proprio"] is None:
            assert ep.proprio is None
        else:
            np.testing.assert_array_equal(ep.proprio, want["proprio"])
        assert ep.language == want["language"]
        _assert_written_values(name, cfg, ep, written_ep)

    assert curate(["inspect", str(path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["episodes"] == N_EPISODES and r["bad_episodes"] == [] and r["steps"] == N_EPISODES * T
    steps0 = refs[0][0]
    assert {c["name"]: c["shape"] for c in r["cameras"]} == {
        cam: list(steps0[f"observation/{cam}"].shape[1:]) for cam in cfg.cameras}
    valid = {cam: np.mean([np.isfinite(expected(cfg, s)["depth"][cam]).mean() for s, _ in refs]) for cam in want["depth"]}
    assert {d["camera"]: d["valid_fraction"] for d in r["depth"]} == pytest.approx(valid)


def test_float32_image_depth_is_the_metres_tfds_decodes(written):
    """berkeley_autolab_ur5: image_with_depth is an Image of float32, stored as a 4-channel uint8
    PNG of the float32 bytes. Reading one byte channel of the PNG gave 51..125 "metres"."""
    path, episodes = written("berkeley_autolab_ur5")
    ep, (steps, _) = next(iter(RLDSSource(str(path)).read())), tfds_episodes(path)[0]
    depth, stored = ep.depth_m["image"], episodes[0]["steps"]["observation"]["image_with_depth"][..., 0]
    assert steps["observation/image_with_depth"].dtype == np.float32  # what TFDS itself decodes
    assert np.nanmin(depth) >= 0.3 and np.nanmax(depth) < 2.0  # the metres written, not PNG bytes
    np.testing.assert_array_equal(depth[stored > 0], stored[stored > 0])


def test_episode_metadata_equals_tfds(tmp_path):
    """Episode-level metadata (the simulator's calibration, success, body names) reaches the
    episode as TFDS decodes it."""
    from curation.sources.metaworld.rollout import rlds_features

    S, B = 8, 3
    rng = np.random.default_rng(0)
    steps = {"observation": {"image": np.stack([rng.integers(0, 255, (S, S, 3), dtype=np.uint8)] * 4),
                             "depth": rng.uniform(0.5, 2, (4, S, S)).astype(np.float32),
                             "segmentation": rng.integers(0, B, (4, S, S)).astype(np.int32),
                             "state": np.zeros((4, 4), np.float32)},
             "action": np.zeros((4, 4), np.float32), "language_instruction": ["reach"] * 4,
             "reward": np.zeros(4, np.float32), "discount": np.ones(4, np.float32), "is_first": np.arange(4) == 0,
             "is_last": np.arange(4) == 3, "is_terminal": np.zeros(4, bool),
             "ground_truth": {"body_pos": rng.normal(size=(4, B, 3)).astype(np.float32),
                              "body_quat": np.tile(np.float32([1, 0, 0, 0]), (4, B, 1))}}
    meta = {"file_path": "sim://reach/0", "task": "reach-v3", "seed": 3, "success": True, "camera_name": "fixed",
            "intrinsics": np.float32([9.5, 9.25, 4.0, 3.5]), "cam_to_world": rng.normal(size=(4, 4)).astype(np.float32),
            "num_bodies": np.int32(B), "body_names": "a\nb\nc", "control_hz": np.float32(80.0)}
    path = write_rlds_dataset(tmp_path, "metaworld_sim", "1.0.0", rlds_features(S, B),
                              {"train": [{"steps": steps, "episode_metadata": meta}]})
    (ep,) = list(RLDSSource(str(path)).read())
    (_, md), = tfds_episodes(path)
    k = ep.intrinsics["image"]
    assert [k.fx, k.fy, k.cx, k.cy] == md["intrinsics"].tolist()
    np.testing.assert_array_equal(ep.extrinsics["image"], md["cam_to_world"].astype(np.float64))
    assert ep.success is bool(md["success"]) and ep.control_hz == float(md["control_hz"])
    assert ep.ground_truth.body_names == tuple(md["body_names"].decode().split("\n"))


def test_every_registry_entry_with_depth_or_odd_cameras_is_covered():
    """Every Open-X entry with depth, BGR cameras, code-point or ZLIB fields has a format here."""
    odd = {n for n, c in REGISTRY.items() if c.depth or c.bgr_cameras or c.language_kind == LANG_CODEPOINTS
           or c.standardize is not None}
    odd -= {"metaworld_sim"}  # our simulator (test_episode_metadata_equals_tfds, tests/test_simulate.py)
    assert odd <= set(FORMATS), sorted(odd - set(FORMATS))
    # The entries whose cameras differ in size are in the table too.
    sizes = {n for n, (f, _) in FORMATS.items()
             if len({f["steps"].feature["observation"][c].shape[:2] for c in REGISTRY[n].cameras
                     if c in f["steps"].feature["observation"].keys()}) > 1}
    assert sizes == {"taco_play", "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
                     "cmu_franka_exploration_dataset_converted_externally_to_rlds", "conq_hose_manipulation"}


# ------------------------------------------------------------------------------ curate run


def _run(path, out, extra=()):
    sets = [a for s in list(FAST) + list(extra) for a in ("--set", s)]
    assert curate(["run", str(path), "--out", str(out), "--no-progress", "--json", *sets]) == 0


@pytest.mark.parametrize("name", ["taco_play", "berkeley_autolab_ur5", "kuka",
                                  "maniskill_dataset_converted_externally_to_rlds"])
def test_curate_run_writes_what_tfds_decodes(name, written, tmp_path, capsys):
    from curation import open_dataset
    from curation.store.validate import validate_dataset

    path, _ = written(name)
    _run(path, tmp_path / "ds")
    s = json.loads(capsys.readouterr().out)
    assert s["counts"]["written"] == N_EPISODES and s["counts"]["quarantined"] == 0 and s["counts"]["filtered"] == 0
    assert validate_dataset(tmp_path / "ds") == []
    cfg = RLDSSource(str(path)).config
    ds = open_dataset(str(tmp_path / "ds"))
    refs = tfds_episodes(path)
    for row in ds.manifest.to_pylist():
        want = expected(cfg, refs[row["episode_index"]][0])
        arrays = ds.episode_arrays(row["episode_id"])
        assert sorted(row["cameras"]) == sorted(cfg.cameras)
        assert row["camera_sizes"] == [list(want["frames"][c].shape[1:3]) for c in row["cameras"]]
        for cam in row["cameras"]:
            np.testing.assert_array_equal(arrays[f"frames/{cam}"], want["frames"][cam], err_msg=cam)
        for cam, depth in want["depth"].items():  # stored in millimetres: within the contract's bound, NaN kept
            got, bound = arrays[f"depth_m/{cam}"], spec_for(f"depth_m/{cam}").max_abs_error
            assert within_bound(got, depth, bound).all(), cam
        np.testing.assert_array_equal(arrays["actions"], want["actions"])
        assert row["language"] == want["language"]
        assert row["language_informative"] is REGISTRY[name].language_informative


def test_placeholder_language_is_kept_flagged_and_dropped_on_request(written, tmp_path, capsys):
    path, _ = written("kuka")
    _run(path, tmp_path / "kept")
    kept = json.loads(capsys.readouterr().out)["counts"]
    assert kept["written"] == N_EPISODES and kept["filtered"] == 0  # by default: kept, flagged in the manifest
    _run(path, tmp_path / "dropped", ["curation.filters.drop_uninformative_language=true"])
    dropped = json.loads(capsys.readouterr().out)["counts"]
    assert dropped["written"] == 0 and dropped["filtered_by_reason"] == {"no_language": N_EPISODES}
