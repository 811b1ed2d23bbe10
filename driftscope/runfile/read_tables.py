"""The per-round tables of a :class:`driftscope.runfile.reader.Run`: committed rounds, clients and their
sizes, metrics, client metrics, the label histogram and the algorithm's per-layer records.

A mixin so that ``reader.py`` stays readable; every read goes through the Run's checked
``_read``. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd

from driftscope.errors import RunFileError
from driftscope.models.layout import LayerInfo
from driftscope.runfile import schema
from driftscope.runfile.read_records import _guarded


class TablesMixin:
    """Per-round tables of a run (mixed into :class:`~driftscope.runfile.reader.Run`)."""

    if TYPE_CHECKING:
        path: Path
        config: Any

        def _read(self, name: str, sel: Any = ()) -> Any: ...
        def _read_rows(self, name: str, n: int) -> Any: ...

        @property
        def layers(self) -> tuple[LayerInfo, ...]: ...
        def _has(self, name: str) -> bool: ...
        def _get(self, name: str) -> Any: ...
        def _dataset(self, name: str) -> h5py.Dataset: ...
        def _length(self, name: str) -> int: ...

    # ------------------------------------------------------------------ partition
    @property
    def num_rounds(self) -> int:
        """Committed rounds."""
        return self._length(schema.METRICS_ROUND)

    @property
    def clients(self) -> list[int]:
        return list(range(self._length(schema.LABEL_HISTOGRAM)))

    @property
    @_guarded
    def client_sizes(self) -> np.ndarray:
        """(clients,) training samples per client."""
        return np.asarray(self._read(schema.CLIENT_SIZE), dtype=np.int64)

    @property
    @_guarded
    def clients_per_round(self) -> int:
        """S, the clients sampled per round (the width of every record)."""
        if self._has(schema.RECORD_CLIENTS):
            shape = self._dataset(schema.RECORD_CLIENTS).shape
            if len(shape) == 2:
                return int(shape[1])
        return int(self.config.train.clients_per_round)

    # ------------------------------------------------------------------ tables
    @property
    @_guarded
    def metrics(self) -> pd.DataFrame:
        """One row per committed round: round, test_accuracy, test_loss, train_loss, ... ."""
        n = self.num_rounds
        data = {"round": self._read(schema.METRICS_ROUND, slice(0, n))}
        for name in schema.METRIC_NAMES:
            path = schema.metric_path(name)
            if not self._has(path):  # a metric this file's writer did not have
                data[name] = np.full(n, np.nan)
                continue
            col = self._read_rows(path, n)
            if len(col) != n:
                raise RunFileError(
                    f"{self.path.name}: {path} has {len(col)} rows for {n} committed rounds: "
                    "it is damaged; copy the file again or re-run"
                )
            data[name] = col
        return pd.DataFrame(data)

    @property
    def bytes_per_round(self) -> float:
        """Mean communication per committed round, down + up, in bytes (NaN before round 0 ends)."""
        m = self.metrics
        if not len(m):
            return float("nan")
        return float((m["downlink_bytes"] + m["uplink_bytes"]).mean())

    @property
    @_guarded
    def client_metrics(self) -> pd.DataFrame:
        """Long table: round, client, train_loss, train_accuracy (participating clients only)."""
        n = self.num_rounds
        loss = self._read(schema.client_metric_path("train_loss"), slice(0, n))
        acc = self._read(schema.client_metric_path("train_accuracy"), slice(0, n))
        r, c = np.nonzero(~np.isnan(loss))
        return pd.DataFrame(
            {
                "round": self.metrics["round"].to_numpy()[r],
                "client": c,
                "train_loss": loss[r, c],
                "train_accuracy": acc[r, c],
            }
        )

    @property
    @_guarded
    def label_histogram(self) -> pd.DataFrame:
        """(client x class) sample counts of the partition."""
        h = self._read(schema.LABEL_HISTOGRAM)
        return pd.DataFrame(
            h,
            index=pd.Index(range(h.shape[0]), name="client"),
            columns=pd.Index(range(h.shape[1]), name="class"),
        )

    # ------------------------------------------------------------------ algorithm records
    @property
    def algorithm_record_keys(self) -> tuple[str, ...]:
        """Names of the per-round, per-layer values the algorithm reported (``algorithm/<key>``),
        e.g. ``chosen_layers`` and ``layer_variance`` for fedpvr_auto; () for most algorithms."""
        if not self._has(schema.ALGORITHM):
            return ()
        return tuple(self._get(schema.ALGORITHM))

    @_guarded
    def algorithm_record(self, key: str) -> pd.DataFrame:
        """(committed round x layer label) table of ``algorithm/<key>``."""
        if key not in self.algorithm_record_keys:
            have = ", ".join(self.algorithm_record_keys) or "none"
            raise RunFileError(f"{self.path.name} has no algorithm record '{key}' (it has: {have})")
        n = self.num_rounds
        data = self._read(schema.algorithm_record_path(key), slice(0, n))
        labels = [layer.label for layer in self.layers]
        if data.shape[1:] != (len(labels),):
            raise RunFileError(
                f"{self.path.name}: {schema.algorithm_record_path(key)} is damaged (shape "
                f"{data.shape}; expected (rounds, {len(labels)} layers))"
            )
        return pd.DataFrame(
            data,
            index=pd.Index(self._read(schema.METRICS_ROUND, slice(0, n)), name="round"),
            columns=pd.Index(labels, name="layer"),
        )
