"""Records every client's per-layer update, the updates' Gram matrices and probe-set CKA.

:class:`Recorder` is a :class:`~driftscope.engine.events.Hook` that sees only events: it reads each
client's update and parameters from :class:`~driftscope.engine.events.ClientTrained` and the new global
model from :class:`~driftscope.engine.events.RoundEnded`, and runs those parameters forward on a fixed
probe set in its OWN probe model (built by ``model_factory``, parameters swapped in as views with
``torch.func.functional_call``), so it never touches the training model and cannot tell which
engine trained. Per recorded round it appends under ``/records`` of the run file (paths, axes and
dtypes in :mod:`driftscope.runfile.schema`; S = clients per round, n = probe size)::

    round                 (rec,)              the recorded round numbers; written last
    clients               (rec, S)            which clients took part, in row order
    gram/<param>          (rec, S, S) f64     G_ij = <d_i, d_j> of the parameter's updates
    control_norm/<param>  (rec, 1 + N) f32    ||c|| then ||c_i|| for every client (SCAFFOLD, FedPVR)
    global/sq_norm/<param>, global/dot/<param>  ||w||^2 of the round's starting global model and
                          (rec,), (rec, S) f64  <w, d_i>: L-DAWA's angle (engine/global_weights.py)
    update_round          (upd,)              rounds whose full updates are stored
    updates/<param>       (upd, S, numel)     client updates, float32 or float16 (policy)
    update_crc            (upd, stored, S)    CRC-32 of each stored client update (whole-chunk writes)
    probe_index           (n,)                test-set rows of the probe set (when CKA is on)
                                              (attr cka_precision: the probe Grams' arithmetic)
    cka_round             (cka,)              rounds with probe CKA
    cka/<kind>/<layer>    (cka, S+1, S+1) f64 pairwise CKA of the S client models and the new
                                              global model (last index); kind: linear|rbf|debiased

The round itself is committed by the trainer (``RunWriter.commit``) after every hook's
``on_round_end``. The Gram matrix of a layer (weight + bias) is the sum of its parameters' Grams,
so every drift measure of :mod:`driftscope.metrics.drift` follows from ``gram/`` even when no
update is stored. The probe set and the layers' activations on it come from
:mod:`driftscope.engine.activations`.
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch import nn

from driftscope.config import RecordConfig
from driftscope.engine.activations import capture_activations, probe_plan
from driftscope.engine.events import ClientTrained, Hook, RoundEnded, RoundStarted
from driftscope.engine.global_weights import GlobalWeights
from driftscope.engine.heap import release_free_heap
from driftscope.errors import DriftscopeError, SettingsWarning
from driftscope.metrics.gram import centred_gram, update_gram
from driftscope.metrics.probe import probe_cka, warn_not_finite
from driftscope.runfile import schema
from driftscope.runfile.h5write import ChunkWriter, append, growable, update_chunks

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from driftscope.models.layout import ModelLayout
    from driftscope.runfile.writer import RunWriter

CKA_KINDS = schema.CKA_KINDS


def stored_params(cfg: RecordConfig, layout: ModelLayout) -> list:
    """The parameters whose full updates are stored; an error if the patterns match none."""
    stored = [
        p
        for p in layout.params
        if any(fnmatch.fnmatchcase(p.name, pat) for pat in cfg.update_layers)
    ]
    if cfg.enabled and cfg.updates_every and not stored:
        raise DriftscopeError(
            f"record.update_layers {list(cfg.update_layers)} match no parameter: "
            "use '*' or a pattern such as 'classifier.*'"
        )
    return stored


class Recorder(Hook):
    """Writes per-layer recordings into an open :class:`~driftscope.runfile.writer.RunWriter`'s file.

    ``model_factory()`` builds a model of the run's architecture (its own trainable parameters
    are never used); ``probe_inputs`` are the (normalised) probe images, ``probe_rows`` their
    test-set rows; ``control_names`` the parameters with control-variate norms
    (``RoundEnded.control_norms`` keys); ``frozen`` the training model's frozen parameters (they
    replace the factory's own). Buffers come with the events (a client's after its training, the
    global ones after the round); when an event has none the probe model keeps its own. On a file
    that already holds the records (a resumed run) the datasets are reused.
    Layers that cannot be probed (:func:`probe_plan`) are skipped with a
    :class:`~driftscope.errors.SettingsWarning` and their reasons stored in the ``records`` attr
    ``schema.CKA_SKIPPED_ATTR``.
    """

    def __init__(
        self,
        writer: RunWriter,
        cfg: RecordConfig,
        layout: ModelLayout,
        clients_per_round: int,
        num_clients: int,
        model_factory: Callable[[], nn.Module],
        probe_inputs: torch.Tensor | None = None,
        probe_rows: np.ndarray | None = None,
        control_names: Sequence[str] = (),
        frozen: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.file = writer.file
        self.layout = layout
        s = self.s = clients_per_round
        self.stored = stored_params(cfg, layout)
        self.layer_names: list[str] = []  # the probed layers
        self.batch_dims: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self.probe_size = cfg.probe_size if probe_inputs is not None else 0
        self.probe = probe_inputs
        self.control_names = tuple(control_names)
        self.model: nn.Module | None = None
        self.fixed: dict[str, torch.Tensor] = {}  # frozen parameters, then buffers, by name
        if self.probe_size:
            assert probe_inputs is not None
            from driftscope.models.buffers import buffer_names, clone_buffers, read_buffers

            with torch.random.fork_rng(devices=[]):  # initialising it draws from torch's RNG
                model = model_factory()
            names = [name for name, p in model.named_parameters() if p.requires_grad]
            if names != [p.name for p in layout.params]:
                raise ValueError("model_factory() builds a model whose parameters differ")
            self.model = model.eval().requires_grad_(False).to(probe_inputs.device)
            with torch.no_grad():
                for name, value in (frozen or {}).items():
                    model.get_parameter(name).copy_(value)
            self.fixed = clone_buffers(read_buffers(model, buffer_names(model)))
            self.batch_dims, self.skipped = probe_plan(model, layout, probe_inputs)
            self.layer_names = [ly.name for ly in layout.layers if ly.name in self.batch_dims]
            if self.skipped:
                first = next(iter(self.skipped.items()))
                warnings.warn(
                    f"probe CKA skips {len(self.skipped)} of {len(layout.layers)} layers "
                    f"('{first[0]}': {first[1]}); their reasons are in the run file",
                    SettingsWarning,
                    stacklevel=2,
                )
        self.global_weights = GlobalWeights(self.file, layout, s, self.stored)
        if schema.RECORD_ROUND not in self.file:
            self._declare(num_clients, probe_rows)
        self._global = self.global_weights.present  # absent in a resumed older file

        self._handles: dict[str, h5py.Dataset] = {}
        self._present: dict[str, bool] = {}
        self._chunks = ChunkWriter()
        self._updates = torch.zeros(s, layout.numel)
        # probe Grams of a CKA round, (layers, S + 1, n, n) float64 in one block: allocated when
        # a CKA round starts and dropped when it ends (one large allocation, returned to the OS)
        self._grams: torch.Tensor | None = None
        self._models = 0
        self._slot = 0
        self._active = False
        self._cka_now = False

    def _declare(self, num_clients: int, probe_rows: np.ndarray | None) -> None:
        """Create every records dataset (SWMR forbids creating them once training runs)."""
        f, cfg, s = self.file, self.cfg, self.s
        rec = f.require_group(schema.RECORDS)
        rec.attrs["every"] = cfg.every
        rec.attrs["updates_every"] = cfg.updates_every
        rec.attrs["cka_every"] = cfg.cka_every
        rec.attrs["probe_size"] = self.probe_size and len(self.probe)  # type: ignore[arg-type]
        rec.attrs[schema.CKA_PRECISION_ATTR] = cfg.cka_precision
        if self.probe_size:
            rec.attrs[schema.CKA_SKIPPED_ATTR] = json.dumps(self.skipped)
        if self.probe_size:
            rows = np.asarray(probe_rows)  # chunked for the checksum
            checked = {"chunks": rows.shape, "fletcher32": schema.CHECKSUM} if rows.size else {}
            index = f.create_dataset(schema.PROBE_INDEX, data=rows, **checked)
            index.attrs["description"] = "rows of the test set that form the CKA probe set"
        growable(f, schema.RECORD_ROUND, (), np.int64, schema.AX_RECORD)
        growable(f, schema.RECORD_CLIENTS, (s,), np.int64, schema.AX_RECORD_CLIENT)
        f.require_group(schema.GRAM)
        for p in self.layout.params:
            growable(f, schema.gram_path(p.name), (s, s), schema.GRAM_DTYPE, schema.AX_GRAM)
        if self.control_names:
            f.require_group(schema.CONTROL_NORM)
            for name in self.control_names:
                growable(
                    f,
                    schema.control_norm_path(name),
                    (1 + num_clients,),
                    schema.CONTROL_NORM_DTYPE,
                    schema.AX_CONTROL_NORM,
                )
        growable(f, schema.UPDATE_ROUND, (), np.int64, schema.AX_UPDATE_ROUND)
        f.require_group(schema.UPDATES)
        dtype = np.dtype(cfg.update_dtype)
        for p in self.stored:
            # whole chunks without a filter, checked by a CRC-32 per client (docs/file-format.md)
            ds = growable(
                f,
                schema.updates_path(p.name),
                (s, p.numel),
                dtype,
                schema.AX_UPDATES,
                chunks=update_chunks(s, p.numel, dtype.itemsize),
                fletcher32=False,
            )
            ds.attrs["shape"] = list(p.shape)
            ds.attrs[schema.UPDATE_CHECKSUM_ATTR] = schema.UPDATE_CHECKSUM_CRC32
        if self.stored:  # one row per stored round: one append for every parameter
            crc = growable(
                f, schema.UPDATE_CRC, (len(self.stored), s), np.uint32, schema.AX_UPDATE_CRC
            )
            crc.attrs[schema.UPDATE_CRC_PARAMS] = json.dumps([p.name for p in self.stored])
        self.global_weights.declare()
        growable(f, schema.CKA_ROUND, (), np.int64, schema.AX_CKA_ROUND)
        if self.probe_size:
            for kind in CKA_KINDS:
                f.require_group(f"{schema.CKA}/{kind}")
                for name in self.layer_names:
                    growable(
                        f,
                        schema.cka_path(kind, name),
                        (s + 1, s + 1),
                        schema.CKA_DTYPE,
                        schema.AX_CKA,
                    )

    # ------------------------------------------------------------------ hooks
    def on_round_start(self, event: RoundStarted) -> None:
        cfg = self.cfg
        self._active = schema.records(event.round, cfg.every)
        self._cka_now = self._active and schema.does_cka(
            event.round, cfg.every, cfg.cka_every, self.probe_size
        )
        self._slot = 0
        self._grams = None
        self._models = 0
        self.global_weights.start_round()

    def on_client_end(self, event: ClientTrained) -> None:
        if not self._active:
            return
        if self._updates.device != event.update.device:  # record on the training device
            self._updates = torch.zeros_like(self._updates, device=event.update.device)
        self._updates[self._slot].copy_(event.update)
        if self._global:
            self.global_weights.client(self._slot, event.params, event.update)
        self._slot += 1
        if self._cka_now:
            self._probe_grams(event.params, event.buffers)

    def on_round_end(self, event: RoundEnded) -> None:
        if not self._active:
            return
        ds = self._dataset
        d = self._updates
        r = event.round
        for p in self.layout.params:
            gram = update_gram(d[:, p.offset : p.offset + p.numel])
            append(ds(schema.gram_path(p.name)), gram.cpu().numpy())
        for name in self.control_names:
            append(ds(schema.control_norm_path(name)), event.control_norms[name].numpy())
        if schema.stores_updates(r, self.cfg.every, self.cfg.updates_every):
            self.store_updates(r, d)
        if self._cka_now:
            self._probe_grams(event.global_params, event.global_buffers)
            assert self._grams is not None
            # a failed client was probed as the global model (no model of its own exists): its
            # rows and columns are NaN
            failed = [event.clients.index(c) for c in event.failed]
            for k, name in enumerate(self.layer_names):
                # (S+1, n, n) Grams of centred features, computed on the device; CKA on the host
                grams = self._grams[k, : self._models].cpu().numpy()  # no copy on the cpu
                values, not_finite = probe_cka(grams, failed)
                for kind in CKA_KINDS:
                    append(ds(schema.cka_path(kind, name)), values[kind])
                if not_finite:
                    warn_not_finite(name)
            append(ds(schema.CKA_ROUND), r)
            self._grams = None  # the S + 1 probe Grams per layer are not held past the round
            release_free_heap()
        if self._global:
            self.global_weights.append(ds)
        append(ds(schema.RECORD_CLIENTS), np.asarray(event.clients, dtype=np.int64))
        append(ds(schema.RECORD_ROUND), r)  # written last among records

    def store_updates(self, round: int, updates: torch.Tensor) -> None:
        """Append the stored parameters' columns of ``updates`` (S, P) as ``round``'s updates,
        written as whole chunks with a CRC-32 per client (``h5write.ChunkWriter``; also what the
        I/O benchmark times). Those writes reach the disk at once, so a write error there fails
        the run the way one in :meth:`RunWriter.commit` does (``RunWriter.guarded``)."""
        self.writer.guarded(self._store_updates, round, updates)

    def _store_updates(self, round: int, updates: torch.Tensor) -> None:
        sums = [
            self._chunks.append(
                self._dataset(schema.updates_path(p.name)),
                updates[:, p.offset : p.offset + p.numel].cpu().numpy(),
            )
            for p in self.stored
        ]
        if self.stored and self._has(schema.UPDATE_CRC):  # absent in older resumed files
            append(self._dataset(schema.UPDATE_CRC), np.stack(sums))
        if self._global:  # the LoRA factors' global values (engine/global_adapters.py)
            self.global_weights.append_adapters(self._dataset)
        append(self._dataset(schema.UPDATE_ROUND), round)

    def _has(self, path: str) -> bool:
        found = self._present.get(path)
        if found is None:
            found = self._present[path] = path in self.file
        return found

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset at ``path``, its handle cached (h5py lookups cost ~0.1 ms each)."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self.file[path]
        return handle

    @torch.no_grad()
    def _probe_grams(self, flat: torch.Tensor, buffers: Mapping[str, torch.Tensor]) -> None:
        """Run the probe model with parameters ``flat`` (P,) and ``buffers`` (views, no copy) on
        the probe set and keep each probed layer's centred-feature Gram (``centred_gram`` in
        ``record.cka_precision``)."""
        assert self.model is not None and self.probe is not None
        if self.probe.device != flat.device:  # probe on the training device
            self.probe = self.probe.to(flat.device)
            self.model.to(flat.device)
            self.fixed = {k: v.to(flat.device) for k, v in self.fixed.items()}
        if not self.layer_names:
            return
        params = dict(self.fixed)
        params.update(buffers)
        params.update(
            {p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in self.layout.params}
        )
        precision = self.cfg.cka_precision

        def reduce(features: torch.Tensor) -> torch.Tensor:
            return centred_gram(features, precision)

        with capture_activations(
            self.model, self.layer_names, reduce=reduce, batch_dims=self.batch_dims
        ) as grams:
            torch.func.functional_call(self.model, params, (self.probe,))
            for k, name in enumerate(self.layer_names):
                gram = grams[name]  # float64, on the device (the CPU for MPS: float64_device)
                if self._grams is None:
                    n = self.probe.shape[0]
                    shape = (len(self.layer_names), self.s + 1, n, n)
                    self._grams = torch.empty(shape, dtype=gram.dtype, device=gram.device)
                self._grams[k, self._models] = gram
            self._models += 1
