"""One call from a config to a finished run file: simulator + recorder + writer.

Everything that can be wrong with the input (config, dataset, head patterns) fails while the
:class:`~driftscope.simulator.Simulator` is built, before any file is created, so bad input never
leaves a damaged run file. Once training starts, each completed round is committed to the file; if
training stops early (divergence, Ctrl-C, a crash) the file is closed with that status and keeps
every completed round.
"""

from __future__ import annotations

import os
from pathlib import Path

from driftscope.config import RunConfig
from driftscope.data import Dataset
from driftscope.errors import DivergenceError
from driftscope.hooks import Hook
from driftscope.recorder import Recorder
from driftscope.runfile import RunWriter
from driftscope.simulator import Simulator


def train(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    dataset: Dataset | None = None,
    hooks: list[Hook] | None = None,
) -> Path:
    """Train ``cfg`` and write the run file ``out``; returns its path.

    ``dataset`` reuses an already loaded dataset; ``hooks`` adds observers of your own (they run
    before the recorder and the writer).
    """
    sim = Simulator(cfg, dataset)
    writer = RunWriter.create(out, sim, overwrite=overwrite)
    try:
        all_hooks: list[Hook] = list(hooks or [])
        if cfg.record.enabled:
            all_hooks.append(Recorder(writer, sim, cfg.record))
        all_hooks.append(writer)
        writer.start_swmr()
        sim.run(all_hooks, progress=progress)
    except DivergenceError as err:
        writer.close("diverged", str(err))
        raise
    except KeyboardInterrupt:
        writer.close("interrupted", "stopped by the user")
        raise
    except BaseException as err:
        writer.close("failed", f"{type(err).__name__}: {err}")
        raise
    writer.close("complete")
    return Path(out)
