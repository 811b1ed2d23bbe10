"""One call from a config to a finished run file: setup + in-process engine + run-file lifecycle.

Everything that can be wrong with the input (config, dataset, head patterns, recording patterns)
fails while the :class:`~driftscope.engine.setup.RunSetup` and the recording plan are built, before
any file is created, so bad input never leaves a damaged run file. Once training starts, each
round is committed to the file by :meth:`~driftscope.runfile.writer.RunWriter.commit` after every hook has
seen its end, together with the state that continuing needs (global model, control variates); if
training stops early (divergence, Ctrl-C, SIGTERM, a crash, SIGKILL) the file keeps every committed
round, and ``train(..., resume=True)`` (``driftscope run --resume RUN.h5``) continues it from its
last committed round to the same final state as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftscope.algorithms import warn_settings
from driftscope.config import RunConfig
from driftscope.data import Dataset, TensorData
from driftscope.data.partition import Split
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.lifecycle import INPROCESS, open_recording
from driftscope.engine.setup import RunSetup
from driftscope.engine.signals import sigterm_as_interrupt
from driftscope.errors import DriftscopeError, RunFileError
from driftscope.registry import names_unchecked
from driftscope.runfile.resume import resume_config, stored_threads


def train(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    dataset: Dataset | TensorData | None = None,
    hooks: list[Hook] | None = None,
    resume: bool = False,
    threads: int | None = None,
    model: Callable[[], Any] | None = None,
    split: Split | None = None,
) -> Path:
    """Train ``cfg`` and write the run file ``out``; returns its path.

    ``threads``: torch intra-op threads for this run (restored afterwards). None: the command
    line's policy (:func:`driftscope.cli.flags.choose_threads`: 1 for models under 1M parameters,
    else torch's current count), or, on resume, the count the run was trained with. The run file
    records the count (``environment.torch_threads``).

    Your own objects need no registration: ``model`` is a zero-argument factory returning a
    ``torch.nn.Module`` (called for the training model and the recorder's probe model; the seed
    fixes its initial weights), ``dataset`` a :class:`~driftscope.data.TensorData` (tensors of any
    shape (N, ...)) or a loaded :class:`~driftscope.data.Dataset`, ``split`` one index array per
    client or a callable ``(labels, rng) -> list of arrays``
    (:func:`~driftscope.data.partition.custom_split`). The run file records the dataset's and model's
    own names (their ``name``, else the class name) and the split as ``custom``, with every
    client's size and label histogram. ``hooks`` adds observers of your own (they run before the
    recorder). ``resume=True`` continues the interrupted, failed or killed run ``out``, whose
    config must equal ``cfg`` (see :func:`resume`; give the same own objects again). Legal but
    questionable settings (e.g. momentum with control variates) emit a
    :class:`~driftscope.errors.SettingsWarning`.
    """
    out = Path(out)
    warn_settings(cfg.train, stacklevel=2)  # e.g. momentum with control variates
    import torch

    previous = torch.get_num_threads()
    try:
        with sigterm_as_interrupt():
            stored = resume_config(out) if resume else None
            sim = Simulator.from_setup(RunSetup(cfg, dataset, model=model, split=split))
            if stored is not None:  # the config as recorded: own objects' names, custom split
                _check_same_config(out, sim.cfg, stored)
            torch.set_num_threads(_run_threads(sim.layout.numel, threads, out if resume else None))
            if resume:
                _check_same_threads(out)
            _train(sim, cfg, out, overwrite, progress, hooks, resume)
    finally:
        torch.set_num_threads(previous)
    return out


def _run_threads(numel: int, requested: int | None, resumed: Path | None) -> int:
    """The thread count: ``requested``, else a resumed run's own, else the CLI's policy."""
    import torch

    from driftscope.cli.flags import choose_threads

    if requested is None and resumed is not None:
        requested = stored_threads(resumed)
    return choose_threads(numel, requested, torch.get_num_threads())[0]


def _train(
    sim: Simulator,
    cfg: RunConfig,
    out: Path,
    overwrite: bool,
    progress: bool,
    hooks: list[Hook] | None,
    resume: bool,
) -> None:
    life, state, start = open_recording(
        sim.setup,
        out,
        engine=INPROCESS,
        hooks=hooks or (),
        overwrite=overwrite,
        resume=resume,
        state=lambda: (sim.commit_state(), sim.algorithm.round_record()),
        initial_state=sim.state(),
    )
    try:
        if resume and start > 0:
            sim.load_state(state, start)
    except BaseException as err:
        life.end(err)
        raise
    sim.run(progress=progress, lifecycle=life, summaries=False)


def resume(
    path: str | os.PathLike,
    *,
    progress: bool = False,
    dataset: Dataset | TensorData | None = None,
    hooks: list[Hook] | None = None,
    model: Callable[[], Any] | None = None,
    split: Split | None = None,
) -> Path:
    """Continue the interrupted, failed or killed run ``path`` with its own config (and the
    same own ``model``, ``dataset`` and ``split`` it was trained with, if any)."""
    own = model is not None or dataset is not None or split is not None
    with names_unchecked(own):  # own objects: the names they gave are not registered
        cfg = RunConfig.from_dict(json.loads(resume_config(path)), source=str(path))
    return train(
        cfg,
        path,
        progress=progress,
        dataset=dataset,
        hooks=hooks,
        resume=True,
        model=model,
        split=split,
    )


def _check_same_threads(path: Path) -> None:
    import torch

    stored, now = stored_threads(path), torch.get_num_threads()
    if stored is not None and stored != now:
        warnings.warn(
            f"{path} was trained with {stored} torch threads, resumed with {now}: the resumed "
            f"rounds will not be bit-identical to an uninterrupted run (torch.set_num_threads({stored}))",
            stacklevel=3,
        )


def _check_same_config(path: Path, cfg: RunConfig, stored_json: str) -> None:
    """A resumed run must continue with the config it started with (data_dir may move). A key
    the stored config lacks (written before the key existed) counts as its default."""
    raw = json.loads(stored_json)
    try:
        raw = json.loads(RunConfig.from_dict(raw, source=str(path)).to_json())
    except DriftscopeError:
        pass  # compared as stored: the difference is named below
    stored = _flatten(raw)
    given = _flatten(json.loads(cfg.to_json()))
    for key in sorted(set(stored) | set(given)):
        if key in ("data.data_dir", "train.device", "train.state_budget_mb"):
            continue  # where it runs, not what: a run may resume on another device or budget
        if stored.get(key) != given.get(key):
            raise RunFileError(
                f"{path} was run with {key} = {json.dumps(stored.get(key))}, not "
                f"{json.dumps(given.get(key))}: resume it with its own config (drop the flag)"
            )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
