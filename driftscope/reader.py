"""Read run files: ``driftscope.open_run(path)`` returns a :class:`Run`.

The reader opens files in SWMR read mode, so it can follow a run that is still being written
(call :meth:`Run.refresh` to see new rounds). It trusts only committed rounds: ``/metrics/round``
is written last in each round, so rows beyond it (a round in flight when a run was killed) are
ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from driftscope.errors import RunFileError
from driftscope.models import LayerInfo as Layer
from driftscope.runfile import FORMAT, METRIC_NAMES, SCHEMA_VERSION


@dataclass(frozen=True)
class Param:
    name: str
    layer: str
    group: str
    shape: tuple[int, ...]
    offset: int
    numel: int


def _strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def open_run(path: str | os.PathLike) -> Run:
    """Open a driftscope run file for reading; a clear :class:`RunFileError` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path} does not exist: check the path")
    if path.is_dir():
        raise RunFileError(f"{path} is a directory, not a run file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise RunFileError(
            f"{path} is not an HDF5 file: give a run file written by 'driftscope run'"
        )
    try:
        f = h5py.File(path, "r", swmr=True, libver="latest")
    except OSError as err:
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise RunFileError(
                f"{path} cannot be read as HDF5 ({str(err).splitlines()[0]}): the file is truncated "
                "or damaged"
            ) from None
    try:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise RunFileError(
                f"{path} is an HDF5 file but not a driftscope run (no format={FORMAT!r})"
            )
        version = int(f.attrs.get("schema_version", -1))
        if version > SCHEMA_VERSION:
            raise RunFileError(
                f"{path} uses run-file schema {version}, newer than this driftscope reads "
                f"({SCHEMA_VERSION}): upgrade driftscope"
            )
        if version < 1:
            raise RunFileError(f"{path} has an invalid schema_version {version}")
        expected, actual = f.id.get_filesize(), path.stat().st_size
        if actual < expected and f["status"][()] != b"running":
            raise RunFileError(
                f"{path} is truncated ({actual:,} of {expected:,} bytes): copy the whole file again"
            )
        return Run(f, path)
    except RunFileError:
        f.close()
        raise
    except (KeyError, OSError, ValueError) as err:
        f.close()
        raise RunFileError(
            f"{path} is a damaged driftscope run ({err}): re-run the training"
        ) from None


