"""`curate policy train|eval|curves|experiment` and `curate bench policy|loader`: the dual-expert policy (policy/)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from cli.output import add_report_args, emit, write_bench_json

from curation.formats import format_table

log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = sub.add_parser("policy", help="train and evaluate the LaMP-style dual-expert policy")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    from policy.config import PHASES

    t = psub.add_parser("train", help="train one phase (motion | action, or a variant's own) on a curated dataset")
    t.add_argument("--data", required=True, help="dataset directory, fsspec URL or URL/NAME@V")
    t.add_argument("--phase", required=True, choices=list(PHASES))
    t.add_argument("--config", default=None, help="YAML/JSON with policy: and train: sections")
    t.add_argument("--out", default=None, help="output directory (default runs/<phase>-<fusion>-s<seed>)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--init", default=None, help="checkpoint (or training OUT dir) to start from, e.g. the motion phase")
    t.add_argument("--fusion", default=None, choices=["gated_sigmoid", "gated_tanh", "concat", "add", "none"])
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--num-workers", type=int, default=None)
    t.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 on a busy CPU)")
    t.add_argument("--dataset-name", default=None, help="source dataset whose statistics to use (multi-source data)")
    t.add_argument("--latent-checkpoint", default=None,
                   help="latent action model (curate latent train RUN) whose codebook variant lafp generates latents of")
    add_report_args(t)
    t.set_defaults(func=cmd_train)

    e = psub.add_parser("eval", help="closed-loop success rate in Meta-World")
    e.add_argument("--checkpoint", required=True, help="checkpoint directory or training OUT dir")
    e.add_argument("--task", action="append", required=True, help="Meta-World task, repeatable (e.g. pick-place-v3)")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--max-steps", type=int, default=150)
    e.add_argument("--camera", default=None, help="simulation camera (default: curation.sources.metaworld.rollout.DEFAULT_CAMERA)")
    e.add_argument("--eval-seed", type=int, default=None, help="base seed of the evaluation layouts (default 10000)")
    e.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    e.add_argument("--strips", default=None, help="directory for rollout image strips (default <checkpoint>/eval)")
    add_report_args(e)
    e.set_defaults(func=cmd_eval)

    c = psub.add_parser("curves", help="plot training curves of runs into one PNG")
    c.add_argument("runs", nargs="+", help="LABEL=OUT_DIR (or just OUT_DIR)")
    c.add_argument("--png", required=True)
    c.add_argument("--key", default="loss")
    add_report_args(c)
    c.set_defaults(func=cmd_curves)

    x = psub.add_parser("experiment", help="run an experiment plan (data, stage 1, variants x regimes x seeds, evaluation), resumably")
    x.add_argument("plan", help="plan YAML (policy/experiment_plan.py), e.g. policy/experiments/motion_prior.yaml")
    x.add_argument("--dry-run", action="store_true", help="list the steps and which are done; run nothing")
    x.add_argument("--commit", action="store_true", help="git-commit the results files after every evaluation")
    x.add_argument("--results", default=None, help="results JSON to write instead of the plan's `results` "
                                                   "(its landed records go beside it)")
    x.add_argument("--code", default=None, metavar="DIR",
                   help="run every step on the code of this checkout instead of the plan's `code` per wave (a "
                        "worktree each, made under WORKDIR/code); the plan runner, results and records are this one's")
    x.add_argument("--jobs", type=int, default=1,
                   help="steps run at once, each pinned to a core of its own (a step starts when the steps it "
                        "needs are done; default 1: one after the other, in plan order)")
    x.add_argument("--collect", action="store_true",
                   help="run nothing: land the evaluations and step records found in the workdir (e.g. of a "
                        "runner on other code) and rewrite the results; with --commit, commit them")
    x.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only the steps whose names match (fnmatch, e.g. 'stage1/*', '*/lafp@5/*'; repeatable) "
                        "and the steps they need; the rest stay as they are")
    add_report_args(x)
    x.set_defaults(func=cmd_experiment)


def add_bench(bench_sub) -> None:
    from policy.config import VARIANTS

    b = bench_sub.add_parser("policy", help="training steps/s and action-chunk latency of the policy on this CPU")
    b.add_argument("--config", default=None, help="YAML/JSON with a policy: section (default: the shipped defaults)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    b.add_argument("--variant", action="append", default=None, choices=list(VARIANTS),
                   help="variant to measure, repeatable (default: every variant)")
    b.add_argument("--latent-checkpoint", default=None, help="latent action model whose codebook variant lafp uses")
    add_report_args(b, bench="policy")
    b.set_defaults(func=cmd_bench_policy)

    lb = bench_sub.add_parser("loader", help="triplets/s of the training loader with 0/1/2 workers vs memory, "
                                             "from a directory and from S3 on loopback, with and without verification")
    lb.add_argument("--ref", default=None, help="a curated dataset to measure (default: `curate run` outputs of "
                                                "simulated episodes at each --sizes, made under --workdir)")
    lb.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes of the default datasets")
    lb.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    lb.add_argument("--triplets", type=int, default=4096,
                    help="triplets per measured run (at ~3,000/s 1,024 last 0.3 s: too short on a shared machine)")
    lb.add_argument("--batch-size", type=int, default=32)
    lb.add_argument("--repeats", type=int, default=3, help="runs per configuration (the best is kept)")
    lb.add_argument("--no-s3", action="store_true", help="skip the published version on the loopback S3 server")
    lb.add_argument("--workdir", default=None, help="where the datasets are made and kept")
    lb.add_argument("--config", default=None, help="YAML/JSON with a policy: section (K, T, camera of the samples)")
    add_report_args(lb, bench="loader")
    lb.set_defaults(func=cmd_bench_loader)


def _configs(args):
    from policy.config import LaMPConfig, TrainConfig, load_config_file

    pol, tr = load_config_file(args.config) if getattr(args, "config", None) else ({}, {})
    return LaMPConfig(**pol), tr, TrainConfig


def cmd_train(args) -> int:
    from pathlib import Path

    from policy.train import train

    cfg, tr, TrainConfig = _configs(args)
    if args.fusion:
        cfg = dataclasses.replace(cfg, fusion=args.fusion)
    if args.latent_checkpoint:
        cfg = with_latent_codebook(cfg, args.latent_checkpoint)
    tr = dict(tr, phase=args.phase)
    for key, val in (("steps", args.steps), ("seed", args.seed), ("batch_size", args.batch_size), ("num_workers", args.num_workers),
                     ("torch_threads", args.threads)):
        if val is not None:
            tr[key] = val
    tc = TrainConfig(**tr)
    out = args.out or str(Path("runs") / f"{args.phase}-{cfg.fusion}-s{tc.seed}")
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # launched by torchrun
        dist.init_process_group("gloo")
    result = train(args.data, out, cfg, tc, init=args.init, dataset_name=args.dataset_name)
    result["out"] = out
    text = format_table([{k: v for k, v in result.items() if k not in ("checkpoint", "state_sha1", "rank", "world_size")}]) + f"\ncheckpoint: {result['checkpoint']}"
    emit(result, args.json, text)
    return 0


def with_latent_codebook(cfg, checkpoint: str):
    """cfg with the codebook (V x c) and token count L of a latent action model's checkpoint."""
    import torch

    from labelers.latent.checkpoint import load_weights

    lam, state, _ = load_weights(checkpoint)
    codebook = state["vq.codebook"].to(torch.float32).tolist()  # V c
    return dataclasses.replace(cfg, latent_codebook=codebook, latent_dim=lam.code_dim, latent_tokens=lam.num_tokens)


