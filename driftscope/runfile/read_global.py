"""The global model's numbers on each client's held-out data, and the kept global models, of a
:class:`driftscope.runfile.reader.Run`.

A mixin like the others; every read goes through the Run's checked ``_read``. Torch-free at
import: :meth:`GlobalMixin.global_model` imports torch inside, when it is called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftscope.errors import RunFileError
from driftscope.runfile import schema

if TYPE_CHECKING:
    from driftscope.models.layout import ParamInfo


class GlobalMixin:
    """Per-client evaluation and kept global models (mixed into the reader's ``Run``)."""

    if TYPE_CHECKING:
        path: Path

        def _read(self, name: str, sel: Any = ()) -> Any: ...
        def _has(self, name: str) -> bool: ...
        def _get(self, name: str) -> Any: ...

        @property
        def num_rounds(self) -> int: ...
        @property
        def metrics(self) -> pd.DataFrame: ...
        @property
        def params(self) -> tuple[ParamInfo, ...]: ...

    # ------------------------------------------------------------------ per-client evaluation
    @property
    def has_client_eval(self) -> bool:
        """Whether the run evaluated the global model on held-out client data
        (``data.client_test_fraction`` > 0; False for older files)."""
        return self._has(schema.client_metric_path("test_accuracy"))

    def client_eval_table(self) -> pd.DataFrame:
        """Long table, one row per evaluated round and client with held-out rows: ``round``,
        ``client``, ``held_out`` (rows), ``test_loss``, ``test_accuracy`` of the global model after
        that round on that client's held-out data. A run without it: a one-line RunFileError."""
        if not self.has_client_eval:
            raise RunFileError(
                f"{self.path.name} has no per-client evaluation: run with "
                "--client-test-fraction F (e.g. 0.2) to record it"
            )
        n = self.num_rounds
        loss = self._read(schema.client_metric_path("test_loss"), slice(0, n))
        acc = self._read(schema.client_metric_path("test_accuracy"), slice(0, n))
        path = schema.client_metric_path("test_accuracy")
        held = np.asarray(self._get(path).attrs.get(schema.CLIENT_HELD_OUT_ATTR, []), np.int64)
        r, c = np.nonzero(~np.isnan(acc))
        return pd.DataFrame(
            {
                "round": self.metrics["round"].to_numpy()[r],
                "client": c,
                "held_out": held[c] if len(held) == acc.shape[1] else np.full(len(c), -1),
                "test_loss": loss[r, c],
                "test_accuracy": acc[r, c],
            }
        )

    # ------------------------------------------------------------------ kept global models
    @property
    def global_rounds(self) -> list[int]:
        """The committed rounds whose global model is kept (``record.global_every``; [] if none)."""
        if not self._has(schema.GLOBAL_MODEL_ROUND):
            return []
        rounds = self._read(schema.GLOBAL_MODEL_ROUND)
        last = int(self.metrics["round"].iloc[-1]) if self.num_rounds else -1
        return [int(r) for r in rounds if r <= last]

    def global_state(self, round: int) -> dict[str, np.ndarray]:
        """The kept global model after ``round`` as arrays by ``state_dict`` name: the trained
        parameters (float32, as trained), the frozen parameters and the buffers. Torch-free."""
        rounds = self.global_rounds
        if round not in rounds:
            kept = f"kept rounds: {rounds[0]}..{rounds[-1]}" if rounds else "it keeps none"
            raise RunFileError(
                f"{self.path.name} has no global model of round {round} ({kept}; "
                "record.global_every sets which rounds are kept)"
            )
        row = rounds.index(round)
        flat = self._read(schema.GLOBAL_MODEL_PARAMS, row)
        state: dict[str, np.ndarray] = {}
        for p in self.params:
            state[p.name] = flat[p.offset : p.offset + p.numel].reshape(p.shape)
        frozen = self._get(schema.GLOBAL_MODEL_FROZEN)
        for name in frozen:
            state[name] = np.asarray(self._read(schema.global_model_frozen_path(name)))
        buffers = self._get(schema.GLOBAL_MODEL_BUFFERS)
        for name in buffers:
            state[name] = np.asarray(self._read(schema.global_model_buffer_path(name), row))
        return state

    def global_model(self, round: int, model: Callable[[], Any] | None = None) -> Any:
        """The kept global model after ``round``: a ``state_dict`` (name -> torch tensor), or, with
        ``model`` (a zero-argument factory of the run's architecture), that model with the state
        loaded (strictly: every parameter and persistent buffer must match), in eval mode."""
        import torch

        state = {k: torch.from_numpy(np.array(v)) for k, v in self.global_state(round).items()}
        if model is None:
            return state
        net = model()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise RunFileError(
                f"the model from model() does not match {self.path.name}'s global model "
                f"({first[-1].strip() if first else err}): pass the run's own model factory"
            ) from None
        return net.eval()
