"""`curate validate PATH [--json]`: check a curated dataset against the data contract."""

from __future__ import annotations

from cli.output import add_report_args, emit, format_table


def add_commands(sub) -> None:
    p = sub.add_parser("validate", help="check a curated dataset against the data contract (exit 1 on any violation)")
    p.add_argument("path", help="dataset directory")
    p.add_argument("--no-checksums", action="store_true", help="skip recomputing the per-episode checksums")
    add_report_args(p)
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from curation.store.validate import validate_dataset

    violations = validate_dataset(args.path, checksums=not args.no_checksums, progress=not args.json)
    result = {"path": args.path, "valid": not violations, "violations": [v.to_dict() for v in violations]}
    if violations:
        text = f"{args.path}: {len(violations)} violation(s)\n" + format_table([v.to_dict() for v in violations])
    else:
        text = f"{args.path}: valid (contract checks passed)"
    emit(result, args.json, text)
    return 1 if violations else 0
