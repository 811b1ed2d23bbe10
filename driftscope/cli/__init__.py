"""The ``driftscope`` command: run, analyze, advise, inspect, figures, compare, reproduce.

User errors (:class:`~driftscope.errors.DriftscopeError`) print one line and exit non-zero (2 for
usage errors) without a traceback.

Parsing is torch-free: the run flags, their choices and the algorithm-parameter flags
(``--mu``, ``--body-momentum``, ...) are built from the config defaults and the registries
(:data:`~driftscope.algorithms.ALGORITHMS`, :data:`~driftscope.data.DATASETS`,
:data:`~driftscope.models.registry.MODELS`), and every heavy module (torch, pandas, h5py, matplotlib) is
imported inside the command that needs it. ``driftscope --help`` and usage errors stay fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from driftscope.cli.commands import COMMANDS
from driftscope.cli.flags import add_run_flags, add_threads
from driftscope.errors import DriftscopeError, SettingsWarning

#: ``compare --arms`` names, as registered in ``experiments.ARMS`` (kept here so parsing stays
#: free of pandas; a test holds the two equal)
COMPARE_ARM_NAMES = (
    "fedavg",
    "scaffold",
    "fedpvr_body_momentum_09",
    "fedpvr_no_momentum",
    "fedavg_body_momentum_09",
    "scaffold_lr_001",
    "fedpvr_auto",
)

__all__ = ["COMMANDS", "COMPARE_ARM_NAMES", "build_parser", "main"]


def build_parser(commands_only: bool = False) -> argparse.ArgumentParser:
    """The ``driftscope`` parser; ``commands_only``: without ``run``'s config flags (enough for the
    top-level help, which lists the commands)."""
    parser = argparse.ArgumentParser(
        prog="driftscope",
        description="See where in a neural network federated learning drifts.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) before the command: its registered "
        "models, datasets, algorithms and metrics become choices (repeatable; also "
        "$DRIFTSCOPE_PLUGINS, comma-separated, and the 'driftscope.plugins' entry points)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        # no abbreviated flags: "--epoch 3" would silently mean whichever flag it prefixes
        return sub.add_parser(name, allow_abbrev=False, **kwargs)

    p = add_command(
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
        help="run file to write [runs/<dataset>-<algorithm>-<partition>-seed<seed>.h5; "
        "settings not the default are added: -<model>, -<N>clients, -<N>rounds, -lr<LR>]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--resume",
        metavar="RUN.h5",
        help="continue this interrupted, failed or killed run from its last committed round, "
        "with its own config (flags given must agree with it)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="KIND[=TARGET]",
        help="also log each committed round live: tensorboard=DIR, mlflow=URI (e.g. "
        "sqlite:///mlflow.db) or wandb[=DIR] (offline unless an API key is set); repeatable; "
        "extras driftscope[tensorboard], [mlflow], [wandb]",
    )
    add_threads(p)
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
    g.add_argument("--client-cpus", type=float, help="--engine flower: CPUs per ClientApp [1]")
    g.add_argument("--client-gpus", type=float, help="--engine flower: GPUs per ClientApp [0]")
    g.add_argument(
        "--verbose",
        action="store_true",
        help="--engine flower: show Flower's own INFO log (default: its warnings only)",
    )
    if not commands_only:  # the top-level help lists the commands, not their flags
        add_run_flags(p)

    p = add_command(
        "analyze",
        help="per-layer drift summary of a run",
        description="Print a per-layer drift summary (layers in model order, head marked, aggregated over rounds).",
    )
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument(
        "--csv",
        metavar="PATH",
        help="also write the tidy table (round, layer, label, group, metric, value): drift "
        "metrics and label_alignment, label_alignment_p; for a ratio metric also its numerator "
        "and denominator, named in numerator_name and denominator_name (relative_variance = "
        "update_variance / mean_update_sq_norm): pool rounds as sum(numerator) / sum(denominator)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        metavar="ROUND",
        help="first round of the head-vs-body numbers pooled after a warm-up [a quarter of the "
        "rounds]",
    )

    p = add_command(
        "advise",
        help="per-layer aggregation advice from a run's recorded drift",
        description="Rank a run's layers by measured drift (FedLAMA's layer discrepancy) and "
        "recommend per layer: federate as is, variance-reduce, or keep local / aggregate less "
        "often, with the numbers and thresholds behind each and fedpvr_auto's choice on the same "
        "run (docs/advise.md).",
    )
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument(
        "--from-round",
        type=int,
        default=0,
        metavar="ROUND",
        help="pool the recorded rounds from this round on (skip a warm-up) [0]",
    )
    p.add_argument("--csv", metavar="PATH", help="also write the per-layer table")

    p = add_command(
        "export",
        help="write a run's drift, metrics and figures to TensorBoard, MLflow or W&B",
        description="Write every committed round of a run file (per-layer drift and CKA as "
        "analyze --csv has them, head and body summaries, accuracy, loss, traffic, each "
        "client's train loss; histograms of the clients' update norms), its figures and its "
        "config to TensorBoard (--to tensorboard DIR), MLflow (--to mlflow URI, e.g. "
        "sqlite:///mlflow.db) or Weights & Biases (--to wandb [DIR]; offline unless an API key "
        "is set). Extras: driftscope[tensorboard], [mlflow], [wandb].",
    )
    p.add_argument("run", metavar="RUN.h5")
    p.add_argument(
        "--to",
        nargs="+",
        required=True,
        metavar="KIND [TARGET]",
        help="tensorboard DIR | mlflow URI | wandb [DIR]",
    )
    p.add_argument("--no-figures", action="store_true", help="skip the figures")

    p = add_command(
        "inspect",
        help="what a run file holds",
        description="Print a run file's config, layers, rounds and datasets.",
    )
    p.add_argument("run", metavar="RUN.h5")

    p = add_command(
        "figures",
        help="write every figure the runs support",
        description="Write every figure the given runs support, as PNG and PDF.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output folder [figures/<run name>, runs joined by +; more than 3: "
        "figures/<first run>+<N>-more]",
    )
    p.add_argument("--overwrite", action="store_true", help="replace figures already in --out")

    p = add_command(
        "compare",
        help="algorithms side by side over several seeds",
        description="Train FedAvg, SCAFFOLD and FedPVR (with and without body momentum) for each seed "
        "with the same hyperparameters (the default config, or --config), recording off; print "
        "final accuracy and rounds to a target as mean ± std over seeds, and communication. "
        "--arms picks the arms, e.g. fedavg fedpvr_no_momentum fedpvr_auto (FedPVR with a "
        "drift-chosen head).",
    )
    p.add_argument("--config", metavar="FILE", help="base TOML config [the default]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--target", type=float, default=0.9, help="target test accuracy, in (0, 1]")
    p.add_argument("--out", metavar="DIR", default="runs/compare", help="folder for run files")
    p.add_argument(
        "--arms",
        nargs="+",
        metavar="ARM",
        help=f"arms to train, in this order: any of {', '.join(COMPARE_ARM_NAMES)} "
        f"[the first four]",
    )
    p.add_argument("--csv", metavar="PATH", help="also write the per-seed results")
    p.add_argument("--quiet", "-q", action="store_true")
    add_threads(p)

    p = add_command(
        "reproduce",
        help="FedAvg vs SCAFFOLD vs FedPVR on the embedded default, and the observation",
        description="Run FedAvg, SCAFFOLD and FedPVR on the embedded digits (alpha 0.1) and an IID "
        "FedAvg control; print where drift lives, accuracy and communication; write figures.",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="folder for run files and figures [runs/reproduce-<dataset>, plus -<model>, "
        "-<N>rounds, -seed<K> where not the default]",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a reproduce of other settings (dataset, model, rounds, seed) in --out",
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per run [the default config's]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", "-q", action="store_true")
    p.add_argument("--no-figures", action="store_true", help="skip writing figures")
    add_threads(p)
    p.add_argument("--dataset", default="digits", help="dataset [digits]; e.g. mnist1d")
    p.add_argument("--model", default=None, help="model [cnn1d for mnist1d, else small_cnn]")
    p.add_argument(
        "--scenario",
        choices=("default", "lora"),
        default="default",
        help="lora: federated fine-tuning of a pretrained tiny ViT with PEFT LoRA adapters "
        "(3 seeds, Dirichlet 0.1 and 1.0, IID; docs/lora.md; needs the lora extra)",
    )
    p.add_argument("--quick", action="store_true", help="--scenario lora at test size")
    return parser


def _show_warning(show: Any) -> Any:
    """``warnings.showwarning`` that prints a :class:`SettingsWarning` (emitted by
    :func:`driftscope.train` and the Flower strategy) as one ``driftscope: warning:`` line and
    hands every other warning to ``show``."""

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, SettingsWarning):
            print(f"driftscope: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def _plugin_args(argv: Sequence[str]) -> list[str]:
    """The ``--plugin`` values given before the command (read before the parser is built, since
    the plugins' registrations become its choices and flags)."""
    names: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg == "--plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            names.append(arg.split("=", 1)[1])
        i += 1
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """The ``driftscope`` command; ``argv`` None: the process's own arguments (then a stop by a
    signal also keeps later signals from interrupting the process's exit)."""
    code = _main(argv)
    if argv is None and code in (130, 143):  # = signals.EXIT_INTERRUPTED, EXIT_TERMINATED
        import signal

        # the interpreter's exit still runs library finalizers: a second Ctrl-C must not
        # turn the one-line message into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from driftscope.engine.signals import exit_unless_threads_end

        exit_unless_threads_end(code)  # Flower's engine threads may never end
    return code


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from driftscope import plugins

    try:
        # installed entry points are looked up for every command, not for the top-level help
        help_only = not argv or argv[0] in ("-h", "--help")
        loaded = plugins.load_plugins(_plugin_args(argv), entry_points=not help_only)
        plugins.export(loaded)  # the Flower engine's workers import the same plugins
    except DriftscopeError as err:
        print(f"driftscope: error: {err}", file=sys.stderr)
        return err.exit_code
    parser = build_parser(commands_only=help_only)
    args = parser.parse_args(argv)
    from driftscope.engine.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():  # also around the messages: a second signal waits for them
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default", SettingsWarning)  # each text once per main()
                warnings.showwarning = _show_warning(warnings.showwarning)
                return COMMANDS[args.command](args)
        except DriftscopeError as err:
            print(f"driftscope: error: {err}", file=sys.stderr)
            return err.exit_code
        except (
            KeyboardInterrupt
        ) as err:  # Ctrl-C, or SIGTERM (driftscope.engine.signals.Terminated)
            from driftscope.engine.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated

            terminated = isinstance(err, Terminated)
            hint = (
                "; the run file keeps every completed round (continue with run --resume RUN.h5)"
                if args.command == "run"
                else ""
            )
            print(
                f"driftscope: {'terminated (SIGTERM)' if terminated else 'interrupted'}{hint}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
