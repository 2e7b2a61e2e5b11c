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
import re
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
        """Types, ranges and choices of every value (pipelines.preflight.check_values); the
        backends and the source are checked before a job runs (preflight.check_job)."""
        from pipelines.preflight import check_values

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
