"""Check a whole job config before any work: `check_job(cfg)` raises ConfigError.

A bad value must stop `curate run` before it creates the dataset directory, with one
line that names the key, the value and what would be accepted; otherwise a typo in
`--set labels.tracker=...` becomes a job that fails every unit and leaves a finished,
empty dataset behind. What is checked, in order:

    types        every field of every section against its dataclass annotation
                 (the label, filter and dedup configs are owned by their modules; their
                 dataclasses are read here, not copied)
    ranges       the RANGES table below
    backends     depth, tracker and flow names against their registries; their
                 parameters against the backend's constructor; backends that hold no
                 model are built once, so their own value checks run now
    engine       Ray address form, Beam pipeline options and runner name
    source       the dataset opens, the split exists, the episode range and the
                 labelled camera are in it

Nothing here writes anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from pipelines.config import RUNNERS, ConfigError, CurationConfig, EngineConfig, JobConfig, SourceConfig, WriterConfig

# (low, high) inclusive bounds of numeric fields; None = unbounded on that side. The bounds
# are the ones the owning code needs to work: counts and sizes of at least one, shares in
# [0, 1], a field of view a pinhole camera can have (labelers.sceneflow refuses others),
# and label_actors -1 meaning "choose automatically" (pipelines.engines.ray).
RANGES: dict[str, tuple[Optional[float], Optional[float]]] = {
    "source.start": (0, None), "source.stop": (1, None),
    "labels.grid": (1, None), "labels.horizon": (1, None), "labels.stride": (1, None),
    "labels.flow_gap": (1, None), "labels.fov_deg": (1, 179), "labels.edge_rel": (0, None),
    "labels.max_depth_jump_rel": (0, None), "labels.latent_gap": (1, None),
    "curation.filters.min_steps": (0, None), "curation.filters.static_motion_px": (0, None),
    "curation.filters.static_quantile": (0, 1), "curation.filters.static_pixel_delta": (0, 255),
    "curation.filters.static_changed_fraction": (0, 1), "curation.filters.min_track_visibility": (0, 1),
    "curation.filters.max_abs_action": (0, None), "curation.filters.blank_std": (0, None),
    "curation.filters.blank_frame_fraction": (0, 1),
    "curation.dedup.max_hamming": (0, None), "curation.dedup.start_frames": (1, None),
    "curation.dedup.max_action_distance": (0, None),
    "writer.shard_episodes": (1, None), "writer.frames_per_chunk": (1, None),
    "engine.workers": (1, None), "engine.label_actors": (-1, None), "engine.max_retries": (0, None),
    "engine.threads_per_worker": (1, None),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "engine.runner": RUNNERS,
    "writer.compression": ("none", "zstd"),
}
# Ray's ray.init(address=...) forms: "auto", "local", HOST:PORT (the GCS) and ray://HOST:PORT
# (Ray Client); IPv6 hosts in brackets.
RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5}))$")
MAX_PORT = 65535


def check_job(cfg: JobConfig) -> Any:
    """Every check above; returns the opened source (cached for the job's planning)."""
    check_values(cfg)
    check_backends(cfg.labels)
    check_engine(cfg.engine)
    return check_source(cfg)


# ---------------------------------------------------------------- types and ranges


def check_values(cfg: JobConfig) -> None:
    """Types, ranges and choices of every section (no I/O)."""
    from curation.selection.dedup import DedupConfig
    from curation.selection.filters import REASONS, FilterConfig
    from labelers.episode_labeler import LabelConfig

    for prefix, cls, section in (("source", SourceConfig, cfg.source), ("writer", WriterConfig, cfg.writer),
                                 ("engine", EngineConfig, cfg.engine), ("curation", CurationConfig, cfg.curation)):
        check_fields(prefix, cls, dataclasses.asdict(section))
    check_type("seed", cfg.seed, int)
    check_fields("labels", LabelConfig, cfg.labels)
    if cfg.curation.filters is not None:
        check_fields("curation.filters", FilterConfig, cfg.curation.filters)
        for name in cfg.curation.filters.get("disabled") or ():
            if name not in REASONS:
                raise ConfigError("curation.filters.disabled", name, f"unknown filter; choose from {', '.join(REASONS)}")
    if cfg.curation.dedup is not None:
        check_fields("curation.dedup", DedupConfig, cfg.curation.dedup)
    for key, value in (("engine.num_gpus", cfg.engine.num_gpus), ("engine.label_resources", cfg.engine.label_resources)):
        for name, amount in value.items():
            check_type(f"{key}.{name}", amount, float)
            check_range(f"{key}.{name}", amount, (0, None))
    unknown_stages = sorted(set(cfg.engine.num_gpus) - {"label"})
    if unknown_stages:
        raise ConfigError(f"engine.num_gpus.{unknown_stages[0]}", cfg.engine.num_gpus[unknown_stages[0]],
                          "unknown model stage; choose from label")
    start, stop = cfg.source.start, cfg.source.stop
    if start is not None and stop is not None and start >= stop:
        raise ConfigError("source.start", start, f"must be below source.stop ({stop})")


def check_fields(prefix: str, cls: type, values: dict) -> None:
    """Each key of `values` is a field of dataclass `cls` with a value of its type, in range."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{prefix}.{key}", value, f"unknown key; choose from {', '.join(names)}")
        check_field(f"{prefix}.{key}", value, hints[key])


def check_field(key: str, value: Any, hint: Any) -> None:
    check_type(key, value, hint)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(key, value, f"choose one of {', '.join(CHOICES[key])}")
    if key in RANGES and value is not None:
        check_range(key, value, RANGES[key])


def check_type(key: str, value: Any, hint: Any) -> None:
    """`value` fits the annotation `hint` (Optional, bool, int, float, str, dict, list, tuple)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
    base = typing.get_origin(hint) or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, (list, tuple)),
        tuple: lambda v: isinstance(v, (list, tuple)),
    }.get(base)
    if ok is not None and not ok(value):
        raise ConfigError(key, value, f"expected {_TYPE_NAMES[base]}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a mapping", list: "a list", tuple: "a list"}