def cmd_eval(args) -> int:
    from pathlib import Path

    from policy.evaluate import DEFAULT_EVAL_SEED, evaluate
    from policy.train import resolve_checkpoint

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    strips = args.strips or str(Path(ckpt) / "eval")
    result = evaluate(str(ckpt), args.task, args.episodes, max_steps=args.max_steps, camera=args.camera,
                      eval_seed=args.eval_seed if args.eval_seed is not None else DEFAULT_EVAL_SEED, strip_dir=strips)
    cols = ["task", "episodes", "successes", "success_rate", "ci95_low", "ci95_high", "mean_steps", "strip"]
    o = result["overall"]
    text = (format_table(result["tasks"], cols)
            + f"\noverall: {o['successes']}/{o['episodes']} = {o['success_rate']:.3f} (95% CI {o['ci95_low']:.3f}-{o['ci95_high']:.3f})"
            + f"  fusion={result['fusion']} step={result['step']}")
    emit(result, args.json, text)
    return 0


def cmd_curves(args) -> int:
    from policy.train import plot_curves

    runs = {}
    for r in args.runs:
        label, _, path = r.partition("=") if "=" in r else (r, "", r)
        runs[label] = path
    png = plot_curves(runs, args.png, key=args.key)
    emit({"png": str(png), "runs": runs}, args.json, f"wrote {png}")
    return 0


