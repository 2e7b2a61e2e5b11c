"""`curate run SOURCE --out DATASET_DIR --runner local|beam|ray` (`curate bench pipeline`: cli/bench/pipeline.py)."""

from __future__ import annotations

import logging
import sys

from cli.output import add_report_args, emit

from curation.formats import format_table

log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="curate an RLDS dataset into sharded Zarr triplets (local, Beam or Ray)",
                       description="Read SOURCE (an RLDS dataset dir or URL), label, filter, deduplicate and write "
                                   "a sharded Zarr dataset to DATASET_DIR. Killed runs resume when started again "
                                   "with the same arguments.")
    p.add_argument("source", help="RLDS dataset directory <root>/<name>/<version> (or a URL)")
    p.add_argument("--out", required=True, help="dataset directory to write (a shared filesystem on a cluster)")
    p.add_argument("--runner", choices=["local", "beam", "ray"], default=None, help="engine (default local)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (local Ray num_cpus / Beam direct_num_workers)")
    p.add_argument("--config", default=None, help="job config file (YAML or JSON; see pipelines/config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set labels.stride=8 (repeatable)")
    p.add_argument("--split", default=None, help="split to read (default train)")
    p.add_argument("--start", type=int, default=None, help="first episode index")
    p.add_argument("--stop", type=int, default=None, help="episode index to stop before")
    p.add_argument("--shard-episodes", type=int, default=None, help="episodes per shard / work unit")
    p.add_argument("--address", default=None, help="Ray cluster address HOST:PORT (or auto); default starts a local Ray")
    p.add_argument("--beam-option", dest="beam_options", action="append", default=None, metavar="--OPT=VALUE",
                   help="Beam pipeline option passed through (repeatable), e.g. --beam-option=--runner=DataflowRunner")
    p.add_argument("--overwrite", action="store_true", help="discard a dataset made with a different config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective job config as YAML (a starting point for --config) and exit")
    add_report_args(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from pipelines.config import JobConfig
    from pipelines.job import JobError, JobFailed, run_job
    from schemas.episode import EpisodeError

    try:
        cfg = JobConfig.load(
            args.config, args.overrides,
            **{"source.path": args.source, "source.split": args.split, "source.start": args.start,
               "source.stop": args.stop, "writer.shard_episodes": args.shard_episodes,
               "engine.runner": args.runner, "engine.workers": args.workers, "engine.address": args.address,
               "engine.beam_options": args.beam_options},
        )
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.effective().to_record(), sort_keys=False), end="")
            return 0
        summary = run_job(cfg, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    except JobFailed as exc:  # it ran, and every unit failed
        print(f"curate run: error: {exc}", file=sys.stderr)
        return 1
    except (JobError, EpisodeError, ValueError, FileNotFoundError) as exc:
        print(f"curate run: error: {exc}", file=sys.stderr)
        return 2
    emit(summary, args.json, format_summary(summary))
    return 0 if summary["complete"] else 1


def format_summary(s: dict) -> str:
    c = s["counts"]
    lines = [
        f"dataset: {s['dataset']} ({'complete' if s['complete'] else 'INCOMPLETE'})",
        f"runner {s['runner']} x{s['workers']}: {s['episodes_processed_this_run']} episodes in {s['processing_s']:.1f}s "
        f"= {s['episodes_per_s']:.2f} episodes/s, {s['frames_per_s']:.1f} frames/s (wall {s['wall_s']:.1f}s)",
        f"planned {c['planned']}  read {c['read']}  written {c['written']} ({c['frames_written']} frames, "
        f"{c['anchors_written']} anchors)  filtered {c['filtered']}  duplicates {c['duplicates']}  "
        f"quarantined {c['quarantined']}  unaccounted {c['unaccounted']}",
        f"units {c['units']} (resumed {c['units_resumed']}, failed {c['units_failed']})",
    ]
    att = (s.get("engine") or {}).get("attempts") or {}
    if att.get("task_attempts"):
        lines.append(f"task attempts {att['task_attempts']} for {att['tasks']} tasks; retried after a lost worker/node: "
                     + (", ".join(f"{r['unit'].split(' (')[0]} x{r['attempts']}" for r in att["retried"]) or "none"))
    if c["filtered_by_reason"]:
        lines.append("filtered by reason: " + ", ".join(f"{k} {v}" for k, v in c["filtered_by_reason"].items()))
    if c["quarantined_by_reason"]:
        lines.append("quarantined by reason:")
        lines += [f"  {v:4d}  {k}" for k, v in c["quarantined_by_reason"].items()]
    total = sum(v for k, v in s["stage_seconds"].items()) or 1.0
    rows = [{"stage": k, "seconds": v, "share": v / total} for k, v in s["stage_seconds"].items()]
    lines += ["", format_table(rows)]
    if s.get("extras"):
        lines.append("extras: " + ", ".join(f"{k} {v}" for k, v in s["extras"].items()))
    return "\n".join(lines)
