"""`curate publish | versions | diff | verify | stats | card`: versioned datasets.

    curate publish DATASET_DIR --name NAME --version X.Y.Z [--to URL] [--json]
    curate versions URL/NAME [--json]
    curate diff URL/NAME@A URL/NAME@B [--json]       (a ref may also be a local dataset dir)
    curate verify URL/NAME@V [--json]                 (exit 1 on any mismatch)
    curate stats DATASET_DIR [--json]                 (writes stats.json)
    curate card DATASET_DIR [--json]                  (writes README.md and card/*.png)

URLs are fsspec URLs (a directory, s3://bucket/prefix, gs://...). Credentials
come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_PROFILE, ...), never from the command line; a custom S3
endpoint (MinIO, moto, Ceph) is named with --endpoint-url or AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cli.output import add_report_args, emit

from curation.formats import format_table

log = logging.getLogger(__name__)


def _add_storage_args(p) -> None:
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (e.g. http://127.0.0.1:9000); credentials come from the AWS_* environment")


def _storage_options(args, url: str) -> dict | None:
    if getattr(args, "endpoint_url", None) and url.startswith(("s3://", "s3a://")):
        return {"client_kwargs": {"endpoint_url": args.endpoint_url}}
    return None



def add_commands(sub) -> None:
    p = sub.add_parser("publish", help="publish a validated dataset as an immutable version")
    p.add_argument("dataset_dir")
    p.add_argument("--name", required=True, help="dataset name in the registry")
    p.add_argument("--version", required=True, help="semantic version X.Y.Z")
    p.add_argument("--to", default=None, help="registry URL (default $CURATE_REGISTRY or ~/.local/share/triplet-curator/registry)")
    p.add_argument("--no-prepare", action="store_true", help="do not write stats.json / README.md when they are missing")
    p.add_argument("--allow-empty", action="store_true", help="publish a dataset with no episodes (refused otherwise)")
    p.add_argument("--max-quarantined-share", type=float, default=None, metavar="SHARE",
                   help="warn when more than this share of the episodes was quarantined (default 0.1)")
    _add_storage_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("versions", help="list the published versions of URL/NAME")
    p.add_argument("url_name", help="URL/NAME (or NAME in the default registry)")
    p.add_argument("--remove-unfinished", type=float, default=None, metavar="HOURS",
                   help="delete files of crashed or lost publishes started more than HOURS ago")
    _add_storage_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("diff", help="episodes added, removed and changed between two versions")
    p.add_argument("ref_a", help="URL/NAME@A (or a local dataset directory)")
    p.add_argument("ref_b", help="URL/NAME@B (or a local dataset directory)")
    p.add_argument("--list", action="store_true", help="list the episode ids, not only counts")
    _add_storage_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("verify", help="re-hash every file of a published version against its index")
    p.add_argument("ref", help="URL/NAME@V (V may be 'latest')")
    _add_storage_args(p)
    add_report_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("stats", help="compute training statistics of a written dataset (stats.json)")
    p.add_argument("dataset_dir")
    add_report_args(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("card", help="write the dataset card (README.md and card/*.png)")
    p.add_argument("dataset_dir")
    add_report_args(p)
    p.set_defaults(func=cmd_card)


def _fail(args, message: str, **extra) -> int:
    if getattr(args, "json", False):
        emit({"ok": False, "error": message, **extra}, True)
    else:
        print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_publish(args) -> int:
    from pathlib import Path

    from curation.registry.publish import DEFAULT_MAX_QUARANTINED_SHARE, check_contents, publish

    from curation.registry.refs import PublishError

    to = args.to
    share = DEFAULT_MAX_QUARANTINED_SHARE if args.max_quarantined_share is None else args.max_quarantined_share
    try:
        warnings = check_contents(args.dataset_dir, args.allow_empty, share) if Path(args.dataset_dir).is_dir() else []
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if not args.no_prepare:
            try:
                _prepare(Path(args.dataset_dir))
            except (OSError, ValueError) as exc:  # e.g. a read-only dataset: publish it as it is
                log.warning("%s: could not write stats/card before publishing (%s)", args.dataset_dir, exc)
        v = publish(args.dataset_dir, args.name, args.version, to_url=to, storage_options=_storage_options(args, to or ""))
    except PublishError as exc:
        return _fail(args, str(exc))
    result = {"ok": True, **v.to_dict(), "warnings": warnings}
    what = "published" if v.created_now else "already published with identical content (nothing done)"
    text = (
        f"{v.ref}: {what}\n"
        f"  files {v.num_files}, {v.total_bytes / 1e6:.2f} MB, episodes {v.episodes}\n"
        f"  content checksum {v.content_checksum}\n  files at {v.root}"
    )
    emit(result, args.json, text)
    return 0


def _prepare(dataset_dir) -> None:
    """Write the derived files a published dataset should carry, when missing."""
    from schemas.dataset import MANIFEST, STATS_JSON

    if not (dataset_dir / MANIFEST).is_file():
        return  # the publish check reports it
    if not (dataset_dir / STATS_JSON).is_file():
        from curation.describe.stats import compute_stats

        log.info("%s: no %s, computing it", dataset_dir, STATS_JSON)
        compute_stats(str(dataset_dir))
    if not (dataset_dir / "README.md").is_file():
        from curation.describe.card import write_card

        log.info("%s: no dataset card, writing it", dataset_dir)
        write_card(dataset_dir)


def cmd_versions(args) -> int:
    from curation.registry.gc import remove_unfinished, unfinished_publishes
    from curation.registry.refs import PublishError
    from curation.registry.versions import list_versions

    try:
        removed = []
        if args.remove_unfinished is not None:
            removed = remove_unfinished(args.url_name, args.remove_unfinished, _storage_options(args, args.url_name))
        versions = list_versions(args.url_name, _storage_options(args, args.url_name))
        unfinished = unfinished_publishes(args.url_name, _storage_options(args, args.url_name))
    except PublishError as exc:
        return _fail(args, str(exc))
    rows = [
        {"version": v.version, "created": v.created, "episodes": v.episodes, "files": v.num_files,
         "MB": v.total_bytes / 1e6, "checksum": v.content_checksum[:12], "contract": v.contract_version}
        for v in versions
    ]
    text = format_table(rows, floatfmt=".2f") if rows else f"{args.url_name}: no published versions"
    if removed:
        text += f"\nremoved {len(removed)} unfinished publish attempt(s)"
    if unfinished:
        text += f"\n({len(unfinished)} unfinished publish attempt(s) left files that no version uses; --remove-unfinished HOURS deletes old ones)"
    emit({"url_name": args.url_name, "versions": [v.to_dict() for v in versions], "unfinished": unfinished, "removed": removed},
         args.json, text)
    return 0


def cmd_diff(args) -> int:
    from curation.registry.diff import diff
    from curation.registry.refs import PublishError

    try:
        d = diff(args.ref_a, args.ref_b, _storage_options(args, args.ref_a))
    except PublishError as exc:
        return _fail(args, str(exc))
    lines = [
        f"{d['a']} ({d['episodes_a']} episodes) -> {d['b']} ({d['episodes_b']} episodes)",
        f"  episodes: added {len(d['added'])}, removed {len(d['removed'])}, changed {len(d['changed'])}, unchanged {d['unchanged']}",
        f"  dataset files changed: {', '.join(d['files_changed']) or 'none'}",
    ]
    if args.list:
        for key in ("added", "removed", "changed"):
            lines += [f"  {key[0].upper() if key != 'changed' else '~'} {e}" for e in d[key]]
    emit(d, args.json, "\n".join(lines))
    return 0


def cmd_verify(args) -> int:
    from curation.registry.refs import PublishError
    from curation.registry.verify import verify

    try:
        r = verify(args.ref, _storage_options(args, args.ref))
    except PublishError as exc:
        return _fail(args, str(exc))
    lines = [f"{r.ref}: {'OK' if r.ok else 'FAILED'} ({r.files_checked} files, {r.bytes_checked / 1e6:.2f} MB re-hashed)"]
    lines += [f"  checksum mismatch: {m['path']} (expected {m['expected'][:16]}, got {m['actual'][:16]})" for m in r.mismatched]
    lines += [f"  missing: {p}" for p in r.missing]
    lines += [f"  not in the index: {p}" for p in r.unexpected]
    if not r.index_checksum_ok:
        lines.append("  the index's content checksum does not match its file list (index edited?)")
    emit(r.to_dict(), args.json, "\n".join(lines))
    return 0 if r.ok else 1


def cmd_stats(args) -> int:
    from curation.describe.stats import compute_stats

    try:
        s = compute_stats(args.dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(args, str(exc))
    rows = []
    for ds, d in s["datasets"].items():
        for arr in ("actions", "proprio", "motion/tracks_px_delta", "motion/points_cam_m_delta"):
            if arr in d:
                st = d[arr]
                for i in range(st["dim"]):
                    rows.append({"dataset": ds, "array": arr, "dim": i, "mean": st["mean"][i], "std": st["std"][i],
                                 "min": st["min"][i], "q01": st["q01"][i], "q99": st["q99"][i], "max": st["max"][i]})
    c = s["counts"]
    text = f"{args.dataset_dir}: {c['episodes']} episodes, {c['anchors']} anchors, {c['frames']} frames\n" + format_table(rows, floatfmt=".4g")
    emit(s, args.json, text)
    return 0


def cmd_card(args) -> int:
    from curation.describe.card import write_card

    try:
        out = write_card(args.dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(args, str(exc))
    emit({"ok": True, **out}, args.json, f"dataset card: {out['readme']} ({len(out['pictures'])} pictures)")
    return 0
