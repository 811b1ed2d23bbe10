"""Text labels of algorithms and runs, shared by tables, figures and reports (no matplotlib).

:func:`algorithm_label` is the one place that turns an algorithm name into its display label: the
algorithm registry's ``label`` (``ALGORITHMS.get(name).label``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from driftscope.runfile.reader import Run

__all__ = [
    "algorithm_label",
    "algorithm_rank",
    "config_value",
    "partition_label",
    "run_label",
    "run_labels",
]


def algorithm_label(name: str) -> str:
    """Display label of an algorithm, its registry ``label``: ``"fedpvr"`` -> ``"FedPVR"``
    (a name the registry does not know is returned unchanged)."""
    from driftscope.algorithms import ALGORITHMS  # torch-free

    return ALGORITHMS.get(name).label if name in ALGORITHMS else name


def algorithm_rank(name: str) -> int:
    """Position of an algorithm in figure and table order (registration order: FedAvg, FedProx,
    SCAFFOLD, FedPVR, then any other), so colours follow the same order everywhere."""
    from driftscope.algorithms import ALGORITHMS

    names = ALGORITHMS.names()
    return names.index(name) if name in names else len(names)


def config_value(run: Run, section: str | None, key: str, default: Any = None) -> Any:
    """``run.config[section][key]``, for a config read as a dict or as a ``RunConfig``."""
    node: Any = run.config
    for part in (section, key) if section else (key,):
        if isinstance(node, Mapping):
            node = node.get(part, default) if part == key else node[part]
        else:
            node = getattr(node, part, default) if part == key else getattr(node, part)
    return node


def partition_label(run: Run) -> str:
    """``"α=0.1"``, ``"IID"``, ``"2 classes/client"`` (a recorded Flower app: its own words)."""
    if run.app is not None:
        return str(run.app.get("partition", "unknown"))
    partition = config_value(run, "data", "partition", "")
    if partition == "dirichlet":
        return f"α={float(config_value(run, 'data', 'alpha')):g}"
    if partition == "iid":
        return "IID"
    if partition == "shards":
        return f"{config_value(run, 'data', 'classes_per_client', '?')} classes/client"
    return str(partition)


def _base_label(run: Run, with_data: bool, with_dataset: bool) -> str:
    app = run.app
    if app is not None:  # a recorded Flower app: its strategy and what it said of its data
        parts = [str(run.app_strategy.get("class", "unknown"))]
        if with_data and app.get("partition", "unknown") != "unknown":
            parts.append(str(app["partition"]))
        if with_dataset:
            parts.insert(0, str(app.get("dataset", "unknown")))
        return " ".join(parts)
    parts = [algorithm_label(str(config_value(run, "train", "algorithm")))]
    if with_data:
        parts.append(partition_label(run))
    if with_dataset:
        parts.insert(0, str(config_value(run, "data", "dataset", "")))
    return " ".join(p for p in parts if p)


def run_labels(runs: Sequence[Run], unique: bool = True) -> list[str]:
    """Display labels of runs shown together, e.g. ``["FedAvg", "SCAFFOLD", "FedPVR"]``.

    The partition ("α=0.1", "IID") is included unless every run shares it, the dataset only when
    the runs span several. With ``unique`` (default), labels that would repeat (seeds of one
    setting) get the seed appended, or the file stem when the seeds agree too; without it, runs of
    one setting share a label (used to pool seeds).
    """
    runs = list(runs)
    settings = {partition_label(r) for r in runs}
    datasets = {
        r.app.get("dataset") if r.app is not None else config_value(r, "data", "dataset")
        for r in runs
    }
    with_data = len(runs) == 1 or len(settings) > 1
    labels = [_base_label(r, with_data, len(datasets) > 1) for r in runs]
    if not unique:
        return labels
    out = list(labels)
    for label in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        seeds = [config_value(runs[i], None, "seed") for i in idx]
        stems = [runs[i].path.stem for i in idx]
        if len(set(seeds)) == len(idx):
            for i, seed in zip(idx, seeds):
                out[i] = f"{label} seed {seed}"
        elif len(set(stems)) == len(idx):
            for i, stem in zip(idx, stems):
                out[i] = f"{label} ({stem})"
        else:
            for k, i in enumerate(idx, start=1):
                out[i] = f"{label} #{k}"
    return out


def run_label(run: Run, runs: Sequence[Run] | None = None) -> str:
    """A short display label of a run: ``"FedAvg α=0.1"``, ``"FedPVR IID"``, ``"SCAFFOLD"``.

    Alone, a run is labelled with its algorithm and partition. Given ``runs`` (the runs it is
    shown with, ``run`` among them) the label follows :func:`run_labels`.
    """
    if runs is None:
        return run_labels([run])[0]
    runs = list(runs)
    for i, other in enumerate(runs):
        if other is run:
            return run_labels(runs)[i]
    raise ValueError("run_label: `run` is not one of `runs`")
