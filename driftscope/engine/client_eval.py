"""Per-client evaluation: each client's held-out data and the global model's numbers on it.

With ``data.client_test_fraction = f > 0`` every client's part of the training set is split once,
before training: ``floor(f * n)`` of its ``n`` rows, drawn from the (seed, "client_test", client)
stream, are held out (:func:`driftscope.data.partition.hold_out`, called by ``RunSetup``); the
client trains on the rest (in their original order), so its size, label
histogram and aggregation weight are those of the rest. After every evaluated round
(``RunSetup.evaluates``) :class:`ClientEval` runs the new global model (its parameters and
buffers, as the test set's numbers) on every client's held-out rows, sampled or not, and appends
one row per round to ``clients/test_loss`` and ``clients/test_accuracy`` (round, client) float64,
NaN on rounds that are not evaluated and for a client with nothing held out
(:mod:`driftscope.runfile.schema`). ``f = 0`` changes nothing and writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from driftscope.engine.events import Hook, RoundEnded
from driftscope.runfile import schema
from driftscope.runfile.h5write import append, growable

if TYPE_CHECKING:
    from driftscope.engine.setup import RunSetup
    from driftscope.runfile.writer import RunWriter


class ClientEval(Hook):
    """Appends the global model's loss and accuracy on every client's held-out rows each round
    (NaN where the round is not evaluated); before the round's commit, like the recorder."""

    def __init__(self, writer: RunWriter, setup: RunSetup) -> None:
        self.setup = setup
        self.file = writer.file
        self.num_clients = setup.num_clients

    def declare(self) -> None:
        """Create the datasets (a new run, before SWMR)."""
        group = self.file.require_group(schema.CLIENTS)
        sizes = np.array([len(h) for h in self.setup.held_out], dtype=np.int64)
        for name in schema.CLIENT_TEST_METRICS:
            ds = growable(
                group, name, (self.num_clients,), np.float64, schema.AX_ROUND_CLIENT, fill=np.nan
            )
            ds.attrs[schema.CLIENT_HELD_OUT_ATTR] = sizes

    def on_round_end(self, event: RoundEnded) -> None:
        losses = np.full(self.num_clients, np.nan)
        accs = np.full(self.num_clients, np.nan)
        setup = self.setup
        if setup.evaluates(event.round):
            for client in range(self.num_clients):
                if len(setup.held_out[client]):  # else no rows: NaN
                    losses[client], accs[client] = setup.evaluate(
                        event.global_params,
                        event.global_buffers,
                        setup.client_test_x[client],
                        setup.client_test_y[client],
                    )
        for name, row in zip(schema.CLIENT_TEST_METRICS, (losses, accs), strict=True):
            append(self.file[schema.client_metric_path(name)], row)
