"""``reproduce``: the FedPVR paper's observation on the embedded default, from one command.

It trains the :data:`~driftscope.experiments.compare.REPRODUCE_ARMS` (FedAvg under label skew and IID,
SCAFFOLD, FedPVR), reads the run files back and RETURNS where drift lives, how aligned each
algorithm's updates are and the accuracy table; the CLI prints them with :mod:`driftscope.experiments.report`.
A diverged arm is reported as diverged at its round while the other arms go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftscope.analysis.evidence import depth_trend, head_vs_body
from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.config import RunConfig
from driftscope.data import DATASETS, load_dataset
from driftscope.errors import DriftscopeError, RunFileError
from driftscope.experiments.compare import REPRODUCE_ARMS, Arm, Log, _quiet, train_arm
from driftscope.runfile.reader import open_run

__all__ = ["ReproduceResult", "check_reproduce_folder", "reproduce", "reproduce_folder"]


@dataclass(frozen=True)
class ReproduceResult:
    """What :func:`reproduce` found.

    Attributes:
        paths: run file of each arm, by arm name.
        labels: arm name -> label.
        layers: FedAvg per layer (model order), ``label, group`` then ``relative_variance``,
            ``mean_pairwise_cosine`` and ``cka`` for alpha 0.1 and for the IID control (suffixes
            ``" a=0.1"`` and ``" iid"``), pooled over rounds as ``layer_summary`` pools them.
        head_vs_body: ``analysis.evidence.head_vs_body`` of the FedAvg run of each partition
            (column ``partition`` first): pooled, pooled after the warm-up, and per round.
        accuracy: per arm: final and best test accuracy, MB and FedAvg multiples per round, status.
        diverged: arm name -> the divergence message, for arms that diverged.
        figures: the figure files written (empty when figures were off).
        figures_dir: where they went.
        depth: per partition, the Spearman correlation of relative variance with depth over all
            layers (``"all"``) and through the body (``"body"``).
        alignment: per arm of the skewed partition: the head's and the body's relative variance,
            mean pairwise cosine and CKA (group means of the pooled per-layer values): how
            algorithms compare.
    """

    paths: dict[str, Path]
    labels: dict[str, str]
    layers: pd.DataFrame
    head_vs_body: pd.DataFrame
    accuracy: pd.DataFrame
    diverged: dict[str, str]
    figures: list[Path]
    figures_dir: Path
    depth: pd.DataFrame = field(default_factory=pd.DataFrame)
    alignment: pd.DataFrame = field(default_factory=pd.DataFrame)


def _reproduce_settings(cfg: RunConfig, rounds: int | None, seed: int) -> dict[str, Any]:
    return {
        "dataset": cfg.data.dataset,
        "model": cfg.model.name,
        "rounds": cfg.train.rounds if rounds is None else rounds,
        "seed": seed,
    }


def reproduce_folder(cfg: RunConfig, rounds: int | None = None, seed: int = 0) -> Path:
    """``runs/reproduce-<dataset>``, plus ``-<model>`` when not the dataset's default model,
    ``-<N>rounds`` and ``-seed<K>`` when not the default's: a folder per experiment, so a
    reproduce of another dataset never lands on the digits demo."""
    own = DATASETS.get(cfg.data.dataset).default_model or RunConfig().model.name
    name = f"reproduce-{cfg.data.dataset}"
    if cfg.model.name != own:
        name += f"-{cfg.model.name}"
    if rounds is not None and rounds != RunConfig().train.rounds:
        name += f"-{rounds}rounds"
    if seed != 0:
        name += f"-seed{seed}"
    return Path("runs") / name


def check_reproduce_folder(
    out_dir: Path,
    cfg: RunConfig,
    rounds: int | None = None,
    seed: int = 0,
    arms: Sequence[Arm] = REPRODUCE_ARMS,
) -> None:
    """Refuse (one line) to write into a folder that holds a reproduce of other settings (dataset,
    model, rounds, seed) or run files it cannot read: they would be replaced. A reproduce of the
    same settings may be run again (the same runs)."""
    want = _reproduce_settings(cfg, rounds, seed)
    for arm in arms:
        path = out_dir / f"{arm.name}.h5"
        if not path.exists():
            continue
        try:
            with open_run(path) as run:
                have = _reproduce_settings(run.config, None, run.config.seed)
        except DriftscopeError:
            have = None
        if have != want:
            held = (
                "a run file it cannot read"
                if have is None
                else ", ".join(f"{k} {v}" for k, v in have.items())
            )
            raise RunFileError(
                f"{out_dir} holds a reproduce of other settings ({path.name}: {held}); "
                "choose another --out or pass --overwrite"
            )


def reproduce(
    out_dir: Path,
    rounds: int | None = None,
    seed: int = 0,
    progress: bool = True,
    figures: bool = True,
    arms: Sequence[Arm] = REPRODUCE_ARMS,
    log: Log = _quiet,
    dataset: str = "digits",
    model: str | None = None,
    threads: int | None = None,
) -> ReproduceResult:
    """Run the arms on the default config (embedded digits, Dirichlet alpha 0.1) into
    ``out_dir``, overwriting earlier reproduce runs there, and read the observation back.

    ``log`` receives one line per event (``"[fedavg] training ..."`` when ``progress``; a line
    for each arm that diverged). The arms must include ``fedavg`` and ``fedavg-iid``.
    ``dataset``/``model``: another dataset, e.g. ``"mnist1d"`` (``model`` defaults to
    the dataset's ``default_model``, else the config's); every other setting stays the default
    config's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or DATASETS.get(dataset).default_model or RunConfig().model.name
    data = load_dataset(dataset)
    paths: dict[str, Path] = {}
    diverged: dict[str, str] = {}
    for arm in arms:
        overrides: dict[str, Any] = {"seed": seed, "data.dataset": dataset, "model.name": model}
        if rounds is not None:
            overrides["train.rounds"] = rounds
        path = out_dir / f"{arm.name}.h5"
        if progress:
            log(f"[{arm.name}] training ...")
        path.unlink(missing_ok=True)  # an earlier reproduce's file must not stand in for this one
        err = train_arm(RunConfig(), arm, path, overrides, data, progress, threads)
        if err is not None:
            diverged[arm.name] = str(err)
            kept = "its run file keeps the rounds before" if path.exists() else "no round completed"
            log(f"[{arm.name}] {err}; {kept}")
        if path.exists():
            paths[arm.name] = path
        elif arm.name in PARTITIONS:
            raise DriftscopeError(
                f"reproduce: the {arm.label} run did not complete a round ({err}), and the "
                "observation needs it: try another --seed"
            )
    layers, gaps, depth = _where_drift_lives(paths)
    alignment = _alignment(paths, {a.name: a.label for a in arms}, diverged)
    accuracy = _accuracy(paths)
    written: list[Path] = []
    if figures:
        from driftscope.figures import write_figures

        runs = [open_run(paths[a.name]) for a in arms if a.name in paths]
        try:
            written = write_figures(runs, out_dir / "figures")
        finally:
            for run in runs:
                run.close()
    return ReproduceResult(
        paths=paths,
        labels={a.name: a.label for a in arms},
        layers=layers,
        head_vs_body=gaps,
        accuracy=accuracy,
        diverged=diverged,
        figures=written,
        figures_dir=out_dir / "figures",
        depth=depth,
        alignment=alignment,
    )


