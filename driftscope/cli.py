"""The ``driftscope`` command: run, analyze, inspect, figures, reproduce.

User errors (:class:`~driftscope.errors.DriftscopeError`) print one line and exit non-zero (2 for
usage errors) without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from driftscope.config import ALGORITHMS, PARTITIONS, RunConfig
from driftscope.errors import DriftscopeError

# flag dest -> dotted config key
FLAG_KEYS = {
    "seed": "seed",
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "classes_per_client": "data.classes_per_client",
    "augment": "data.augment",
    "model": "model.name",
    "head": "model.head",
    "head_last_k": "model.head_last_k",
    "algorithm": "train.algorithm",
    "rounds": "train.rounds",
    "clients": "train.clients",
    "client_fraction": "train.client_fraction",
    "local_epochs": "train.local_epochs",
    "local_steps": "train.local_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "momentum": "train.momentum",
    "body_momentum": "train.body_momentum",
    "weight_decay": "train.weight_decay",
    "server_lr": "train.server_lr",
    "weighting": "train.weighting",
    "mu": "train.mu",
    "eval_every": "train.eval_every",
    "record": "record.enabled",
    "record_every": "record.every",
    "updates_every": "record.updates_every",
    "update_dtype": "record.update_dtype",
    "update_layers": "record.update_layers",
    "probe_size": "record.probe_size",
    "cka_every": "record.cka_every",
}


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        help=f"digits (embedded), mnist, fashion_mnist, cifar10, cifar100 [{d.data.dataset}]",
    )
    g.add_argument(
        "--data-dir", help="where torchvision datasets are cached [$DRIFTSCOPE_DATA or data_cache]"
    )
    g.add_argument(
        "--partition",
        choices=PARTITIONS,
        help=f"how data is split across clients [{d.data.partition}]",
    )
    g.add_argument(
        "--alpha", type=float, help=f"Dirichlet concentration; smaller = more skew [{d.data.alpha}]"
    )
    g.add_argument(
        "--classes-per-client",
        type=int,
        help=f"classes per client for --partition shards [{d.data.classes_per_client}]",
    )
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="crop+flip augmentation [dataset default: on for CIFAR]",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"small_cnn, vgg11, mlp [{d.model.name}]")
    g.add_argument(
        "--head",
        nargs="+",
        metavar="PATTERN",
        help="parameter-name patterns forming the head, e.g. 'classifier.*' [the model's own head]",
    )
    g.add_argument("--head-last-k", type=int, metavar="K", help="the last K layers form the head")
    g = p.add_argument_group("training")
    g.add_argument(
        "--algorithm", choices=ALGORITHMS, help=f"federated algorithm [{d.train.algorithm}]"
    )
    g.add_argument("--rounds", type=int, help=f"communication rounds [{d.train.rounds}]")
    g.add_argument("--clients", type=int, help=f"number of clients [{d.train.clients}]")
    g.add_argument(
        "--client-fraction",
        type=float,
        help=f"share of clients sampled per round [{d.train.client_fraction}]",
    )
    g.add_argument(
        "--local-epochs", type=int, help=f"local epochs per round [{d.train.local_epochs}]"
    )
    g.add_argument(
        "--local-steps", type=int, help="fixed local SGD steps per round (replaces epochs)"
    )
    g.add_argument("--batch-size", type=int, help=f"local batch size [{d.train.batch_size}]")
    g.add_argument("--lr", type=float, help=f"local learning rate [{d.train.lr}]")
    g.add_argument("--momentum", type=float, help=f"local SGD momentum [{d.train.momentum}]")
    g.add_argument(
        "--body-momentum",
        type=float,
        help=f"FedPVR: momentum on body parameters [{d.train.body_momentum}]",
    )
    g.add_argument("--weight-decay", type=float, help=f"weight decay [{d.train.weight_decay}]")
    g.add_argument("--server-lr", type=float, help=f"server learning rate [{d.train.server_lr}]")
    g.add_argument(
        "--weighting",
        choices=("uniform", "samples"),
        help=f"client weights in the average [{d.train.weighting}]",
    )
    g.add_argument("--mu", type=float, help=f"FedProx proximal weight [{d.train.mu}]")
    g.add_argument(
        "--eval-every",
        type=int,
        help=f"evaluate the global model every K rounds [{d.train.eval_every}]",
    )
    g.add_argument(
        "--seed", type=int, help=f"fixes partition, init, sampling and batch order [{d.seed}]"
    )
    g = p.add_argument_group("recording")
    g.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record per-layer drift (--no-record for baselines) [on]",
    )
    g.add_argument(
        "--record-every",
        type=int,
        metavar="K",
        help=f"record Gram matrices every K rounds [{d.record.every}]",
    )
    g.add_argument(
        "--updates-every",
        type=int,
        metavar="K",
        help=f"store full client updates every K recorded rounds; 0 = never [{d.record.updates_every}]",
    )
    g.add_argument(
        "--update-dtype",
        choices=("float32", "float16"),
        help=f"dtype of stored updates [{d.record.update_dtype}]",
    )
    g.add_argument(
        "--update-layers",
        nargs="+",
        metavar="PATTERN",
        help="store updates only for parameters matching these patterns [*]",
    )
    g.add_argument(
        "--probe-size",
        type=int,
        help=f"probe inputs for activation CKA; 0 = off [{d.record.probe_size}]",
    )
    g.add_argument(
        "--cka-every",
        type=int,
        metavar="K",
        help=f"probe CKA every K recorded rounds [{d.record.cka_every}]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftscope",
        description="See where in a neural network federated learning drifts.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "run",
        help="train one federated run and write its run file",
        description="Train one federated run and write an HDF5 run file. With no arguments: "
        "FedAvg on the embedded digits, small CNN, 10 clients, Dirichlet alpha 0.1. "
        "Flags override --config FILE (TOML with [data], [model], [train], [record] tables).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file; flags override it")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="run file to write [runs/<dataset>-<algorithm>-<partition>-seed<seed>.h5]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_run_flags(p)

    p = sub.add_parser(
        "analyze",
        help="per-layer drift summary of a run",
        description="Print a per-layer drift summary (layers in model order, head marked, aggregated over rounds).",
    )
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument(
        "--csv",
        metavar="PATH",
        help="also write the tidy table (round, layer, group, metric, value)",
    )

    p = sub.add_parser(
        "inspect",
        help="what a run file holds",
        description="Print a run file's config, layers, rounds and datasets.",
    )
    p.add_argument("run", metavar="RUN.h5")

    p = sub.add_parser(
        "figures",
        help="write every figure the runs support",
        description="Write every figure the given runs support, as PNG and PDF.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.add_argument("--out", metavar="DIR", default="figures", help="output folder")

    p = sub.add_parser(
        "compare",
        help="algorithms side by side over several seeds",
        description="Train FedAvg, SCAFFOLD and FedPVR (with and without body momentum) for each seed "
        "with the same hyperparameters (the default config, or --config), recording off; print "
        "final accuracy and rounds to a target as mean ± std over seeds, and communication.",
    )
    p.add_argument("--config", metavar="FILE", help="base TOML config [the default]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=0.9, help="target test accuracy")
    p.add_argument("--out", metavar="DIR", default="runs/compare", help="folder for run files")
    p.add_argument("--csv", metavar="PATH", help="also write the per-seed results")
    p.add_argument("--quiet", "-q", action="store_true")

    p = sub.add_parser(
        "reproduce",
        help="FedAvg vs SCAFFOLD vs FedPVR on the embedded default, and the observation",
        description="Run FedAvg, SCAFFOLD and FedPVR on the embedded digits (alpha 0.1) and an IID "
        "FedAvg control; print where drift lives, accuracy and communication; write figures.",
    )
    p.add_argument(
        "--out", metavar="DIR", default="runs/reproduce", help="folder for run files and figures"
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per run [the default config's]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--no-figures", action="store_true", help="skip writing figures")
    return parser


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Config file (if any), then the flags that were given."""
    cfg = RunConfig.from_toml(args.config) if args.config else RunConfig()
    overrides: dict[str, Any] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = list(value) if isinstance(value, list) else value
    return cfg.replace(overrides) if overrides else cfg


