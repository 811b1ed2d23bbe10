"""The Flower engine's record of failed clients: ``/clients/failed`` in the run file.

A sampled client whose reply was an error or never came is marked 1 in its round's row, and its
rows of that round's probe CKA are NaN (the recorder probed the global model in its place). Used by
the strategy (:mod:`driftscope.flower.strategy`) and the recording wrapper
(:mod:`driftscope.flower.wrapper`).
"""

from __future__ import annotations

import h5py
import numpy as np

from driftscope import schema
from driftscope.events import Hook, RoundEnded
from driftscope.runfile import append, growable


class FailureLog(Hook):
    """Writes ``/clients/failed`` (round, client) int8: 1 where a sampled client failed.

    Put it after the recorder among the hooks (the trainer commits the round after all of them).
    """

    def __init__(self, file: h5py.File, num_clients: int) -> None:
        self.ds = growable(
            file.require_group(schema.CLIENTS),
            schema.CLIENT_FAILED.split("/", 1)[1],
            (num_clients,),
            np.int8,
            schema.AX_ROUND_CLIENT,
        )
        self.ds.attrs["description"] = (
            "1 where a sampled client's reply was an error or never came; "
            "its Gram rows are NaN and it is left out of the average"
        )
        self.num_clients = num_clients
        self.failed: dict[int, str] = {}

    def on_round_end(self, event: RoundEnded) -> None:
        row = np.zeros(self.num_clients, dtype=np.int8)
        row[list(self.failed)] = 1
        append(self.ds, row)
        if self.failed:
            self._blank_cka(event.round, [event.clients.index(c) for c in self.failed])

    def _blank_cka(self, round: int, slots: list[int]) -> None:
        """NaN the failed clients' rows of this round's probe CKA (the recorder probed the global
        model in their place: it cannot run a model that does not exist)."""
        file = self.ds.file
        if schema.CKA_ROUND not in file or schema.CKA not in file:
            return
        rounds = file[schema.CKA_ROUND]
        if not rounds.shape[0] or int(rounds[-1]) != round:
            return
        for kind in file[schema.CKA].values():
            for ds in kind.values():
                block = ds[-1]
                block[slots, :] = np.nan
                block[:, slots] = np.nan
                ds[-1] = block
