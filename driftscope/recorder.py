"""Records every client's per-layer update, the updates' Gram matrices and probe-set CKA.

:class:`Recorder` is a :class:`~driftscope.hooks.Hook`; it never touches training, it only reads
``result.update`` and runs the client's model forward on a fixed probe set. Per recorded round it
appends, under ``/records`` of the run file (S = clients per round, n = probe size)::

    round                 (rec,)              the recorded round numbers; written last
    clients               (rec, S)            which clients took part, in row order
    gram/<param>          (rec, S, S) f64     G_ij = <d_i, d_j> of the parameter's updates
    control_norm/<param>  (rec, 1 + N) f32    ||c|| then ||c_i|| for every client (SCAFFOLD, FedPVR)
    update_round          (upd,)              rounds whose full updates are stored
    updates/<param>       (upd, S, numel)     client updates, float32 or float16 (policy)
    probe_index           (n,)                test-set rows of the probe set (when CKA is on)
    cka_round             (cka,)              rounds with probe CKA
    cka/<kind>/<layer>    (cka, S+1, S+1) f64 pairwise CKA of the S client models and the new
                                              global model (last index); kind: linear|rbf|debiased

The Gram matrix of a layer (weight + bias) is the sum of its parameters' Grams, so every drift
measure of :mod:`driftscope.metrics.drift` follows from ``gram/`` even when no update is stored.
Activations are captured with forward hooks that are removed in ``finally``, detached and cloned
(an in-place ReLU would otherwise change them), and a layer that runs twice in one forward pass is
an error rather than a silently overwritten capture.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch import nn

from driftscope.config import RecordConfig
from driftscope.errors import DriftscopeError
from driftscope.hooks import ClientResult, Hook, RoundSummary
from driftscope.metrics.cka import pairwise_cka, rbf_from_linear_gram
from driftscope.metrics.gram import centred_gram, update_gram
from driftscope.runfile import append, growable
from driftscope.seeding import torch_generator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from driftscope.runfile import RunWriter
    from driftscope.simulator import Simulator

CKA_KINDS = ("linear", "rbf", "debiased")
CHUNK_BYTES = 1 << 20


@contextmanager
def capture_activations(
    model: nn.Module,
    layer_names: list[str],
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Capture each named module's output, flattened to (batch, features), during forward passes.

    With ``reduce`` the dict holds ``reduce(output)`` instead, computed inside the hook, before a
    following in-place operation (``ReLU(inplace=True)``) can change the output; without it the
    output is cloned for the same reason. The dict is cleared by the caller between passes; a
    module that runs twice in one pass raises.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in captured:
                raise DriftscopeError(
                    f"layer '{name}' ran twice in one forward pass, so its activations are "
                    "ambiguous: turn probe CKA off with --probe-size 0 for this model"
                )
            flat = output.detach().reshape(output.shape[0], -1)
            captured[name] = reduce(flat) if reduce is not None else flat.clone()

        return hook

    try:
        for name in layer_names:
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def chunk_columns(numel: int, max_cols: int) -> int:
    """Columns per chunk of an updates dataset: at most ``max_cols``, splitting ``numel`` evenly.

    HDF5 allocates whole chunks, so a last chunk holding a few columns of a ``max_cols``-wide
    chunk would waste most of it: 36,928 values in chunks of 26,214 store 52,428.
    """
    max_cols = max(1, max_cols)
    pieces = -(-numel // max_cols)  # ceil
    return max(1, -(-numel // pieces))


class Recorder(Hook):
    """Writes per-layer recordings into an open :class:`~driftscope.runfile.RunWriter`'s file."""

    def __init__(self, writer: RunWriter, sim: Simulator, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self.file = writer.file
        layout = sim.layout
        self.layout = layout
        s = sim.cfg.train.clients_per_round
        self.s = s
        self.stored = [
            p
            for p in layout.params
            if any(fnmatch.fnmatchcase(p.name, pat) for pat in cfg.update_layers)
        ]
        if cfg.updates_every and not self.stored:
            raise DriftscopeError(
                f"record.update_layers {list(cfg.update_layers)} match no parameter: "
                "use '*' or a pattern such as 'classifier.*'"
            )
        self.layer_names = [layer.name for layer in layout.layers]
        self.cka_on = cfg.probe_size > 0
        if self.cka_on:
            n_test = len(sim.test_y)
            gen = torch_generator(sim.cfg.seed, "probe")
            idx = torch.randperm(n_test, generator=gen)[: min(cfg.probe_size, n_test)]
            self.probe = sim.test_x[idx]
        self.control = hasattr(sim.algorithm, "state_norms") and bool(sim.algorithm.state_norms())

        rec = self.file["records"]
        rec.attrs["every"] = cfg.every
        rec.attrs["updates_every"] = cfg.updates_every
        rec.attrs["cka_every"] = cfg.cka_every
        rec.attrs["probe_size"] = len(self.probe) if self.cka_on else 0
        if self.cka_on:
            probe_index = rec.create_dataset("probe_index", data=idx.numpy())
            probe_index.attrs["description"] = "rows of the test set that form the CKA probe set"
        growable(rec, "round", (), np.int64, ("record",))
        growable(rec, "clients", (s,), np.int64, ("record", "client"))
        g = rec.create_group("gram")
        for p in layout.params:
            growable(g, p.name, (s, s), np.float64, ("record", "client", "client"))
        if self.control:
            cn = rec.create_group("control_norm")
            for name in sim.algorithm.state_norms():
                growable(cn, name, (1 + sim.num_clients,), np.float32, ("record", "server+client"))
        growable(rec, "update_round", (), np.int64, ("update",))
        u = rec.create_group("updates")
        dtype = np.dtype(cfg.update_dtype)
        for p in self.stored:
            cols = chunk_columns(p.numel, CHUNK_BYTES // (dtype.itemsize * s))
            ds = growable(
                u, p.name, (s, p.numel), dtype, ("update", "client", "value"), chunks=(1, s, cols)
            )
            ds.attrs["shape"] = list(p.shape)
        growable(rec, "cka_round", (), np.int64, ("cka",))
        if self.cka_on:
            ck = rec.create_group("cka")
            for kind in CKA_KINDS:
                kg = ck.create_group(kind)
                for name in self.layer_names:
                    growable(kg, name, (s + 1, s + 1), np.float64, ("cka", "model", "model"))

        self._handles: dict[str, h5py.Dataset] = {}
        self._updates = torch.zeros(s, layout.numel)
        self._grams: dict[str, list[torch.Tensor]] = {}
        self._slot = 0
        self._active = False
        self._cka_now = False

    # ------------------------------------------------------------------ schedule
    def records(self, round: int) -> bool:
        return round % self.cfg.every == 0

    def _stores_updates(self, round: int) -> bool:
        return self.cfg.updates_every > 0 and round % (self.cfg.every * self.cfg.updates_every) == 0

    def _does_cka(self, round: int) -> bool:
        return self.cka_on and round % (self.cfg.every * self.cfg.cka_every) == 0

    # ------------------------------------------------------------------ hooks
    def on_round_start(self, sim: Simulator, round: int, clients: list[int]) -> None:
        self._active = self.records(round)
        self._cka_now = self._active and self._does_cka(round)
        self._slot = 0
        self._grams = {name: [] for name in self.layer_names}

    def on_client_end(self, sim: Simulator, round: int, result: ClientResult) -> None:
        if not self._active:
            return
        self._updates[self._slot].copy_(result.update)
        self._slot += 1
        if self._cka_now:
            self._probe_grams(sim.model)

    def on_round_end(self, sim: Simulator, round: int, summary: RoundSummary) -> None:
        if not self._active:
            return
        ds = self._dataset
        d = self._updates
        for p in self.layout.params:
            gram = update_gram(d[:, p.offset : p.offset + p.numel])
            append(ds(f"gram/{p.name}"), gram.numpy())
        if self.control:
            for name, norms in sim.algorithm.state_norms().items():
                append(ds(f"control_norm/{name}"), norms.numpy())
        if self._stores_updates(round):
            for p in self.stored:
                block = d[:, p.offset : p.offset + p.numel].numpy()
                append(ds(f"updates/{p.name}"), block.astype(self.cfg.update_dtype, copy=False))
            append(ds("update_round"), round)
        if self._cka_now:
            sim.flat.params.copy_(sim.global_params)
            self._probe_grams(sim.model)
            for name in self.layer_names:
                grams = torch.stack(self._grams[name]).numpy()  # (S+1, n, n), centred features
                append(ds(f"cka/linear/{name}"), pairwise_cka(grams, centred=True))
                append(ds(f"cka/rbf/{name}"), pairwise_cka(rbf_from_linear_gram(grams)))
                append(ds(f"cka/debiased/{name}"), pairwise_cka(grams, debiased=True))
            append(ds("cka_round"), round)
        append(ds("clients"), np.asarray(summary.clients, dtype=np.int64))
        append(ds("round"), round)  # written last among records

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset ``/records/<path>``, its handle cached (h5py lookups cost ~0.1 ms each)."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self.file["records"][path]
        return handle

    @torch.no_grad()
    def _probe_grams(self, model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        try:
            with capture_activations(model, self.layer_names, reduce=centred_gram) as grams:
                model(self.probe)
                for name in self.layer_names:
                    self._grams[name].append(grams[name])
        finally:
            model.train(was_training)