class Run:
    """A recorded run. Use as a context manager or call :meth:`close`.

    Attributes: ``config`` (dict), ``environment`` (dict), ``params`` and ``layers`` (model order,
    each with its group, head or body), ``clients`` (ids), ``rounds`` (recorded rounds),
    ``metrics`` (DataFrame, one row per committed round).
    """

    def __init__(self, file: h5py.File, path: Path) -> None:
        self.file = file
        self.path = path
        try:
            self.config: dict[str, Any] = json.loads(file.attrs["config"])
            self.environment: dict[str, Any] = json.loads(file.attrs["environment"])
            m = file["model"]
            names = _strings(m["param_name"])
            layers_of = _strings(m["param_layer"])
            groups = _strings(m["param_group"])
            shapes = [tuple(json.loads(s)) for s in _strings(m["param_shape"])]
            offsets = m["param_offset"][()]
            numels = m["param_numel"][()]
        except KeyError as err:
            raise RunFileError(f"{path} is a damaged driftscope run (missing {err})") from None
        self.params: list[Param] = [
            Param(n, ly, g, s, int(o), int(k))
            for n, ly, g, s, o, k in zip(
                names, layers_of, groups, shapes, offsets, numels, strict=True
            )
        ]
        self.layers: list[Layer] = [
            Layer(
                name,
                label,
                kind,
                group,
                tuple(p.name for p in self.params if p.layer == name),
                int(numel),
            )
            for name, label, kind, group, numel in zip(
                _strings(m["layer_name"]),
                _strings(m["layer_label"]),
                _strings(m["layer_kind"]),
                _strings(m["layer_group"]),
                m["layer_numel"][()],
                strict=True,
            )
        ]
        self._params = {p.name: p for p in self.params}
        self._layers = {layer.name: layer for layer in self.layers}
        self._labels = {layer.label: layer for layer in self.layers}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        """See rounds written since opening (for a live run)."""
        for ds in self._datasets():
            ds.refresh()
        self.__dict__.pop("metrics", None)

    def _datasets(self):
        out: list[h5py.Dataset] = []
        self.file.visititems(
            lambda _, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None
        )
        return out

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<Run {self.path.name}: {c['train']['algorithm']} on {c['data']['dataset']} "
            f"({c['model']['name']}), {self.num_rounds} rounds, {len(self.clients)} clients, "
            f"status {self.status}>"
        )

    # ------------------------------------------------------------------ basics
    @property
    def status(self) -> str:
        self.file["status"].refresh()
        return self.file["status"][()].decode()

    @property
    def status_message(self) -> str:
        return self.file["status_message"][()].decode()

    @property
    def num_rounds(self) -> int:
        """Committed rounds."""
        ds = self.file["metrics/round"]
        return int(ds.shape[0])

    @property
    def clients(self) -> list[int]:
        return list(range(self.file["partition/label_histogram"].shape[0]))

    @property
    def clients_per_round(self) -> int:
        """Clients sampled each round (the config's fraction of all clients, at least one)."""
        train = self.config["train"]
        return max(1, round(float(train.get("client_fraction", 1.0)) * int(train["clients"])))

    @property
    def client_sizes(self) -> np.ndarray:
        """(clients,) training samples each client holds."""
        return self.file["partition/client_size"][()]

    @property
    def head_share(self) -> float:
        return float(self.file["model"].attrs["head_numel"] / self.file["model"].attrs["numel"])

    def layer(self, name: str) -> Layer:
        """A layer by module name (``classifier.4``) or label (``fc3``)."""
        if name in self._layers:
            return self._layers[name]
        if name in self._labels:
            return self._labels[name]
        raise RunFileError(
            f"no layer '{name}' in {self.path.name}; layers are "
            + ", ".join(f"{ly.label} ({ly.name})" for ly in self.layers)
        )

    def param(self, name: str) -> Param:
        if name not in self._params:
            raise RunFileError(
                f"no parameter '{name}' in {self.path.name}; parameters are "
                + ", ".join(p.name for p in self.params[:8])
                + (", ..." if len(self.params) > 8 else "")
            )
        return self._params[name]

    # ------------------------------------------------------------------ tables
    @property
    def metrics(self) -> pd.DataFrame:
        """One row per committed round: round, test_accuracy, test_loss, train_loss, ... ."""
        n = self.num_rounds
        g = self.file["metrics"]
        data = {"round": g["round"][:n]}
        for name in METRIC_NAMES:
            col = g[name][:n]
            data[name] = col if len(col) == n else np.full(n, np.nan)
        return pd.DataFrame(data)

    @property
    def bytes_per_round(self) -> float:
        """Mean communication per committed round, down + up, in bytes (NaN before round 0 ends)."""
        m = self.metrics
        if not len(m):
            return float("nan")
        return float((m["downlink_bytes"] + m["uplink_bytes"]).mean())

    @property
    def client_metrics(self) -> pd.DataFrame:
        """Long table: round, client, train_loss, train_accuracy (participating clients only)."""
        n = self.num_rounds
        loss = self.file["clients/train_loss"][:n]
        acc = self.file["clients/train_accuracy"][:n]
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
    def label_histogram(self) -> pd.DataFrame:
        """(client x class) sample counts of the partition."""
        h = self.file["partition/label_histogram"][()]
        return pd.DataFrame(
            h,
            index=pd.Index(range(h.shape[0]), name="client"),
            columns=pd.Index(range(h.shape[1]), name="class"),
        )

    # ------------------------------------------------------------------ records
    def _committed(self, index_name: str) -> np.ndarray:
        """Rows of a record index whose round is committed (<= last committed round)."""
        rec = self.file["records"]
        if index_name not in rec:
            return np.zeros(0, dtype=np.int64)
        rounds = rec[index_name][()]
        committed = self.file["metrics/round"][: self.num_rounds]
        last = int(committed[-1]) if len(committed) else -1
        return rounds[rounds <= last]

    @property
    def rounds(self) -> np.ndarray:
        """Rounds with per-layer records (Gram matrices), in order."""
        return self._committed("round")

    @property
    def update_rounds(self) -> np.ndarray:
        """Rounds whose full client updates are stored."""
        return self._committed("update_round")

    @property
    def cka_rounds(self) -> np.ndarray:
        return self._committed("cka_round")

    @property
    def participants(self) -> np.ndarray:
        """(recorded rounds, S) client ids in the row order of every record."""
        return self.file["records/clients"][: len(self.rounds)]

    def _row(self, rounds: np.ndarray, round: int, what: str) -> int:
        hits = np.flatnonzero(rounds == round)
        if not len(hits):
            shown = ", ".join(str(int(r)) for r in rounds[:10]) + (
                " ..." if len(rounds) > 10 else ""
            )
            raise RunFileError(
                f"round {round} has no {what} in {self.path.name}; recorded: {shown or 'none'}"
            )
        return int(hits[0])

    def gram(self, name: str, round: int | None = None) -> np.ndarray:
        """Gram matrices of client updates for a parameter or a layer (sum of its parameters'):
        (rounds, S, S), or (S, S) for one ``round``."""
        names = self._names(name)
        n = len(self.rounds)
        rows = slice(None) if round is None else self._row(self.rounds, round, "records")
        g = self.file["records/gram"]
        out = sum(g[p][:n][rows] for p in names)
        return np.asarray(out)

    def updates(self, name: str, round: int | None = None) -> np.ndarray:
        """Stored client updates of a parameter, shaped (rounds, S, *param shape), or of a layer,
        shaped (rounds, S, layer numel) with its parameters concatenated. ``round`` selects one."""
        names = self._names(name)
        u = self.file["records/updates"]
        missing = [p for p in names if p not in u]
        if missing:
            raise RunFileError(
                f"updates of '{missing[0]}' were not stored in {self.path.name} "
                "(record.update_layers): use gram() for drift metrics"
            )
        n = len(self.update_rounds)
        rows = (
            slice(None)
            if round is None
            else [self._row(self.update_rounds, round, "stored updates")]
        )
        blocks = [u[p][:n][rows] for p in names]
        if len(names) == 1 and name in self._params:
            shape = self._params[name].shape
            out = blocks[0].reshape(*blocks[0].shape[:2], *shape)
        else:
            out = np.concatenate(blocks, axis=-1)
        return out[0] if round is not None else out

    def cka(self, layer: str, kind: str = "linear", round: int | None = None) -> np.ndarray:
        """Pairwise CKA of the S client models and the global model (last index) on the probe set:
        (cka rounds, S+1, S+1), or (S+1, S+1) for one ``round``."""
        rec = self.file["records"]
        if "cka" not in rec:
            raise RunFileError(f"{self.path.name} has no probe CKA (recorded with probe_size 0)")
        if kind not in rec["cka"]:
            raise RunFileError(f"unknown CKA kind '{kind}': choose one of {', '.join(rec['cka'])}")
        ly = self.layer(layer)
        n = len(self.cka_rounds)
        data = rec["cka"][kind][ly.name][:n]
        if round is None:
            return data
        return data[self._row(self.cka_rounds, round, "CKA")]

    def control_norms(self, param: str) -> np.ndarray:
        """(rounds, 1 + clients): ||c|| then each ||c_i|| after each recorded round."""
        rec = self.file["records"]
        if "control_norm" not in rec or param not in rec["control_norm"]:
            raise RunFileError(f"no control-variate norms for '{param}' in {self.path.name}")
        return rec["control_norm"][param][: len(self.rounds)]

    def _names(self, name: str) -> tuple[str, ...]:
        if name in self._params:
            return (name,)
        return self.layer(name).params

    # ------------------------------------------------------------------ description
    @cached_property
    def records_policy(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.file["records"].attrs.items()}

    def describe_datasets(self) -> pd.DataFrame:
        """Every dataset in the file: path, shape, dtype, stored bytes."""
        rows = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                rows.append(
                    {
                        "dataset": name,
                        "shape": tuple(obj.shape),
                        "dtype": str(obj.dtype),
                        "bytes": int(obj.id.get_storage_size()),
                    }
                )

        self.file.visititems(visit)
        return pd.DataFrame(rows)
