"""`curate`: the one command-line program. Subcommands live in their own modules;
each module exposes `add_commands(subparsers)` (top-level commands) and/or
`add_bench(bench_subparsers)` (`curate bench NAME`). Heavy libraries are imported
inside the command functions so `curate --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that add top-level subcommands, and modules that add `curate bench` targets.
COMMAND_MODULES: list[str] = [
    "cli.commands.demo",
    "cli.commands.run",
    "cli.commands.validate",
    "cli.commands.inspect",
    "cli.commands.publish",
    "cli.commands.policy",
    "cli.commands.simulate",
    "cli.commands.latent",
    "cli.commands.tracker",
]
BENCH_MODULES: list[str] = [
    "cli.bench.simulate",
    "cli.bench.pipeline",
    "cli.commands.policy",
    "cli.bench.labels",
    "cli.bench.latent",
    "cli.bench.read",
    "cli.bench.cluster",
    "cli.bench.faults",
    "cli.bench.storage",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curate",
        description="Turn robot videos into observation-language-motion triplets, curate and publish them, train a policy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    bench = sub.add_parser("bench", help="benchmarks: print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="bench", metavar="TARGET")
    for name in BENCH_MODULES:
        importlib.import_module(name).add_bench(bench_sub)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
