"""The one typed configuration of a curation job.

A job config comes from a YAML/JSON file plus `--set dotted.key=value`
overrides and is written into the dataset (dataset.json) so the dataset says
how it was made. Label and filter parameters are owned by their modules
(labelers.episode_labeler.LabelConfig, curation.filters.FilterConfig); this
file keeps them as plain dicts and builds the typed objects where they are used,
so a job config always round-trips through JSON.

    source:   {path, split, start, stop}
    labels:   LabelConfig.to_dict()             (backends + parameters of every labeler)
    curation: {filters: FilterConfig dict | null, dedup: dict | null, stats, card}
    writer:   {shard_episodes, compression, frames, frames_per_chunk}
    engine:   {runner, workers, address, label_actors, num_gpus, max_retries, beam_options, runtime_env}
    seed
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from schemas.config import check_keys, strict_from_dict

RUNNERS = ("local", "beam", "ray")

# What a config, summary or log never shows: values under a key that names a secret, Beam's
# credential options (S3Options / AzureOptions carry keys and connection strings), and every
# Ray runtime_env environment variable (a common way to hand credentials to workers).
REDACTED = "<redacted>"
SECRET_KEY_RE = re.compile(r"(^|[_.-])(secret|token|password|passwd|credentials?|api[_-]?key|access[_-]?key(_id)?|"
                           r"private[_-]?key|auth|authorization|session[_-]?token|connection[_-]?string|signature|"
                           r"cookie)($|[_.-])", re.IGNORECASE)
BEAM_CREDENTIAL_OPTIONS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token", "s3_endpoint_url",
                           "azure_connection_string", "blob_service_endpoint", "azure_managed_identity_client_id")


def redact_beam_options(options: list) -> list:
    """`--name=value` strings (or [name, value] pairs) with credential values replaced."""
    out = []
    for opt in options or []:
        if isinstance(opt, (list, tuple)) and len(opt) == 2:
            name = str(opt[0]).lstrip("-")
            secret = name in BEAM_CREDENTIAL_OPTIONS or SECRET_KEY_RE.search(name)
            out.append([opt[0], REDACTED if secret else opt[1]])
            continue
        name, eq, _ = str(opt).lstrip("-").partition("=")
        secret = eq and (name in BEAM_CREDENTIAL_OPTIONS or SECRET_KEY_RE.search(name))
        out.append(f"--{name}={REDACTED}" if secret else opt)
    return out


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a JSON-like tree with the value under every secret-named key replaced."""
    if key and SECRET_KEY_RE.search(key) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    return value


