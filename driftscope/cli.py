"""The ``driftscope`` command: run, analyze, inspect, figures, compare, reproduce.

User errors (:class:`~driftscope.errors.DriftscopeError`) print one line and exit non-zero (2 for
usage errors) without a traceback.

Parsing is torch-free: the run flags, their choices and the algorithm-parameter flags
(``--mu``, ``--body-momentum``, ...) are built from the config defaults and the registries
(:data:`~driftscope.algorithms.ALGORITHMS`, :data:`~driftscope.data.DATASETS`,
:data:`~driftscope.models.MODELS`), and every heavy module (torch, pandas, h5py, matplotlib) is
imported inside the command that needs it. ``driftscope --help`` and usage errors stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftscope.algorithms import ALGORITHMS
from driftscope.config import PARTITIONS, UPDATE_DTYPES, RunConfig, annotation_text
from driftscope.data import DATASETS
from driftscope.errors import ConfigError, DriftscopeError
from driftscope.models import MODELS

# Thread policy: below this many parameters one torch thread is used (see choose_threads).
SMALL_MODEL_PARAMS = 1_000_000


@dataclass(frozen=True)
class Flag:
    """One ``run`` flag that sets one dotted config key."""

    key: str  # dotted config key
    help: str
    group: str
    kind: str = "value"  # "value", "bool" (--x/--no-x), "list" (nargs +)
    type: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    name: str | None = None  # the flag without dashes; default: the key's last part

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.key.split(".")[-1]).replace("_", "-")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _names(registry: Any) -> str:
    return ", ".join(registry.names())


def _general_flags() -> list[Flag]:
    """The flags for the general config keys (the algorithm's own parameters come from ALGORITHMS)."""
    return [
        Flag("data.dataset", f"one of: {_names(DATASETS)}", "data", metavar="NAME"),
        Flag(
            "data.data_dir",
            "where torchvision datasets are cached [$DRIFTSCOPE_DATA or data_cache]",
            "data",
            metavar="DIR",
        ),
        Flag("data.partition", "how data is split across clients", "data", choices=PARTITIONS),
        Flag("data.alpha", "Dirichlet concentration; smaller = more skew", "data", type=float),
        Flag(
            "data.classes_per_client", "classes per client for --partition shards", "data", type=int
        ),
        Flag(
            "data.augment", "crop+flip augmentation [dataset default: on for CIFAR]", "data", "bool"
        ),
        Flag("model.name", f"one of: {_names(MODELS)}", "model", metavar="NAME", name="model"),
        Flag(
            "model.head",
            "parameter-name patterns forming the head, e.g. 'classifier.*' [the model's own head]",
            "model",
            "list",
            metavar="PATTERN",
        ),
        Flag(
            "model.head_last_k", "the last K layers form the head", "model", type=int, metavar="K"
        ),
        Flag("train.algorithm", f"one of: {_names(ALGORITHMS)}", "training", metavar="NAME"),
        Flag("train.rounds", "communication rounds", "training", type=int),
        Flag("train.clients", "number of clients", "training", type=int),
        Flag("train.client_fraction", "share of clients sampled per round", "training", type=float),
        Flag("train.local_epochs", "local epochs per round", "training", type=int),
        Flag(
            "train.local_steps",
            "fixed local SGD steps per round (replaces epochs)",
            "training",
            type=int,
        ),
        Flag("train.batch_size", "local batch size", "training", type=int),
        Flag("train.drop_last", "drop each client's last incomplete batch", "training", "bool"),
        Flag("train.lr", "local learning rate", "training", type=float),
        Flag("train.momentum", "local SGD momentum", "training", type=float),
        Flag("train.weight_decay", "weight decay", "training", type=float),
        Flag("train.server_lr", "server learning rate", "training", type=float),
        Flag(
            "train.weighting",
            "client weights in the average",
            "training",
            choices=("uniform", "samples"),
        ),
        Flag(
            "train.batched",
            "train a round's clients in one vmapped step (auto: from 32 clients, small inputs)",
            "training",
            choices=("auto", "on", "off"),
        ),
        Flag("train.eval_every", "evaluate the global model every K rounds", "training", type=int),
        Flag(
            "train.device",
            "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps",
            "training",
            metavar="DEVICE",
        ),
        Flag(
            "train.state_budget_mb",
            "MiB of memory for per-client state (control variates); beyond it a scratch file",
            "training",
            type=float,
            metavar="MIB",
        ),
        Flag("seed", "fixes partition, init, sampling and batch order", "training", type=int),
        Flag(
            "record.enabled",
            "record per-layer drift (--no-record for baselines)",
            "recording",
            "bool",
            name="record",
        ),
        Flag(
            "record.every",
            "record Gram matrices every K rounds",
            "recording",
            type=int,
            metavar="K",
            name="record_every",
        ),
        Flag(
            "record.updates_every",
            "store full client updates every K recorded rounds; 0 = never",
            "recording",
            type=int,
            metavar="K",
        ),
        Flag("record.update_dtype", "dtype of stored updates", "recording", choices=UPDATE_DTYPES),
        Flag(
            "record.update_layers",
            "store updates only for parameters matching these patterns",
            "recording",
            "list",
            metavar="PATTERN",
        ),
        Flag(
            "record.probe_size", "probe inputs for activation CKA; 0 = off", "recording", type=int
        ),
        Flag(
            "record.cka_every",
            "probe CKA every K recorded rounds",
            "recording",
            type=int,
            metavar="K",
        ),
    ]


def _optional(parse: Any) -> Any:
    """A flag type that also accepts 'none' (the config's None)."""

    def convert(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = parse.__name__  # argparse names the type in its error message
    return convert


def _param_flags() -> list[Flag]:
    """One flag per algorithm-parameter name over every registered algorithm."""
    owners: dict[str, list[str]] = {}
    fields: dict[str, dataclasses.Field] = {}
    for name, algo in ALGORITHMS.items():
        for f in dataclasses.fields(algo.Params):
            owners.setdefault(f.name, []).append(name)
            fields.setdefault(f.name, f)
    flags = []
    for pname, f in fields.items():
        annotation = annotation_text(f.type)
        base = {"float": float, "int": int, "str": str, "bool": bool}.get(
            annotation.split("|")[0].strip(), str
        )
        kind = "bool" if base is bool else "value"
        parse = _optional(base) if "None" in annotation else base
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} ({', '.join(owners[pname])}) [{default}]"
        if "None" in annotation and "none" not in help_text:
            help_text += " ('none' for none)"
        flags.append(
            Flag(
                f"train.params.{pname}",
                help_text,
                "algorithm parameters",
                kind,
                type=parse if kind == "value" else None,
                choices=f.metadata.get("choices"),
            )
        )
    return flags


def param_owners() -> dict[str, tuple[str, ...]]:
    """Parameter name -> the algorithms that have it."""
    out: dict[str, list[str]] = {}
    for name, algo in ALGORITHMS.items():
        for f in dataclasses.fields(algo.Params):
            out.setdefault(f.name, []).append(name)
    return {k: tuple(v) for k, v in out.items()}


def run_flags() -> list[Flag]:
    """Every config flag of ``driftscope run``: the general ones, then the algorithm parameters."""
    flags = _general_flags() + _param_flags()
    seen: dict[str, str] = {}
    for f in flags:
        if f.dest in seen:
            raise ValueError(f"flag {f.flag} would set both {seen[f.dest]} and {f.key}")
        seen[f.dest] = f.key
    return flags


def flag_keys() -> dict[str, str]:
    """argparse dest -> dotted config key, for every config flag of ``driftscope run``."""
    return {f.dest: f.key for f in run_flags()}


FLAG_KEYS = flag_keys()  # as registered at import; build_parser() re-reads the registries


def _default_of(key: str, defaults: dict[str, Any]) -> Any:
    node: Any = defaults
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_dict()
    groups: dict[str, Any] = {}
    for f in run_flags():
        if f.group not in groups:
            groups[f.group] = p.add_argument_group(f.group)
        g = groups[f.group]
        help_text = f.help
        if not f.key.startswith("train.params.") and "[" not in help_text:
            default = _default_of(f.key, defaults)
            shown = ", ".join(default) if isinstance(default, list | tuple) else default
            help_text += f" [{shown}]"
        common: dict[str, Any] = {"dest": f.dest, "help": help_text, "default": argparse.SUPPRESS}
        if f.kind == "bool":
            g.add_argument(f.flag, action=argparse.BooleanOptionalAction, **common)
        elif f.kind == "list":
            g.add_argument(f.flag, nargs="+", metavar=f.metavar, **common)
        else:
            metavar = f.metavar or (None if f.choices else "N" if f.type is int else "X")
            g.add_argument(f.flag, type=f.type, choices=f.choices, metavar=metavar, **common)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads [1 for models under 1M parameters, else torch's default]",
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
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file; flags override it")
    p.add_argument(
        "--out",
        metavar="PATH",
        help="run file to write [runs/<dataset>-<algorithm>-<partition>-seed<seed>.h5]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--resume",
        metavar="RUN.h5",
        help="continue this interrupted, failed or killed run from its last committed round, "
        "with its own config (flags given must agree with it)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_threads(p)
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=("inprocess", "flower"),
        default="inprocess",
        help="inprocess: every client in this process; flower: Flower's simulation engine "
        "(pip install 'driftscope[flower]'), the same run file",
    )
    g.add_argument(
        "--supernodes",
        type=int,
        metavar="N",
        help="--engine flower: virtual SuperNodes, one per client [--clients]",
    )
    g.add_argument(
        "--client-cpus", type=float, default=1.0, help="--engine flower: CPUs per ClientApp"
    )
    g.add_argument(
        "--client-gpus", type=float, default=0.0, help="--engine flower: GPUs per ClientApp"
    )
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
        help="also write the tidy table (round, layer, label, group, metric, value): drift "
        "metrics and label_alignment, label_alignment_p",
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
    p.add_argument("--target", type=float, default=0.9, help="target test accuracy, in (0, 1]")
    p.add_argument("--out", metavar="DIR", default="runs/compare", help="folder for run files")
    p.add_argument("--csv", metavar="PATH", help="also write the per-seed results")
    p.add_argument("--quiet", "-q", action="store_true")
    _add_threads(p)

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
    _add_threads(p)
    p.add_argument("--dataset", default="digits", help="dataset [digits]; e.g. mnist1d")
    p.add_argument("--model", default=None, help="model [cnn1d for mnist1d, else small_cnn]")
    return parser


def resolve_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Config file (if any; else ``base`` or the default), then the flags that were given.

    An algorithm-parameter flag must belong to the algorithm in effect (from the flags or the file).
    """
    cfg = (
        RunConfig.from_toml(args.config) if getattr(args, "config", None) else (base or RunConfig())
    )
    overrides: dict[str, Any] = {}
    for dest, key in flag_keys().items():
        if hasattr(args, dest):
            value = getattr(args, dest)
            overrides[key] = list(value) if isinstance(value, list) else value
    algorithm = overrides.get("train.algorithm", cfg.train.algorithm)
    if algorithm in ALGORITHMS:
        own = {f.name for f in dataclasses.fields(ALGORITHMS.get(algorithm).Params)}
        owners = param_owners()
        for key in overrides:
            name = key.removeprefix("train.params.")
            if key.startswith("train.params.") and name not in own:
                flag = "--" + name.replace("_", "-")
                them = " or ".join(owners.get(name, ()))
                raise ConfigError(
                    f"{flag} is a parameter of {them}, not of {algorithm}: "
                    f"drop {flag} or choose --algorithm {owners[name][0]}"
                )
    return cfg.replace(overrides) if overrides else cfg


def choose_threads(num_params: int, requested: int | None, default: int) -> tuple[int, str]:
    """torch intra-op threads for a model of ``num_params`` parameters, and the reason.

    ``requested`` (``--threads``) wins. Otherwise models under :data:`SMALL_MODEL_PARAMS` (1M)
    parameters get 1 thread: their per-batch kernels are too small to split across threads, and on
    shared cores extra threads only wait for each other (benchmarks/README.md). Larger models
    keep torch's ``default`` (the core count, or ``OMP_NUM_THREADS``).
    """
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads must be >= 1 (got {requested})")
        return requested, "--threads"
    if num_params < SMALL_MODEL_PARAMS:
        return 1, f"{num_params:,} parameters < {SMALL_MODEL_PARAMS:,}: one thread is fastest"
    return default, f"{num_params:,} parameters: torch's default"


def apply_threads(cfg: RunConfig, requested: int | None) -> str:
    """Set torch's thread count by :func:`choose_threads`; return the line that says so.

    The commands print that line once, with their result (so a user error stays one line).
    The run file records the count (``environment.torch_threads``).
    """
    import torch

    ds = DATASETS.get(cfg.data.dataset)
    num_params = MODELS.get(cfg.model.name).num_params(ds.input_shape, ds.num_classes)
    threads, why = choose_threads(num_params, requested, torch.get_num_threads())
    torch.set_num_threads(threads)
    return f"torch threads: {threads} ({cfg.model.name}, {why})"


def warn_about(cfg: RunConfig) -> None:
    """Print the chosen algorithm's warnings about questionable but legal settings."""
    for line in ALGORITHMS.get(cfg.train.algorithm).warnings(cfg.train):
        print(f"driftscope: warning: {line}", file=sys.stderr)


def default_out(cfg: RunConfig) -> Path:
    part = cfg.data.partition + (f"{cfg.data.alpha:g}" if cfg.data.partition == "dirichlet" else "")
    return Path("runs") / f"{cfg.data.dataset}-{cfg.train.algorithm}-{part}-seed{cfg.seed}.h5"


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        import json

        from driftscope.runfile import resume_config, stored_threads

        out = Path(args.resume)
        if (args.out and Path(args.out) != out) or args.overwrite:
            raise DriftscopeError("--resume continues RUN.h5 in place: drop --out and --overwrite")
        stored = RunConfig.from_dict(json.loads(resume_config(out)), source=str(out))
        cfg = resolve_config(args, stored)
        requested = args.threads if args.threads is not None else stored_threads(out)
    else:
        cfg = resolve_config(args)
        out = Path(args.out) if args.out else default_out(cfg)
        from driftscope.runfile import check_output

        check_output(out, args.overwrite)  # before any data is loaded or any file is touched
        requested = args.threads
    warn_about(cfg)
    threads = apply_threads(cfg, requested)
    if args.engine == "flower":
        from driftscope.flower import require_flwr

        require_flwr(simulation=True)
        if args.resume:
            raise DriftscopeError(
                "--resume is not available with --engine flower: resume with --engine inprocess"
            )
        from driftscope.flower.simulation import run_simulation

        run_simulation(
            cfg,
            out,
            supernodes=args.supernodes,
            client_cpus=args.client_cpus,
            client_gpus=args.client_gpus,
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
    else:
        from driftscope.training import train

        train(cfg, out, overwrite=args.overwrite, progress=not args.quiet, resume=bool(args.resume))
    from driftscope.reader import open_run

    with open_run(out) as run:
        m = run.metrics
        last = m.iloc[-1]
        print(
            f"wrote {out}: {len(m)} rounds, final test accuracy {last.test_accuracy:.4f}, "
            f"{run.bytes_per_round / 1e6:.2f} MB per round"
        )
    print(threads)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from driftscope.analysis.tables import drift_table, layer_summary
    from driftscope.reader import open_run
    from driftscope.report import format_summary
    from driftscope.runfile import check_output

    if args.csv:
        check_output(args.csv, overwrite=True, what="--csv")
    with open_run(args.run) as run:
        try:
            summary = layer_summary(run)
        except DriftscopeError as err:  # damaged records: say which, show what is readable
            print(format_summary(run, None))
            print(f"driftscope: drift metrics unreadable: {err}", file=sys.stderr)
            return 2
        print(format_summary(run, summary))
        if args.csv:
            import pandas as pd

            from driftscope.analysis.attribution import label_alignment_table

            table = pd.concat([drift_table(run), label_alignment_table(run)], ignore_index=True)
            try:
                table.to_csv(args.csv, index=False)
            except OSError as err:
                raise DriftscopeError(f"cannot write {args.csv}: {err.strerror}") from None
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

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DriftscopeError(f"{out} is a file, not a folder: give --out a folder for the figures")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DriftscopeError(
            f"cannot create {out}: {err.strerror}; choose another --out"
        ) from None
    runs = []
    try:
        for p in args.runs:
            runs.append(open_run(p))
        try:
            written = write_figures(runs, out)
        except OSError as err:
            raise DriftscopeError(f"cannot write figures into {out}: {err.strerror}") from None
    finally:
        for run in runs:
            run.close()
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.target <= 1:
        raise ConfigError(f"--target must be in (0, 1] (got {args.target}): a test accuracy")
    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    threads = apply_threads(base, args.threads)
    from driftscope.experiments import compare, summarize
    from driftscope.report import format_compare, markdown_table

    results = compare(base, args.seeds, Path(args.out), args.target, progress=not args.quiet)
    if args.csv:
        results.to_csv(args.csv, index=False)
    print(markdown_table(format_compare(summarize(results), args.target)))
    print(threads)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    threads = apply_threads(RunConfig(), args.threads)
    from driftscope.experiments import reproduce
    from driftscope.report import format_reproduce

    result = reproduce(
        out_dir=Path(args.out),
        rounds=args.rounds,
        seed=args.seed,
        progress=not args.quiet,
        figures=not args.no_figures,
        log=lambda line: print(line, flush=True),
        dataset=args.dataset,
        model=args.model,
    )
    print(format_reproduce(result))
    print(threads)
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
    from driftscope.signals import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return COMMANDS[args.command](args)
    except DriftscopeError as err:
        print(f"driftscope: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (driftscope.signals.Terminated)
        from driftscope.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

        terminated = isinstance(err, Terminated)
        print(
            f"driftscope: {'terminated (SIGTERM)' if terminated else 'interrupted'}; "
            "the run file keeps every completed round (continue with run --resume RUN.h5)",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
