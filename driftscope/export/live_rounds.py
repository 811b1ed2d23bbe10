"""The rounds a live run committed since the last look, read a few rows at a time (torch-free).

:func:`~driftscope.export.rounds.round_exports` builds ``drift_table`` over the whole run file,
which a logger that follows a run would redo every round. :class:`CommittedRounds` keeps the
file open and reads only the rows of the rounds committed since its last call (through
:class:`~driftscope.runfile.read_rows.Rows`, each dataset looked up once), and computes each
value once, with the functions ``drift_table`` uses (:func:`~driftscope.analysis.tables.gram_values`,
:func:`~driftscope.analysis.tables.cka_values`, the same sums over a layer's parameters, the same
aggregation weights): the values of ``analyze --csv``, without label alignment.
"""

from __future__ import annotations

import numpy as np

from driftscope.analysis.tables import (
    aggregation_sizes,
    aggregation_weights,
    cka_values,
    gram_values,
    lora_frames,
    participant_weights,
)
from driftscope.export.rounds import (
    RoundExport,
    add_groups_and_norms,
    round_metric_name,
    scalar_name,
)
from driftscope.metrics import METRICS
from driftscope.metrics.drift import as_gram
from driftscope.metrics.lora import lora_pairs
from driftscope.runfile import schema
from driftscope.runfile.read_rows import Rows
from driftscope.runfile.reader import Run

__all__ = ["CommittedRounds"]


class CommittedRounds:
    """Follows the run file open as ``run``: :meth:`new` returns the :class:`RoundExport` of each
    round committed since the previous call (the first call: every committed round), in order."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows = Rows(run)
        self.committed = 0  # rows of metrics/round (committed rounds) returned so far
        self.record_rows = 0  # rows of records/round returned so far
        self.cka_rows = 0  # rows of records/cka_round returned so far
        # what the file holds is fixed once it is live (SWMR creates no dataset): look once
        self.layers = run.layers
        self.metric_names = [n for n in schema.METRIC_NAMES if self.rows.has(schema.metric_path(n))]
        self.recorded = run.recorded
        self.has_global = run.has_global_weights
        self.sizes = aggregation_sizes(run) if self.recorded else None
        # "lora" metrics (from stored updates and global factors) need LoRA factor pairs
        self.lora = any(METRICS.get(m).source == "lora" for m in METRICS) and bool(
            lora_pairs(p.name for p in run.params)
        )
        # the CKA kinds Run.cka reads for each layer (drift_table's cka_kinds), found without
        # reading them: recorded, and the layer not skipped by probe CKA
        self.kinds: dict[str, list[str]] = {}
        if self.recorded and self.rows.has(schema.CKA) and self.rows.has(schema.CKA_ROUND):
            skipped = run.cka_skipped
            self.kinds = {
                ly.name: [
                    k
                    for k in schema.CKA_KINDS
                    if ly.name not in skipped and self.rows.has(schema.cka_path(k, ly.name))
                ]
                for ly in self.layers
            }

    def new(self) -> list[RoundExport]:
        n = self.rows.length(schema.METRICS_ROUND)
        if n <= self.committed:
            return []
        span = slice(self.committed, n)
        rounds = [int(r) for r in self.rows.read(schema.METRICS_ROUND, span)]
        out = {r: RoundExport(r) for r in rounds}
        for name in self.metric_names:
            label = round_metric_name(name)
            for r, value in zip(rounds, self.rows.read(schema.metric_path(name), span)):
                if np.isfinite(value):
                    out[r].scalars[label] = float(value)
        loss = self.rows.read(schema.client_metric_path("train_loss"), span)
        for i, c in zip(*np.nonzero(~np.isnan(loss))):
            out[rounds[i]].scalars[f"client_train_loss/{int(c)}"] = float(loss[i, c])
        if self.recorded:
            self._records(out, last=rounds[-1])
            if self.kinds:
                self._cka(out, last=rounds[-1])
            if self.lora:
                self._lora(out, rounds)
        self.committed = n
        return [out[r] for r in rounds]

    def _committed_rows(self, index: str, start: int, last: int) -> tuple[slice, np.ndarray]:
        """The rows of the record index ``index`` from ``start`` whose round is committed (at
        most ``last``; later rows belong to a round in flight) and their rounds."""
        total = self.rows.length(index)
        rounds = self.rows.read(index, slice(start, total)) if total > start else np.zeros(0)
        rounds = rounds[rounds <= last]  # rows are appended in round order
        return slice(start, start + len(rounds)), rounds.astype(int)

    def _records(self, out: dict[int, RoundExport], last: int) -> None:
        span, recorded = self._committed_rows(schema.RECORD_ROUND, self.record_rows, last)
        if not len(recorded):
            return
        weights = None
        if self.sizes is not None:
            weights = participant_weights(self.sizes, self.rows.read(schema.RECORD_CLIENTS, span))
        grams = {}
        for ly in self.layers:
            # the layer's Gram: its parameters' summed in order, as Run.gram does
            g = as_gram(sum(self.rows.read(schema.gram_path(p), span) for p in ly.params))
            grams[ly.name] = g
            sq_dot = None
            if self.has_global:
                sq = sum(self.rows.read(schema.global_sq_norm_path(p), span) for p in ly.params)
                dot = sum(self.rows.read(schema.global_dot_path(p), span) for p in ly.params)
                sq_dot = (np.asarray(sq, dtype=np.float64), np.asarray(dot, dtype=np.float64))
            for metric, values, _, _ in gram_values(g, ly.numel, weights, sq_dot):
                name = scalar_name(metric, ly.name)
                for r, v in zip(recorded, _per_round(values, recorded)):
                    if np.isfinite(v):
                        out[int(r)].scalars[name] = float(v)
        add_groups_and_norms(out, self.layers, recorded, grams, weights)
        self.record_rows = span.stop

    def _cka(self, out: dict[int, RoundExport], last: int) -> None:
        span, cka_rounds = self._committed_rows(schema.CKA_ROUND, self.cka_rows, last)
        if not len(cka_rounds):
            return
        for ly in self.layers:
            kinds = {
                k: self.rows.read(schema.cka_path(k, ly.name), span) for k in self.kinds[ly.name]
            }
            for metric, values in cka_values(kinds):
                name = scalar_name(metric, ly.name)
                for r, v in zip(cka_rounds, _per_round(values, cka_rounds)):
                    if np.isfinite(v):
                        out[int(r)].scalars[name] = float(v)
        self.cka_rows = span.stop

    def _lora(self, out: dict[int, RoundExport], rounds: list[int]) -> None:
        # a LoRA run stores full updates: drift_table's own rows of the new rounds, read through
        # the Run (the whole file refreshed first), not row by row
        self.run.refresh()
        for f in lora_frames(self.run, aggregation_weights(self.run), rounds, parts=False):
            for r, layer, metric, v in zip(f["round"], f["layer"], f["metric"], f["value"]):
                if np.isfinite(v):
                    out[int(r)].scalars[scalar_name(str(metric), str(layer))] = float(v)


def _per_round(values: object, rounds: np.ndarray) -> np.ndarray:
    """A metric's values as one float64 per round (as ``drift_table``'s rows hold them)."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64), rounds.shape)
