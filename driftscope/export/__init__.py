"""Drift where researchers already look: TensorBoard, MLflow, Weights & Biases.

``export_run(path, kind, target)`` writes a finished (or live) run file's rounds, histograms,
figures and config to one backend; :class:`LiveLogger` is a hook that does the same for each
committed round while a run trains. Every scalar is read back from the run file through the same
tables as ``driftscope analyze --csv`` (:func:`driftscope.analysis.drift_table`), so an exported
value is the analysed value. Names: :mod:`driftscope.export.rounds`; backends (optional extras
``tensorboard``, ``mlflow``, ``wandb``): :mod:`driftscope.export.sinks`.
"""

from __future__ import annotations

from driftscope.export.live import LiveLogger, export_run

__all__ = ["LiveLogger", "export_run"]
