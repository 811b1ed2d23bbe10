"""The spread over clients of the global model's accuracy on their held-out data
(``data.client_test_fraction``): per evaluated round, and its text for ``driftscope analyze``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from driftscope.runfile.reader import Run

SPREAD = ("min", "q25", "median", "q75", "max")


def client_spread(run: Run) -> pd.DataFrame:
    """Per evaluated round: ``round``, ``clients`` (with held-out rows), the ``min``, quartiles
    (``q25``, ``median``, ``q75``, linear interpolation) and ``max`` of the clients' held-out
    accuracy, and their ``mean``."""
    table = run.client_eval_table()
    acc = table.groupby("round")["test_accuracy"]
    out = pd.DataFrame(
        {
            "clients": acc.count(),
            "min": acc.min(),
            "q25": acc.quantile(0.25),
            "median": acc.median(),
            "q75": acc.quantile(0.75),
            "max": acc.max(),
            "mean": acc.mean(),
        }
    )
    return out.reset_index()


def format_client_spread(run: Run, last: int = 5) -> str:
    """The spread at the last evaluated round and over the last ``last`` evaluated rounds."""
    spread = client_spread(run)
    if spread.empty:
        return "held-out accuracy per client: no evaluated round yet"
    final = spread.iloc[-1]
    lines = [
        f"held-out accuracy per client (the global model on each client's held-out "
        f"{run.config.data.client_test_fraction:g} of its data), round {int(final['round'])}, "
        f"{int(final['clients'])} clients: " + ", ".join(f"{k} {final[k]:.3f}" for k in SPREAD),
        "over the evaluated rounds:",
    ]
    shown = spread.tail(last).set_index("round")[["clients", *SPREAD, "mean"]]
    lines.append(shown.to_string(float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
