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
    writer:   {shard_episodes, compression, frames_per_chunk}
    engine:   {runner, workers, address, label_actors, num_gpus, max_retries, beam_options, runtime_env}
    seed
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

RUNNERS = ("local", "beam", "ray")


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


@dataclass
class WriterConfig:
    shard_episodes: int = 8  # episodes per shard (= per work unit); a shard is written by one worker
    compression: str = "none"  # "none" or "zstd" (level 1) for every array
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
        d = copy.deepcopy(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown job config keys: {sorted(unknown)}")
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
        """Types, ranges and choices of every value (pipelines.preflight.check_values); the
        backends and the source are checked before a job runs (preflight.check_job)."""
        from pipelines.preflight import check_values

        check_values(self)
        return self

    # ---- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

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
            from curation.filters import FilterConfig

            d["curation"]["filters"] = FilterConfig.from_dict(d["curation"]["filters"]).to_dict()
        if d["curation"]["dedup"] is not None:
            from curation.dedup import DedupConfig

            d["curation"]["dedup"] = DedupConfig.from_dict(d["curation"]["dedup"]).to_dict()
        return JobConfig.from_dict(d)

    # ---- typed views of the parts owned by other modules ---------------------------
    def label_config(self):
        from labelers.episode_labeler import LabelConfig

        return LabelConfig.from_dict(self.labels) if self.labels else LabelConfig()


def _build(cls, d: dict | None, where: str):
    d = dict(d or {})
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {where} config keys: {sorted(unknown)} (known: {sorted(names)})")
    return cls(**d)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