def cmd_experiment(args) -> int:
    from pathlib import Path

    from policy.experiment import run_plan
    from policy.experiment_plan import load_plan

    try:
        plan = load_plan(args.plan)
        if args.results:
            plan.results = Path(args.results)
        result = run_plan(plan, dry_run=args.dry_run, commit=args.commit, only=args.only, collect=args.collect,
                          code=Path(args.code).resolve() if args.code else None, jobs=args.jobs,
                          on_event=lambda line: print(line, flush=True) if not args.json else log.info(line))
    except (ValueError, RuntimeError) as e:  # a bad plan, or a step that failed (the message names its log)
        print(f"curate policy experiment: error: {e}", file=sys.stderr)
        return 1
    text = format_table(result["steps"], ["step", "status", "wall_s"], floatfmt=".0f")
    if Path(result["results"]).exists():
        import json

        from policy.experiment_results import table_rows

        variants, paired = table_rows(json.loads(Path(result["results"]).read_text()))
        text += "\n\n" + format_table(variants) + "\n\n" + format_table(paired)
    text += f"\n{result['steps_done']}/{result['steps_total']} steps done -> {result['results']}"
    emit(result, args.json, text)
    return 0


def cmd_bench_policy(args) -> int:
    from cli.bench.policy import bench_policy

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, _, _ = _configs(args)
    if args.latent_checkpoint:
        cfg = with_latent_codebook(cfg, args.latent_checkpoint)
    from policy.config import VARIANTS

    result = bench_policy(cfg, batch_size=args.batch_size, steps=args.steps, variants=args.variant or list(VARIANTS))
    path = write_bench_json("policy", result, args.out_json)
    text = format_table(result["rows"], ["variant", "measure", "batch", "seconds_median", "per_s", "cpu_seconds_median", "trainable_params"], floatfmt=".4f")
    emit(result, args.json, text + f"\nparameters: {result['parameters']:,}  torch threads: {result['torch_threads']}  -> {path}")
    return 0


def cmd_bench_loader(args) -> int:
    from pathlib import Path

    from cli.bench.loader import bench_loader, bench_size_of_ref, default_workdir, table_rows

    workdir = Path(args.workdir) if args.workdir else default_workdir()
    cfg, _, _ = _configs(args)
    kw = dict(workers=tuple(args.workers), num_triplets=args.triplets, batch_size=args.batch_size, repeats=args.repeats,
              policy=cfg)
    if args.ref:
        result = bench_size_of_ref(args.ref, **kw)
    else:
        result = bench_loader(workdir, sizes=tuple(args.sizes), with_s3=not args.no_s3, **kw)
    path = write_bench_json("loader", result, args.out_json)
    c = result["conditions"]
    text = (format_table(table_rows(result), floatfmt=".2f")
            + f"\nload average {c['load_avg_start'][0]:.1f} -> {c['load_avg_end'][0]:.1f} on {c['cpus']} CPUs -> {path}")
    emit(result, args.json, text)
    return 0