class ConfigError(ValueError):
    """A job config value that cannot work: names the dotted key, the value and what
    would be accepted, on one line. Raised before any work (pipelines.preflight) and by
    a unit whose labeler cannot be built from the config (then the job stops)."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key} = {value!r}: {expected}")

    def __reduce__(self):  # travels back from Ray and Beam workers intact
        return (ConfigError, (self.key, self.value, self.expected))


@dataclass
class SourceConfig:
    path: str = ""  # RLDS dataset dir <root>/<name>/<version> (local path or fsspec URL)
    split: str = "train"
    start: Optional[int] = None  # episode range [start, stop) within the split
    stop: Optional[int] = None
    # Limits on one episode, so a malformed or hostile record cannot exhaust a worker: an episode past
    # one is quarantined with reason "limit: ...". The defaults sit far above Open-X (its longest
    # episodes have a few thousand steps, its largest cameras 1280 x 800) and below a 16 GiB worker.
    max_steps: int = 50_000
    max_frame_pixels: int = 4096 * 4096
    max_episode_bytes: int = 8 << 30  # decoded frames, depth and actions together


@dataclass
class WriterConfig:
    shard_episodes: int = 8  # episodes per shard (= per work unit); a shard is written by one worker
    compression: str = "zstd"  # "zstd" (level 1) or "none" after each array's encoding (frames: never)
    frames: str = "source"  # "source": the source's own JPEG/PNG bytes where it has them, else PNG; "png": always PNG
    frames_per_chunk: int = 16  # inner Zarr chunk along the frame / anchor axis


@dataclass
class CurationConfig:
    filters: Optional[dict] = field(default_factory=dict)  # curation.filters.FilterConfig fields; None = off
    dedup: Optional[dict] = field(default_factory=dict)  # curation.dedup config fields; None = off
    stats: bool = True  # write stats.json at finalize (curation.stats)
    card: bool = True  # write README.md + card/*.png at finalize (curation.card)


@dataclass
class EngineConfig:
    runner: str = "local"  # local | beam | ray
    workers: int = 1  # local Ray num_cpus / Beam direct_num_workers
    address: Optional[str] = None  # Ray cluster address (HOST:PORT or "auto"); None starts a local Ray
    label_actors: int = -1  # Ray: size of the labeler actor pool; 0 = label inside CPU tasks; -1 = auto
    num_gpus: dict = field(default_factory=lambda: {"label": 0.0})  # per model stage
    label_resources: dict = field(default_factory=dict)  # custom Ray resources for labeler actors
    max_retries: int = 3  # Ray task retries when a worker or node dies
    beam_options: list = field(default_factory=list)  # passed through to Beam PipelineOptions
    runtime_env: Optional[dict] = None  # Ray runtime_env for clusters (working_dir, pip, env_vars)
    threads_per_worker: int = 1  # CPU threads a worker's libraries may use (OpenCV, torch, image decoding)


@dataclass
class JobConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    labels: dict = field(default_factory=dict)  # labelers.episode_labeler.LabelConfig fields
    curation: CurationConfig = field(default_factory=CurationConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    seed: int = 0

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        d = check_keys(cls, copy.deepcopy(d or {}), "job config keys")
        return cls(
            source=_build(SourceConfig, d.get("source"), "source"),
            labels=dict(d.get("labels") or {}),
            curation=_build(CurationConfig, d.get("curation"), "curation"),
            writer=_build(WriterConfig, d.get("writer"), "writer"),
            engine=_build(EngineConfig, d.get("engine"), "engine"),
            seed=int(d.get("seed", 0)),
        ).validated()

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None, **top: Any) -> "JobConfig":
        """Config file (YAML or JSON) + `key.sub=value` overrides + explicit keyword
        overrides (dotted names, used by the CLI flags); later wins."""
        import yaml

        d: dict = {}
        if path:
            text = Path(path).read_text()
            d = yaml.safe_load(text) or {}
            if not isinstance(d, dict):
                raise ValueError(f"{path}: a job config must be a mapping, got {type(d).__name__}")
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"--set expects key.sub=value, got {item!r}")
            key, value = item.split("=", 1)
            _set_dotted(d, key.strip(), yaml.safe_load(value))
        for key, value in top.items():
            if value is not None:
                _set_dotted(d, key, value)
        return cls.from_dict(d)

    def validated(self) -> "JobConfig":
        """Types, ranges and choices of every value (check_values); the backends and the
        source are checked before a job runs (pipelines.preflight.check_job)."""
        check_values(self)
        return self

    # ---- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self) -> dict:
        """to_dict() for what is written or shown (dataset.json, job state, summaries, logs):
        secrets redacted (see REDACTED). Not for running a job: the values are gone."""
        d = self.to_dict()
        d["engine"] = eng = redact_tree(d["engine"])  # the content sections hold no secrets by design
        eng["beam_options"] = redact_beam_options(eng.get("beam_options"))
        if eng.get("runtime_env") and eng["runtime_env"].get("env_vars"):
            eng["runtime_env"]["env_vars"] = {k: REDACTED for k in eng["runtime_env"]["env_vars"]}
        return d

    def content_hash(self) -> str:
        """Hash of everything that decides the dataset's content (not how it is run):
        a resumed run must have the same hash as the run it continues."""
        d = self.to_dict()
        d.pop("engine")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def effective(self) -> "JobConfig":
        """A copy with the label, filter and dedup parts expanded to every field
        (defaults filled in by their owners' dataclasses), so the config written into
        the dataset is complete and equal settings always hash the same."""
        d = self.to_dict()
        d["labels"] = self.label_config().to_dict()
        if d["curation"]["filters"] is not None:
            from curation.selection.filters import FilterConfig

            d["curation"]["filters"] = FilterConfig.from_dict(d["curation"]["filters"]).to_dict()
        if d["curation"]["dedup"] is not None:
            from curation.selection.dedup import DedupConfig

            d["curation"]["dedup"] = DedupConfig.from_dict(d["curation"]["dedup"]).to_dict()
        return JobConfig.from_dict(d)

    # ---- typed views of the parts owned by other modules ---------------------------
    def label_config(self):
        from labelers.episode_labeler import LabelConfig

        return LabelConfig.from_dict(self.labels) if self.labels else LabelConfig()


def _build(cls, d: dict | None, where: str):
    return strict_from_dict(cls, d, f"{where} config keys")


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


# (low, high) inclusive bounds of numeric fields; None = unbounded on that side. The bounds
# are the ones the owning code needs to work: counts and sizes of at least one, shares in
# [0, 1], a field of view a pinhole camera can have (labelers.sceneflow refuses others),
# and label_actors -1 meaning "choose automatically" (pipelines.engines.ray).
RANGES: dict[str, tuple[Optional[float], Optional[float]]] = {
    "source.start": (0, None), "source.stop": (1, None),
    "labels.grid": (1, None), "labels.horizon": (1, None), "labels.stride": (1, None),
    "labels.flow_gap": (1, None), "labels.fov_deg": (1, 179), "labels.edge_rel": (0, None),
    "labels.max_depth_jump_rel": (0, None), "labels.max_depth_speed_rel": (0, None), "labels.latent_gap": (1, None),
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
    "writer.frames": ("source", "png"),
}
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