#: the per-layer measures reproduce prints: none is a function of another (drift diversity is
#: (1 + relative variance) / S under uniform weights, docs/science.md)
SUMMARY_COLUMNS = ["relative_variance", "mean_pairwise_cosine", "cka"]
PARTITIONS = {"fedavg": "alpha 0.1", "fedavg-iid": "iid"}


def _where_drift_lives(
    paths: Mapping[str, Path],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    summaries = {}
    evidence = []
    depth = []
    for name, partition in PARTITIONS.items():
        with open_run(paths[name]) as run:
            table = drift_table(run, parts=True)
            summaries[name] = s = layer_summary(run)
            evidence.append(head_vs_body(run, table=table).assign(partition=partition))
        rv = s["relative_variance"]
        depth.append(
            {
                "partition": partition,
                "all": depth_trend(rv),
                "body": depth_trend(rv[s["group"] == "body"]),
            }
        )
    layers = summaries["fedavg"][["label", "group", *SUMMARY_COLUMNS]].merge(
        summaries["fedavg-iid"][["label", *SUMMARY_COLUMNS]],
        on="label",
        suffixes=(" a=0.1", " iid"),
    )
    gaps = pd.concat(evidence, ignore_index=True)
    gaps = gaps[["partition", *gaps.columns.drop("partition")]]
    return layers, gaps, pd.DataFrame(depth)


def _alignment(
    paths: Mapping[str, Path], labels: Mapping[str, str], diverged: Mapping[str, str]
) -> pd.DataFrame:
    """Head and body group means of the pooled per-layer measures, per arm on the skewed
    partition (every arm but the IID control)."""
    rows = []
    for name, path in paths.items():
        if name == "fedavg-iid":
            continue
        with open_run(path) as run:
            by = layer_summary(run).groupby("group")[SUMMARY_COLUMNS].mean()
            rounds = run.num_rounds
        row: dict[str, Any] = {"run": labels.get(name, name), "rounds": rounds}
        row["diverged"] = name in diverged
        for group in ("head", "body"):
            for col in SUMMARY_COLUMNS:
                row[f"{group} {col}"] = by.loc[group, col] if group in by.index else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy(paths: Mapping[str, Path]) -> pd.DataFrame:
    rows = []
    fedavg_bytes = None
    for name, path in paths.items():
        with open_run(path) as run:
            m = run.metrics
            per_round = run.bytes_per_round
            if name == "fedavg":
                fedavg_bytes = per_round
            complete = run.status == "complete"
            rows.append(
                {
                    "run": name,
                    "final acc": m["test_accuracy"].iloc[-1] if complete else float("nan"),
                    "best acc": m["test_accuracy"].max(),
                    "MB / round": per_round / 1e6,
                    "x FedAvg": per_round / fedavg_bytes if fedavg_bytes else float("nan"),
                    "status": run.status if complete else f"{run.status} at round {run.num_rounds}",
                }
            )
    return pd.DataFrame(rows)
