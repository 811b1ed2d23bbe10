"""``driftscope run --engine flower``: a driftscope config on Flower's simulation engine (Ray).

One virtual SuperNode per client (node ``i`` has ``partition-id = i``); the ServerApp runs
:class:`~driftscope.flower.strategy.DriftscopeStrategy` in this process, the ClientApps run in Ray
actors. Works offline; telemetry is off.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from driftscope.config import RunConfig
from driftscope.data import Dataset
from driftscope.flower import FlowerRunError, require_flwr

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from driftscope.engine.events import Hook
    from driftscope.flower.strategy import DriftscopeStrategy


def run_simulation(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    supernodes: int | None = None,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    overwrite: bool = False,
    dataset: Dataset | None = None,
    round_timeout: float = 3600.0,
    quiet: bool = True,
    hooks: Sequence[Hook] = (),
) -> Path:
    """Train ``cfg`` on Flower's simulation engine and write the run file ``out``; returns its path.

    ``supernodes`` must equal ``cfg.train.clients`` (each SuperNode holds one client's partition;
    default: that number). ``client_cpus``/``client_gpus``: Ray resources per ClientApp, which
    set how many clients train at once. ``quiet``: only Flower's warnings. ``hooks``: observers
    of your own (e.g. :class:`driftscope.export.LiveLogger`), before the recorder.
    """
    require_flwr(simulation=True)
    nodes = cfg.train.clients if supernodes is None else supernodes
    if nodes != cfg.train.clients:
        raise FlowerRunError(
            f"--supernodes {nodes} but the config has {cfg.train.clients} clients: each SuperNode "
            "holds one client's partition, so give --supernodes equal to --clients (or leave it out)"
        )
    check_client_resources(client_cpus, client_gpus)
    if cfg.train.batched == "on":
        raise FlowerRunError(
            "--batched on is not available with --engine flower (each ClientApp trains one "
            "client): use --batched auto or off, or --engine inprocess"
        )

    from driftscope.flower.strategy import DriftscopeStrategy

    # Built before Flower starts: a bad config or an existing --out fails here, before Ray.
    strategy = DriftscopeStrategy(cfg, out, dataset=dataset, overwrite=overwrite, hooks=hooks)
    simulate(
        [strategy],
        client_cpus=client_cpus,
        client_gpus=client_gpus,
        round_timeout=round_timeout,
        quiet=quiet,
    )
    return Path(out)


def check_client_resources(client_cpus: float, client_gpus: float) -> None:
    """Ray resources per ClientApp that this machine can give, checked before Ray starts:
    CPUs in (0, the machine's CPUs], GPUs in [0, the machine's GPUs]; finite numbers."""
    cpus = os.cpu_count() or 1
    if not (math.isfinite(client_cpus) and 0 < client_cpus <= cpus):
        raise FlowerRunError(
            f"--client-cpus {client_cpus} is not in (0, {cpus}] (this machine has {cpus} CPUs): "
            "try --client-cpus 1"
        )
    if not (math.isfinite(client_gpus) and client_gpus >= 0):
        raise FlowerRunError(
            f"--client-gpus {client_gpus} must be a finite number >= 0: e.g. --client-gpus 0.5"
        )
    if client_gpus > 0:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if client_gpus > gpus:
            raise FlowerRunError(
                f"--client-gpus {client_gpus} but this machine has {gpus} GPUs: "
                + ("leave --client-gpus out" if gpus == 0 else f"give at most {gpus}")
            )


def simulate(
    strategies: Sequence[DriftscopeStrategy],
    *,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    round_timeout: float = 3600.0,
    quiet: bool = True,
) -> None:
    """Run driftscope strategies one after another on one start of Flower's simulation engine.

    All must have the same number of clients (one virtual SuperNode each). Starting the engine
    costs tens of seconds, so a sweep of configs shares one start. Each strategy's run file is
    closed when it ends; one that never started is closed as failed.
    """
    require_flwr(simulation=True)
    nodes = {s.num_clients for s in strategies}
    if len(nodes) != 1:
        raise FlowerRunError(
            f"strategies with different numbers of clients {sorted(nodes)} cannot share one "
            "simulation: run them separately"
        )
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from driftscope.flower.client import app as client_app
    from driftscope.flower.stopping import (
        STOP_WAIT_S,
        QuietAfterStop,
        Stop,
        StoppableGrid,
        shutdown_ray,
        sigterm_kept,
    )

    server_app = ServerApp()
    stop = Stop()  # Ctrl-C or SIGTERM in this thread, passed on to the ServerApp's thread
    server_ended = threading.Event()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            stoppable = StoppableGrid(grid, stop)
            for strategy in strategies:
                stop.check()
                strategy.start(cast("Grid", stoppable), timeout=round_timeout)
        except KeyboardInterrupt:
            if not stop.is_set():
                raise
            # stopped from the main thread, which reports it: the run file is closed
        finally:
            server_ended.set()

    interrupted: KeyboardInterrupt | None = None
    flwr_log = logging.getLogger("flwr")
    quiet_after_stop = QuietAfterStop(stop)
    flwr_log.addFilter(quiet_after_stop)
    try:
        with sigterm_kept():
            simulate_app(
                server_app,
                client_app,
                nodes.pop(),
                client_cpus=client_cpus,
                client_gpus=client_gpus,
                quiet=quiet,
            )
    except (KeyboardInterrupt, SystemExit) as err:
        # the ServerApp thread ends its run "interrupted" at its grid's next call (a round being
        # committed first); Flower's engine stopped with this thread, Ray too unless it was
        # still starting
        interrupted = (
            err if isinstance(err, KeyboardInterrupt) else KeyboardInterrupt(f"exit {err.code}")
        )
        stop.set(interrupted)
        server_ended.wait(STOP_WAIT_S)
        shutdown_ray()
        raise
    finally:
        flwr_log.removeFilter(quiet_after_stop)
        for strategy in strategies:
            if strategy.life.ended is None and strategy.writer is not None:  # it never ran
                if interrupted is not None:
                    strategy.life.end(interrupted)
                else:
                    strategy.writer.close(
                        "failed", "Flower's simulation engine stopped before it ran"
                    )
    # Flower's engine logs an exception of the ServerApp and returns: a run that failed (every
    # client of a round failed, ...) is an error of this call
    for strategy in strategies:
        if strategy.status != "complete":
            status = strategy.status or "failed"
            message = strategy.message.split(": ", 1)[-1] if strategy.message else "it never ran"
            raise FlowerRunError(f"the Flower run {status}: {message}")


def simulate_app(
    server_app: ServerApp,
    client_app: ClientApp,
    num_supernodes: int,
    *,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    quiet: bool = True,
) -> None:
    """Run a ServerApp and a ClientApp (anyone's) on Flower's simulation engine (Ray) in this
    process, with ``num_supernodes`` virtual SuperNodes (node ``i`` has ``partition-id = i``).
    ``quiet``: only Flower's warnings (its INFO log otherwise)."""
    require_flwr(simulation=True)
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    # Flower logs each round and its set-up at INFO: only its warnings unless asked (--verbose)
    logging.getLogger("flwr").setLevel(logging.WARNING if quiet else logging.INFO)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    keep_signal_handlers()
    # the ClientApps in Ray's workers import the same plugins (driftscope.plugins): the workers
    # inherit this process's environment (DRIFTSCOPE_PLUGINS, set by the command line) and Flower
    # passes them its sys.path (where a plugin next to the user was found)
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
        "init_args": {"logging_level": "ERROR"},
    }
    # flwr 1.42 marks its Python entry point ``flwr.simulation.run_simulation`` deprecated in
    # favour of ``flwr run``, which needs a SuperLink daemon and an installed app and cannot take
    # this process's objects; the engine function it calls after the notice is
    # ``_run_simulation`` (flwr is pinned to 1.42; tests/test_flower.py checks its signature).
    _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
    )


def keep_signal_handlers() -> None:
    """Keep Ray from replacing this process's SIGTERM handler: its failure handler (installed
    when Ray starts in this process) catches SIGTERM and aborts (exit -6) instead of letting
    driftscope close the run file and exit 143. Read by Ray when it starts, from the environment
    (which Ray's own processes inherit) or, once Ray is imported, from its constants."""
    import sys

    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # type: ignore[attr-defined]
