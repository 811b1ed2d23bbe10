"""The ``driftscope`` commands: each parses nothing, loads what it needs, returns an exit code.

Heavy modules (torch, pandas, h5py, matplotlib) are imported inside each command, so parsing and
``--help`` stay fast (:mod:`driftscope.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from driftscope.cli.flags import apply_threads, check_fits, default_out, resolve_config
from driftscope.config import RunConfig
from driftscope.errors import ConfigError, DriftscopeError

if TYPE_CHECKING:
    from driftscope.engine.events import Hook

FLOWER_ONLY = ("supernodes", "client_cpus", "client_gpus")


def cmd_run(args: argparse.Namespace) -> int:
    given = [name for name in FLOWER_ONLY if getattr(args, name, None) is not None]
    if args.engine != "flower" and given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} applies to --engine flower only: drop it or add --engine flower")
    if args.resume:
        import json

        from driftscope.runfile.resume import resume_config, stored_threads

        out = Path(args.resume)
        if (args.out and Path(args.out) != out) or args.overwrite:
            raise DriftscopeError("--resume continues RUN.h5 in place: drop --out and --overwrite")
        stored = RunConfig.from_dict(json.loads(resume_config(out)), source=str(out))
        cfg = resolve_config(args, stored)
        requested = args.threads if args.threads is not None else stored_threads(out)
    else:
        cfg = resolve_config(args)
        check_fits(cfg)
        from driftscope.runfile.outputs import check_output

        # before any data is loaded or any file is touched; an empty --out is refused, not the default
        out = check_output(args.out if args.out is not None else default_out(cfg), args.overwrite)
        requested = args.threads
    threads = apply_threads(cfg, requested)
    hooks: list[Hook] = []
    if args.log:
        from driftscope.export import LiveLogger

        hooks = [LiveLogger(spec, out) for spec in args.log]  # a missing extra fails here
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
            client_cpus=1.0 if args.client_cpus is None else args.client_cpus,
            client_gpus=0.0 if args.client_gpus is None else args.client_gpus,
            overwrite=args.overwrite,
            quiet=not args.verbose,
            hooks=hooks,
        )
    else:
        import torch

        from driftscope.engine.training import train

        train(
            cfg,
            out,
            overwrite=args.overwrite,
            progress=not args.quiet,
            resume=bool(args.resume),
            hooks=hooks,
            threads=torch.get_num_threads(),  # apply_threads' choice, printed below
        )
    from driftscope.runfile.reader import open_run

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
    from driftscope.analysis.evidence import has_head_and_body, head_vs_body
    from driftscope.analysis.tables import drift_table, layer_summary, name_ratio_parts
    from driftscope.experiments.report import format_summary
    from driftscope.runfile.outputs import check_output
    from driftscope.runfile.reader import open_run

    if args.warmup is not None and args.warmup < 0:
        raise ConfigError(f"--warmup must be a round >= 0 (got {args.warmup})")
    if args.csv is not None:
        check_output(args.csv, overwrite=True, what="--csv")
    with open_run(args.run) as run:
        try:
            table = drift_table(run, parts=True)
            summary = layer_summary(run)
            # an empty head: the table alone, and a note saying why there is no comparison
            evidence = head_vs_body(run, args.warmup, table) if has_head_and_body(run) else None
        except DriftscopeError as err:  # damaged records: say which, show what is readable
            print(format_summary(run, None))
            print(f"driftscope: drift metrics unreadable: {err}", file=sys.stderr)
            return 2
        print(format_summary(run, summary, evidence))
        if run.has_client_eval:
            from driftscope.analysis.client_eval import format_client_spread

            print()
            print(format_client_spread(run))
        if args.csv is not None:
            import pandas as pd

            from driftscope.analysis.attribution import label_alignment_table

            tables = [name_ratio_parts(table)]
            if run.has_label_histogram:  # a recorded Flower app may not report its labels
                tables.append(label_alignment_table(run))
            table = pd.concat(tables, ignore_index=True)
            try:
                table.to_csv(args.csv, index=False)
            except OSError as err:
                raise DriftscopeError(f"cannot write {args.csv}: {err.strerror}") from None
            print(f"wrote {args.csv} ({len(table)} rows)")
    return 0


def cmd_advise(args: argparse.Namespace) -> int:
    from driftscope.analysis.advise import advise
    from driftscope.analysis.advise_report import format_advice
    from driftscope.runfile.outputs import check_output
    from driftscope.runfile.reader import open_run

    if args.from_round < 0:
        raise ConfigError(f"--from-round must be a round >= 0 (got {args.from_round})")
    if args.csv is not None:
        check_output(args.csv, overwrite=True, what="--csv")
    with open_run(args.run) as run:
        advice = advise(run, args.from_round)
        print(format_advice(run, advice))
    if args.csv is not None:
        try:
            advice.table.to_csv(args.csv, index=False)
        except OSError as err:
            raise DriftscopeError(f"cannot write {args.csv}: {err.strerror}") from None
        print(f"wrote {args.csv} ({len(advice.table)} layers)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from driftscope.experiments.report import format_inspect
    from driftscope.runfile.reader import open_run

    with open_run(args.run) as run:
        print(format_inspect(run))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from driftscope.figures import write_figures
    from driftscope.runfile.outputs import check_folder
    from driftscope.runfile.reader import open_run

    out_text = args.out if args.out is not None else str(figures_folder(args.runs))
    if not args.overwrite and out_text and Path(out_text).is_dir():
        held = sorted(p.name for p in Path(out_text).iterdir() if p.suffix in (".png", ".pdf"))
        if held:
            raise DriftscopeError(
                f"{out_text} already holds {len(held)} figure files ({held[0]}, ...): "
                "choose another --out or pass --overwrite"
            )
    out = check_folder(out_text)
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


def figures_folder(runs: list[str]) -> Path:
    """``figures/<run name>``, the names of up to 3 runs joined by ``+``, else
    ``figures/<first run>+<N>-more``: figures of other runs never land in the same folder."""
    stems = [Path(r).stem for r in runs]
    name = "+".join(stems) if len(stems) <= 3 else f"{stems[0]}+{len(stems) - 1}-more"
    return Path("figures") / name


def cmd_compare(args: argparse.Namespace) -> int:
    if not 0 < args.target <= 1:
        raise ConfigError(f"--target must be in (0, 1] (got {args.target}): a test accuracy")
    base = RunConfig.from_toml(args.config) if args.config else RunConfig()
    from driftscope.experiments.compare import compare, compare_arms, paired, summarize
    from driftscope.experiments.compare_report import (
        format_compare,
        format_paired,
        markdown_table,
    )

    arms = compare_arms(args.arms)  # an unknown name fails before any training
    from driftscope.runfile.outputs import check_folder, check_output

    if args.csv is not None:
        check_output(args.csv, overwrite=True, what="--csv")
    check_folder(args.out)
    threads = apply_threads(base, args.threads)
    results = compare(
        base,
        args.seeds,
        Path(args.out),
        args.target,
        arms=arms,
        progress=not args.quiet,
        threads=args.threads,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.csv is not None:
        results.to_csv(args.csv, index=False)
    print(markdown_table(format_compare(summarize(results), args.target)))
    final = paired(results)
    if len(final):
        labels = {a.name: a.label for a in arms}
        last = paired(results, column="last_rounds_accuracy")
        print(
            "\nPaired over seeds (each seed: the same partition, initialisation and batches in "
            "every arm), final test accuracy, arm minus reference, in points; last column: the "
            "mean test accuracy of the last 5 rounds:"
        )
        print(markdown_table(format_paired(final, last, labels)))
    print(threads)
    return 0


def cmd_reproduce_lora(args: argparse.Namespace) -> int:
    from driftscope.experiments.lora import LoraSettings, format_lora, run_lora

    if args.dataset != "digits" or args.model is not None or args.rounds is not None:
        raise ConfigError(
            "--scenario lora fixes its dataset, model and rounds: drop --dataset, --model, --rounds"
        )
    from driftscope.runfile.outputs import check_folder

    settings = LoraSettings.quick() if args.quick else LoraSettings()
    default = "runs/reproduce-lora-quick" if args.quick else "runs/reproduce-lora"
    out = check_folder(default if args.out is None else args.out)  # an empty --out: an error
    result = run_lora(
        out,
        settings=settings,
        overwrite=args.overwrite,
        progress=not args.quiet,
        threads=args.threads,
        log=lambda line: print(line, flush=True),
    )
    print(format_lora(result))
    if not args.no_figures:
        from driftscope.figures.lora import write_lora_figures

        for path in write_lora_figures(result.paths, out):
            print(f"wrote {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.scenario == "lora":
        return cmd_reproduce_lora(args)
    if args.quick:
        raise ConfigError("--quick is for --scenario lora")
    from driftscope.data import DATASETS
    from driftscope.runfile.outputs import check_folder

    model = args.model or DATASETS.get(args.dataset).default_model or RunConfig().model.name
    cfg = RunConfig().replace({"data.dataset": args.dataset, "model.name": model})
    check_fits(cfg)  # before any folder or file
    threads = apply_threads(cfg, args.threads)  # its line names the model reproduce trains
    from driftscope.experiments.compare_report import format_reproduce
    from driftscope.experiments.reproduce import check_reproduce_folder, reproduce, reproduce_folder

    out = check_folder(  # an empty --out is an error, not the current folder
        args.out if args.out is not None else reproduce_folder(cfg, args.rounds, args.seed)
    )
    if not args.overwrite:
        check_reproduce_folder(out, cfg, args.rounds, args.seed)
    result = reproduce(
        out_dir=out,
        rounds=args.rounds,
        seed=args.seed,
        progress=not args.quiet,
        figures=not args.no_figures,
        log=lambda line: print(line, flush=True),
        dataset=args.dataset,
        model=args.model,
        threads=args.threads,
    )
    print(format_reproduce(result))
    print(threads)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from driftscope.export import export_run
    from driftscope.export.sinks import parse_target

    if len(args.to) > 2:
        raise ConfigError(
            f"--to takes a kind and one target, got {' '.join(args.to)}: e.g. --to tensorboard DIR"
        )
    kind, target = parse_target("=".join(args.to))
    n = export_run(args.run, kind, target, figures=not args.no_figures)
    where = target or "."
    print(f"exported {n} rounds of {args.run} to {kind} at {where}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "analyze": cmd_analyze,
    "advise": cmd_advise,
    "inspect": cmd_inspect,
    "figures": cmd_figures,
    "export": cmd_export,
    "compare": cmd_compare,
    "reproduce": cmd_reproduce,
}
