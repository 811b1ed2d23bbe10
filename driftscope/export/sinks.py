"""Where exported rounds go: TensorBoard, MLflow, Weights & Biases (each an optional extra).

A :class:`Sink` takes rounds (:class:`~driftscope.export.rounds.RoundExport`), the run's
hyper-parameters, the names' labels, and figures (PNG files); ``close()`` flushes. Each backend
imports its library only when a sink is opened; a missing one is a one-line
:class:`~driftscope.errors.ConfigError` naming the extra to install.

==============  ==================================  ===================================
kind            target                              writes
==============  ==================================  ===================================
``tensorboard`` a log directory (one run below it)  event file: scalars, histograms,
                                                    images, hparams, a text of labels
``mlflow``      a tracking URI (``sqlite:///x.db``  metrics (step = round), params,
                or an MLflow server)                figures and labels as artifacts
``wandb``       a directory (default ``.``)         a W&B run: offline unless an API key
                                                    is configured (``WANDB_MODE``)
==============  ==================================  ===================================
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftscope.errors import ConfigError, DriftscopeError
from driftscope.export.rounds import RoundExport

__all__ = ["KINDS", "Sink", "open_sink", "parse_target"]

KINDS = ("tensorboard", "mlflow", "wandb")
EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def _missing(kind: str, module: str) -> ConfigError:
    return ConfigError(
        f"--to/--log {kind} needs the '{module}' package: pip install 'driftscope[{EXTRA[kind]}]'"
    )


def parse_target(spec: str) -> tuple[str, str | None]:
    """``"tensorboard=DIR"`` / ``"mlflow=URI"`` / ``"wandb"`` / ``"wandb=DIR"`` -> (kind, target)."""
    kind, sep, target = spec.partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(
            f"unknown logger '{kind}': choose tensorboard=DIR, mlflow=URI or wandb[=DIR]"
        )
    if kind != "wandb" and not target:
        what = "DIR" if kind == "tensorboard" else "URI"
        raise ConfigError(
            f"{kind} needs a target: --to {kind} {what} (export) or --log {kind}={what} (run)"
        )
    return kind, (target or None) if sep else None


class Sink:
    """A destination for exported rounds (every method a no-op here)."""

    def hyperparameters(self, params: dict[str, Any], labels: dict[str, Any]) -> None:
        pass

    def round(self, rec: RoundExport) -> None:
        pass

    def figure(self, name: str, png: Path) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink(Sink):
    def __init__(self, logdir: str, run_name: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.logdir = Path(logdir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        # add_histogram's default bucket limits, as an array once (a list is converted per call)
        self.bins = np.asarray(self.writer.default_bins, dtype=np.float64)

    def hyperparameters(self, params: dict[str, Any], labels: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # the hparams plugin's three summaries in this run's own event file (add_hparams would
        # start a second run below it)
        exp, ssi, sei = hparams(params, {})
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        self.writer.add_text("driftscope/config", _code(json.dumps(params, indent=1)))
        self.writer.add_text("driftscope/labels", _code(json.dumps(labels, indent=1)))

    def round(self, rec: RoundExport) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import histogram

        # one event per round for all its scalars (the same values and tags as add_scalar's, one
        # record to frame and checksum instead of one per scalar) and one for its histograms
        values = [Summary.Value(tag=k, simple_value=v) for k, v in rec.scalars.items()]
        for name, norms in rec.histograms.items():
            if len(norms):
                values.extend(histogram(name, norms, self.bins).value)
        if values:
            self.writer._get_file_writer().add_summary(Summary(value=values), rec.round)

    def figure(self, name: str, png: Path) -> None:
        from PIL import Image

        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"))
        self.writer.add_image(f"figures/{name}", rgb, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())  # markdown code block


class MlflowSink(Sink):
    def __init__(self, uri: str, run_name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("driftscope")
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            # a local store keeps its artifacts next to itself (MLflow's default is ./mlruns
            # in whatever directory the command runs from)
            location = None
            if uri.startswith("sqlite:///"):
                db = Path(uri.removeprefix("sqlite:///")).resolve()
                location = (db.parent / f"{db.stem}-artifacts").as_uri()
            exp_id = self.client.create_experiment("driftscope", artifact_location=location)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def hyperparameters(self, params: dict[str, Any], labels: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.client.log_dict(self.run_id, labels, "driftscope/labels.json")

    def round(self, rec: RoundExport) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, rec.round) for k, v in rec.scalars.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])
        # MLflow has no histogram type: the values as a JSON artifact per round
        if rec.histograms:
            hist = {k: [float(x) for x in v] for k, v in rec.histograms.items()}
            self.client.log_dict(self.run_id, hist, f"update_norms/round_{rec.round:05d}.json")

    def figure(self, name: str, png: Path) -> None:
        self.client.log_artifact(self.run_id, str(png), "figures")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbSink(Sink):
    def __init__(self, directory: str | None, run_name: str) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        if mode not in ("online", "offline", "disabled", "shared"):
            raise ConfigError(f"WANDB_MODE={mode}: choose offline, online or disabled")
        root = Path(directory or ".")
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "driftscope"),
            name=run_name,
            dir=str(root),
            mode=mode,  # type: ignore[arg-type]  # checked above: one of wandb's modes
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def hyperparameters(self, params: dict[str, Any], labels: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)
        self.run.summary["driftscope/labels"] = json.dumps(labels)

    def round(self, rec: RoundExport) -> None:
        data: dict[str, Any] = dict(rec.scalars)
        for name, values in rec.histograms.items():
            if len(values):
                data[name] = self.wandb.Histogram(np.asarray(values).tolist())
        self.run.log(data, step=rec.round, commit=True)  # written now, not at the next step

    def figure(self, name: str, png: Path) -> None:
        self.run.log({f"figures/{name}": self.wandb.Image(str(png))})

    def close(self) -> None:
        self.run.finish()


def open_sink(kind: str, target: str | None, run_name: str) -> Sink:
    """A sink of ``kind`` at ``target`` for a run called ``run_name`` (its file's stem); a target
    that cannot be written is a one-line :class:`~driftscope.errors.DriftscopeError`."""
    try:
        return _open(kind, target, run_name)
    except OSError as err:
        raise DriftscopeError(
            f"cannot write the {kind} export to {target or '.'}: {err.strerror or err}; choose "
            "another target"
        ) from None


def _open(kind: str, target: str | None, run_name: str) -> Sink:
    if kind == "tensorboard":
        assert target is not None
        return TensorBoardSink(target, run_name)
    if kind == "mlflow":
        assert target is not None
        return MlflowSink(target, run_name)
    if kind == "wandb":
        return WandbSink(target, run_name)
    raise ConfigError(f"unknown export kind '{kind}': choose one of {', '.join(KINDS)}")


def figure_pngs(run: Any, directory: Path | None = None) -> list[Path]:
    """The run's figures (``driftscope figures``) as PNG files in ``directory`` (a temp dir)."""
    from driftscope.figures.write import write_figures

    out = Path(directory or tempfile.mkdtemp(prefix="driftscope-figures-"))
    return [p for p in write_figures([run], out) if p.suffix == ".png"]
