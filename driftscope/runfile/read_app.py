"""What a run recorded from someone's Flower app (``driftscope.flower.recording``) says about the
app: its description, its strategy, and its own metric series. Mixed into
:class:`driftscope.runfile.reader.Run`; torch-free. A run of driftscope's own has none of these
(``app`` is None) and its config describes it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftscope.runfile import schema

if TYPE_CHECKING:
    import h5py

UNKNOWN = "unknown"
KINDS = {
    "central": schema.APP_CENTRAL,
    "federated": schema.APP_FEDERATED,
    "train": schema.APP_TRAIN,
}


class AppMixin:
    """The recorded app's facts (mixed into :class:`~driftscope.runfile.reader.Run`)."""

    if TYPE_CHECKING:

        def _attr(self, name: str, default: Any = None, obj: str = "/") -> Any: ...
        def _has(self, name: str) -> bool: ...
        def _get(self, name: str) -> Any: ...
        def _read(self, name: str, sel: Any = ()) -> Any: ...
        def _dataset(self, name: str) -> h5py.Dataset: ...
        def _length(self, name: str) -> int: ...

    def _json_attr(self, name: str) -> dict[str, Any] | None:
        raw = self._attr(name)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (TypeError, ValueError):
            return {"damaged": str(raw)[:60]}
        return value if isinstance(value, dict) else None

    @property
    def app(self) -> dict[str, Any] | None:
        """The recorded app as its ServerApp described it (``dataset``, ``model``, ``partition``
        and any setting it named; ``"unknown"`` where it named nothing); None for a driftscope run."""
        return self._json_attr(schema.APP_ATTR)

    @property
    def app_strategy(self) -> dict[str, Any]:
        """The recorded app's strategy: ``class`` and its public settings ({} for driftscope runs)."""
        return self._json_attr(schema.APP_STRATEGY_ATTR) or {}

    @property
    def app_facts(self) -> dict[str, str]:
        """Where the recorded app's test metrics, client numbering and head come from."""
        return {
            key: str(self._attr(attr, UNKNOWN))
            for key, attr in (
                ("test metrics", schema.APP_TEST_METRICS_ATTR),
                ("client identity", schema.APP_CLIENT_IDENTITY_ATTR),
                ("head", schema.APP_HEAD_RULE_ATTR),
            )
        }

    def app_metrics(self, kind: str = "central") -> pd.DataFrame:
        """(committed round x metric name) table of the app's own series: ``central`` (its
        ``evaluate_fn``), ``federated`` (the strategy's aggregated evaluation) or ``train`` (the
        strategy's aggregated train metrics); empty when the run has none."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        group = KINDS[kind]
        rounds = self._length(schema.METRICS_ROUND)
        names = sorted(self._get(group)) if self._has(group) else []
        data = {name: np.asarray(self._read(f"{group}/{name}"))[:rounds] for name in names}
        return pd.DataFrame(data, index=pd.RangeIndex(rounds, name="round"))

    @property
    def has_label_histogram(self) -> bool:
        """Whether the run knows its clients' labels (a recorded app may not report them)."""
        return (
            self._has(schema.LABEL_HISTOGRAM) and self._dataset(schema.LABEL_HISTOGRAM).shape[1] > 0
        )

    def describe_what(self) -> str:
        """``"FedAvg (Flower app) on cifar10 (Net), dirichlet 0.3, lr=0.02"`` for a recorded app;
        '' for a driftscope run (its config says it)."""
        app = self.app
        if app is None:
            return ""
        strategy = self.app_strategy.get("class", UNKNOWN)
        extra = [f"{k}={v}" for k, v in app.items() if k not in ("dataset", "model", "partition")]
        partition = app.get("partition", UNKNOWN)
        return (
            f"{strategy} (Flower app) on {app.get('dataset', UNKNOWN)} "
            f"({app.get('model', UNKNOWN)}), partition {partition}"
            + "".join(f", {e}" for e in extra)
        )