def check_range(key: str, value: float, bounds: tuple[Optional[float], Optional[float]]) -> None:
    lo, hi = bounds
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        want = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ConfigError(key, value, f"out of range; expected a number {want}")


# ---------------------------------------------------------------- label backends


def check_backends(labels: dict) -> None:
    """Backend names against their registries, parameters against the constructors."""
    from labelers.depth import DEPTH_BACKENDS
    from labelers.flow import FLOW_BACKENDS
    from labelers.episode_labeler import LabelConfig
    from labelers.tracking.registry import TRACKER_NAMES, tracker_class

    c = LabelConfig.from_dict(labels) if labels else LabelConfig()
    for key, name, params, registry, lookup in (
        ("depth", c.depth, c.depth_params, sorted(DEPTH_BACKENDS), DEPTH_BACKENDS.get),
        ("tracker", c.tracker, c.tracker_params, TRACKER_NAMES, tracker_class),
        ("flow", c.flow, c.flow_params, sorted(FLOW_BACKENDS), FLOW_BACKENDS.get),
    ):
        if key == "flow" and not name:
            continue  # no motion images
        factory = lookup(name) if name in registry else None
        if factory is None:
            raise ConfigError(f"labels.{key}", name, f"unknown {key} backend; choose one of {', '.join(registry)}")
        check_params(f"labels.{key}_params", name, factory, params)
        if not getattr(factory, "loads_model", False):
            try:  # no model to load: building it is cheap and runs the backend's own checks
                factory(**params)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"labels.{key}_params", params, f"{key} backend {name!r} refuses them: {exc}") from None
    if c.latent_checkpoint and "://" not in c.latent_checkpoint and not Path(c.latent_checkpoint).exists():
        raise ConfigError("labels.latent_checkpoint", c.latent_checkpoint, "no such file or directory")


