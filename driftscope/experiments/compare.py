"""Experiments over several runs: ``compare`` (algorithms over seeds) and ``reproduce``'s arms (the
run itself: :mod:`driftscope.experiments.reproduce`). One :class:`Arm` type describes what each run
changes in the base config; the functions train, read the run files back and RETURN results;
the CLI prints them with :mod:`driftscope.experiments.report`.

A run that diverges is a result, not a crash: its run file keeps the rounds before, ``compare``
records the round it diverged at (its final accuracy NaN), and ``reproduce`` reports it as
diverged at that round while the other arms go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftscope.config import RunConfig
from driftscope.data import Dataset, load_dataset
from driftscope.errors import ConfigError, DivergenceError
from driftscope.registry import Registry
from driftscope.runfile.reader import open_run

__all__ = [
    "ARMS",
    "COMPARE_ARMS",
    "CONTRASTS",
    "REPRODUCE_ARMS",
    "Arm",
    "Contrast",
    "compare",
    "compare_arms",
    "paired",
    "rounds_to",
    "summarize",
    "train_arm",
]


@dataclass(frozen=True)
class Arm:
    """One arm of an experiment: the base config with ``overrides`` (dotted keys).

    ``name`` names its run files (``<name>.h5``, or ``<name>-seed<k>.h5`` over seeds); ``label``
    is how tables show it.
    """

    name: str
    label: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


COMPARE_ARMS = (
    Arm("fedavg", "FedAvg", {"train.algorithm": "fedavg"}),
    Arm("scaffold", "SCAFFOLD", {"train.algorithm": "scaffold"}),
    Arm(
        "fedpvr_body_momentum_09",
        "FedPVR (body momentum 0.9)",
        {"train.algorithm": "fedpvr", "train.params.body_momentum": 0.9},
    ),
    Arm(
        "fedpvr_no_momentum",
        "FedPVR (no momentum)",
        {"train.algorithm": "fedpvr", "train.params.body_momentum": None},
    ),
    # ablation: FedPVR's local momentum (0.9 on the body, none on the head) without its control
    # variates; with the two FedPVR arms it separates what momentum and control variates add
    Arm(
        "fedavg_body_momentum_09",
        "FedAvg + body momentum 0.9",
        {"train.algorithm": "fedavg_body_momentum", "train.params.body_momentum": 0.9},
    ),
    # context: SCAFFOLD at a learning rate where it trains on the default (it diverges at 0.05)
    Arm("scaffold_lr_001", "SCAFFOLD (lr 0.01)", {"train.algorithm": "scaffold", "train.lr": 0.01}),
)

#: every arm ``compare`` knows, by name (``driftscope compare --arms NAME ...``): the default
#: arms, then FedPVR whose control-variate layers are chosen from measured drift
ARMS: Registry[Arm] = Registry("compare arm")
for _arm in (
    *COMPARE_ARMS,
    Arm("fedpvr_auto", "FedPVR (auto head)", {"train.algorithm": "fedpvr_auto"}),
):
    ARMS.register(_arm.name, _arm)


def compare_arms(names: Sequence[str] | None = None) -> tuple[Arm, ...]:
    """The arms named (in that order) from :data:`ARMS`; None: :data:`COMPARE_ARMS`. An unknown
    or repeated name is a one-line :class:`~driftscope.errors.ConfigError`."""
    if names is None:
        return COMPARE_ARMS
    if not names:
        raise ConfigError(f"--arms needs at least one arm: choose from {', '.join(ARMS.names())}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(f"--arms names {repeated[0]} twice: name each arm once")
    return tuple(ARMS.get(name) for name in names)


REPRODUCE_ARMS = (
    Arm("fedavg", "FedAvg", {"train.algorithm": "fedavg"}),
    Arm("scaffold", "SCAFFOLD", {"train.algorithm": "scaffold"}),
    Arm("fedpvr", "FedPVR", {"train.algorithm": "fedpvr"}),
    Arm("fedavg-iid", "FedAvg IID", {"train.algorithm": "fedavg", "data.partition": "iid"}),
)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def train_arm(
    base: RunConfig,
    arm: Arm,
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    dataset: Dataset | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> DivergenceError | None:
    """Train ``base`` with the arm's overrides (then ``overrides``) into ``path`` (overwriting).

    Returns the :class:`DivergenceError` if the run diverged (its file keeps the rounds before),
    else None. ``threads``: as :func:`driftscope.train`'s (None: its policy).
    """
    from driftscope.engine.training import train

    cfg = base.replace({**arm.overrides, **(overrides or {})})
    try:
        train(cfg, path, overwrite=True, progress=progress, dataset=dataset, threads=threads)
    except DivergenceError as err:
        return err
    return None


# ---------------------------------------------------------------------------------- compare
def rounds_to(acc: np.ndarray, target: float) -> float:
    """1-based number of rounds until test accuracy first reaches ``target`` (NaN if never)."""
    hits = np.flatnonzero(acc >= target)
    return float(hits[0] + 1) if len(hits) else float("nan")


#: rounds at the end of a run whose test accuracy ``compare`` also averages (one round's accuracy
#: is noisy; an unstable arm shows in this mean)
LAST_ROUNDS = 5


def compare(
    base: RunConfig,
    seeds: Sequence[int],
    out_dir: Path,
    target: float = 0.9,
    arms: Sequence[Arm] = COMPARE_ARMS,
    progress: bool = False,
    threads: int | None = None,
    log: Log = _quiet,
) -> pd.DataFrame:
    """Train every arm for every seed into ``out_dir`` (recording off: only accuracy and bytes
    are needed); one row per (arm, seed). A seed fixes the partition, the initialisation and the
    batch order, so the arms of one seed are paired.

    ``log`` receives a header line before each run when ``progress`` (arm, its name, seed, and
    its place in the whole) and one line for each run that diverged.

    Columns: ``algorithm`` (the arm's label), ``arm`` (its name), ``seed``, ``final_accuracy``
    (NaN if diverged), ``last_rounds_accuracy`` (mean test accuracy of the last
    :data:`LAST_ROUNDS` rounds; NaN if diverged), ``rounds_to_target`` (1-based, NaN if never),
    ``diverged_at_round`` (NaN if not), ``bytes_per_round``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(base.data.dataset, base.data.data_dir)
    rows = []
    total = len(arms) * len(seeds)
    for i, arm in enumerate(arms):
        for j, seed in enumerate(seeds):
            path = out_dir / f"{arm.name}-seed{seed}.h5"
            if progress:
                n = i * len(seeds) + j + 1
                log(f"== {arm.label} [{arm.name}], seed {seed} (run {n}/{total}) ==")
            err = train_arm(
                base, arm, path, {"seed": seed, "record.enabled": False}, dataset, progress, threads
            )
            diverged = err is not None
            if diverged and not path.exists():  # diverged in round 0: no round, no file
                log(f"{arm.label} [{arm.name}], seed {seed}: diverged at round 0")
                rows.append(
                    {
                        "algorithm": arm.label,
                        "arm": arm.name,
                        "seed": seed,
                        "final_accuracy": float("nan"),
                        "last_rounds_accuracy": float("nan"),
                        "rounds_to_target": float("nan"),
                        "diverged_at_round": 0,
                        "bytes_per_round": float("nan"),
                    }
                )
                continue
            with open_run(path) as run:
                acc = run.metrics["test_accuracy"].to_numpy()
                if diverged:
                    log(
                        f"{arm.label} [{arm.name}], seed {seed}: diverged at round {run.num_rounds}"
                    )
                rows.append(
                    {
                        "algorithm": arm.label,
                        "arm": arm.name,
                        "seed": seed,
                        "final_accuracy": float("nan") if diverged else float(acc[-1]),
                        "last_rounds_accuracy": (
                            float("nan") if diverged else float(acc[-LAST_ROUNDS:].mean())
                        ),
                        "rounds_to_target": rounds_to(acc, target),
                        "diverged_at_round": run.num_rounds if diverged else float("nan"),
                        "bytes_per_round": run.bytes_per_round,
                    }
                )
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame, baseline: str = "FedAvg") -> pd.DataFrame:
    """Per arm (in order) over seeds, from :func:`compare`'s rows: ``algorithm, seeds,
    final_mean, final_std`` (over seeds that finished; std ddof=1, NaN for one), ``finished``,
    ``diverged_rounds`` (sorted list), ``rounds_mean, rounds_std, reached`` (seeds that reached
    the target) and ``communication_vs_baseline`` (bytes per round / the baseline arm's)."""
    base_bytes = results.loc[results["algorithm"] == baseline, "bytes_per_round"].dropna()
    base = float(base_bytes.mean()) if len(base_bytes) else float("nan")
    rows = []
    for name, g in results.groupby("algorithm", sort=False):
        ok = g["final_accuracy"].dropna()
        r = g["rounds_to_target"].dropna()
        rows.append(
            {
                "algorithm": name,
                "seeds": len(g),
                "final_mean": float(ok.mean()) if len(ok) else float("nan"),
                "final_std": float(ok.std(ddof=1)) if len(ok) > 1 else float("nan"),
                "finished": len(ok),
                "diverged_rounds": sorted(int(v) for v in g["diverged_at_round"].dropna()),
                "rounds_mean": float(r.mean()) if len(r) else float("nan"),
                "rounds_std": float(r.std(ddof=1)) if len(r) > 1 else float("nan"),
                "reached": len(r),
                "communication_vs_baseline": float(g["bytes_per_round"].dropna().mean()) / base,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Contrast:
    """A paired comparison of two arms over seeds: ``arm`` minus ``reference``, and what the
    difference measures."""

    arm: str
    reference: str
    question: str


#: the paired comparisons ``compare`` prints when both arms ran: FedPVR's gain over FedAvg taken
#: apart into its body momentum and its head control variates, and SCAFFOLD for context
CONTRASTS = (
    Contrast("fedpvr_body_momentum_09", "fedavg", "FedPVR's gain over FedAvg"),
    Contrast("fedavg_body_momentum_09", "fedavg", "body momentum alone"),
    Contrast("fedpvr_no_momentum", "fedavg", "head control variates alone"),
    Contrast(
        "fedpvr_body_momentum_09", "fedavg_body_momentum_09", "control variates, given momentum"
    ),
    Contrast("fedpvr_body_momentum_09", "fedpvr_no_momentum", "momentum, given control variates"),
    Contrast("scaffold_lr_001", "fedavg", "SCAFFOLD at lr 0.01 against FedAvg at the base lr"),
)


def paired(
    results: pd.DataFrame,
    contrasts: Sequence[Contrast] = CONTRASTS,
    column: str = "final_accuracy",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Paired differences over seeds (a seed fixes partition, initialisation and batch order, so
    two arms of one seed differ only by the algorithm) of ``column`` for each contrast whose two
    arms are in ``results`` (:func:`compare`'s rows).

    Columns: ``arm``, ``reference``, ``question``, ``seeds`` (seeds both arms ran),
    ``pairs`` (seeds where both finished), ``differences`` (per paired seed, in seed order),
    ``mean``, ``low``, ``high`` (Student-t interval at ``confidence`` of the mean difference;
    NaN below 2 pairs), ``p`` (two-sided paired t-test), ``wins`` (pairs where the arm is
    higher).
    """
    from scipy import stats

    rows = []
    arms = set(results["arm"])
    for c in contrasts:
        if c.arm not in arms or c.reference not in arms:
            continue
        a = results[results["arm"] == c.arm].set_index("seed")[column]
        b = results[results["arm"] == c.reference].set_index("seed")[column]
        seeds = [seed for seed in a.index if seed in b.index]
        d = (a.loc[seeds] - b.loc[seeds]).dropna()
        n = len(d)
        mean = float(d.mean()) if n else float("nan")
        low = high = p = float("nan")
        if n > 1:
            sem = float(d.std(ddof=1)) / np.sqrt(n)
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
            low, high = mean - half, mean + half
            p = float(stats.ttest_1samp(d.to_numpy(), 0.0).pvalue) if sem > 0 else float("nan")
        rows.append(
            {
                "arm": c.arm,
                "reference": c.reference,
                "question": c.question,
                "seeds": len(seeds),
                "pairs": n,
                "differences": [float(v) for v in d],
                "mean": mean,
                "low": low,
                "high": high,
                "p": p,
                "wins": int((d > 0).sum()),
            }
        )
    return pd.DataFrame(rows)
