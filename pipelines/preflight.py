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
import inspect
import io
import logging
import re
import typing
from pathlib import Path
from typing import Any, Callable

from pipelines.config import ConfigError, EngineConfig, JobConfig, check_type, check_values

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
        if not factory.loads_model:
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