def check_params(key: str, backend: str, factory: Callable, params: dict) -> None:
    """Parameter names and types against the backend constructor's signature."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    sig = inspect.signature(target)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    named = [n for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: check names only
        hints = {}
    for name, value in params.items():
        if name not in named:
            if accepts_any:
                continue
            raise ConfigError(f"{key}.{name}", value, f"unknown parameter of {backend!r}; choose from {', '.join(named)}")
        default = sig.parameters[name].default
        hint = hints.get(name)
        if hint is None and default is not inspect.Parameter.empty and default is not None:
            hint = type(default)
        if hint is not None:
            check_type(f"{key}.{name}", value, hint)


# ---------------------------------------------------------------- engine options


def check_engine(engine: EngineConfig) -> None:
    if engine.address is not None:
        m = RAY_ADDRESS.match(str(engine.address))
        if not m or (m.group(4) and not 1 <= int(m.group(4)) <= MAX_PORT):
            raise ConfigError("engine.address", engine.address,
                              "not a Ray address; expected HOST:PORT, ray://HOST:PORT, auto or local")
    if engine.runner == "beam" or engine.beam_options:
        check_beam_options(list(engine.beam_options or []))


def check_beam_options(flags: list[str]) -> None:
    """Every flag is one Beam's PipelineOptions knows, its value parses, the runner exists."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    for flag in flags:
        if not isinstance(flag, str) or not flag.startswith("--"):
            raise ConfigError("engine.beam_options", flag, "expected --OPTION=VALUE")
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)  # its "Discarding unparseable args" warning: the error below says it
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # argparse prints its usage there before exiting
            opts = PipelineOptions(flags)
            every = opts.get_all_options(retain_unknown_options=True)
            known = opts.get_all_options()
    except SystemExit:  # argparse's way to say a value does not parse
        why = (said.getvalue().strip().splitlines() or ["a value does not parse"])[-1].split("error: ", 1)[-1]
        raise ConfigError("engine.beam_options", " ".join(flags), f"Beam's PipelineOptions refuse them: {why}") from None
    finally:
        beam_log.setLevel(level)
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise ConfigError("engine.beam_options", f"--{unknown[0]}",
                          "not a Beam pipeline option (python -m apache_beam.examples.wordcount --help lists them)")
    runner = opts.view_as(StandardOptions).runner
    names = {n.lower() for n in StandardOptions.KNOWN_RUNNER_NAMES}
    if runner and "." not in runner and runner.lower() not in names and f"{runner.lower()}runner" not in names:
        raise ConfigError("engine.beam_options", f"--runner={runner}",
                          f"unknown Beam runner; choose one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}")


# ---------------------------------------------------------------- the source


def check_source(cfg: JobConfig):
    """The source opens, has the split and the episode range, and the labelled camera."""
    from pipelines.stages import open_source
    from schemas.episode import EpisodeError

    if not cfg.source.path:
        raise ConfigError("source.path", cfg.source.path, "expected an RLDS dataset directory <root>/<name>/<version>")
    try:
        src = open_source(cfg.source.path, cfg.source.split)
    except EpisodeError as exc:
        key = "source.split" if "no split" in exc.reason else "source.path"
        value = cfg.source.split if key == "source.split" else cfg.source.path
        raise ConfigError(key, value, exc.reason) from None
    n = src.num_episodes
    if cfg.source.start is not None and cfg.source.start >= n:
        raise ConfigError("source.start", cfg.source.start, f"past the end; split {cfg.source.split!r} has {n} episodes")
    camera = (cfg.labels or {}).get("camera") or ""
    cameras = list(src.config.cameras)
    if camera and camera not in cameras:
        raise ConfigError("labels.camera", camera, f"not a camera of {src.name}; choose one of {', '.join(cameras)}")
    return src