def default_out(cfg: RunConfig) -> Path:
    part = cfg.data.partition + (f"{cfg.data.alpha:g}" if cfg.data.partition == "dirichlet" else "")
    return Path("runs") / f"{cfg.data.dataset}-{cfg.train.algorithm}-{part}-seed{cfg.seed}.h5"


def cmd_run(args: argparse.Namespace) -> int:
    from driftscope.training import train

    cfg = resolve_config(args)
    out = Path(args.out) if args.out else default_out(cfg)
    if out.exists() and not args.overwrite:
        raise DriftscopeError(f"{out} already exists: choose another --out or pass --overwrite")
    train(cfg, out, overwrite=args.overwrite, progress=not args.quiet)
    from driftscope.reader import open_run

    with open_run(out) as run:
        m = run.metrics
        last = m.iloc[-1]
        print(
            f"wrote {out}: {len(m)} rounds, final test accuracy {last.test_accuracy:.4f}, "
            f"{run.bytes_per_round / 1e6:.2f} MB per round"
        )
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from driftscope.analysis.tables import drift_table, layer_summary
    from driftscope.reader import open_run
    from driftscope.report import format_summary

    with open_run(args.run) as run:
        summary = layer_summary(run)
        print(format_summary(run, summary))
        if args.csv:
            table = drift_table(run)
            Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.csv, index=False)
            print(f"wrote {args.csv} ({len(table)} rows)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from driftscope.reader import open_run
    from driftscope.report import format_inspect

    with open_run(args.run) as run:
        print(format_inspect(run))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from driftscope.figures import write_figures
    from driftscope.reader import open_run

    runs = [open_run(p) for p in args.runs]
    try:
        written = write_figures(runs, args.out)
    finally:
        for run in runs:
            run.close()
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from driftscope.compare import compare, summarize
    from driftscope.report import markdown_table

    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    results = compare(base, args.seeds, Path(args.out), args.target, progress=not args.quiet)
    if args.csv:
        results.to_csv(args.csv, index=False)
    print(markdown_table(summarize(results, args.target)))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from driftscope.reproduce import reproduce

    reproduce(
        out_dir=Path(args.out),
        rounds=args.rounds,
        seed=args.seed,
        progress=not args.quiet,
        figures=not args.no_figures,
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "analyze": cmd_analyze,
    "inspect": cmd_inspect,
    "figures": cmd_figures,
    "compare": cmd_compare,
    "reproduce": cmd_reproduce,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DriftscopeError as err:
        print(f"driftscope: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("driftscope: interrupted; the run file keeps every completed round", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
