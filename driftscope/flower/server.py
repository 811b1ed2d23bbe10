"""driftscope's Flower ``ServerApp`` for ``flwr run``: the app's run config is a driftscope config.

``app`` (``driftscope.flower.server:app`` in ``driftscope/flower/app/pyproject.toml``) reads its
run config, which Flower flattens to dotted keys and ``flwr run --run-config`` overrides::

    out            the run file to write (on the SuperLink's machine)
    overwrite      replace ``out`` if it exists
    config-file    a driftscope TOML config (optional); the keys below override it
    round-timeout  seconds to wait for a round's replies
    seed, data.*, model.*, train.*, record.*   driftscope config keys (see driftscope.config)

and runs :class:`~driftscope.flower.strategy.DriftscopeStrategy` for ``train.rounds`` rounds.
Plugins (:mod:`driftscope.plugins`) named in ``DRIFTSCOPE_PLUGINS`` or installed as entry points
are imported first, on the server and on every ClientApp.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from driftscope.config import RunConfig
from driftscope.flower.polling import PollingGrid
from driftscope.flower.strategy import DriftscopeStrategy

APP_KEYS = ("out", "overwrite", "config-file", "round-timeout")
SECTIONS = ("data", "model", "train", "record")


def config_from_run_config(run_config: dict) -> RunConfig:
    """The driftscope config a Flower run config describes.

    Without ``config-file``: driftscope's defaults with the dotted keys applied. With it: the file,
    then the dotted keys whose values differ from driftscope's defaults (Flower hands the ServerApp
    every key of the app's config, the ones nobody set included, so a key still at its default
    cannot be told from one set to the default and must not undo the file's value).
    """
    path = str(run_config.get("config-file", "") or "")
    dotted = {
        k: v
        for k, v in run_config.items()
        if k == "seed" or (k not in APP_KEYS and k.split(".", 1)[0] in SECTIONS)
    }
    if not path:
        return RunConfig().replace(dotted) if dotted else RunConfig()
    defaults = _flatten(RunConfig().to_dict())
    overrides = {k: v for k, v in dotted.items() if defaults.get(k, object()) != v}
    cfg = RunConfig.from_toml(path)
    return cfg.replace(overrides) if overrides else cfg


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from driftscope.plugins import load_plugins

    load_plugins()  # $DRIFTSCOPE_PLUGINS and entry points: the user's registrations
    run_config = dict(context.run_config)
    cfg = config_from_run_config(run_config)
    strategy = DriftscopeStrategy(
        cfg,
        str(run_config.get("out", "runs/flower.h5")),
        overwrite=bool(run_config.get("overwrite", False)),
    )
    # the deployment Grid waits 3 s between pulls for replies; poll with a backoff instead
    grid = PollingGrid(grid)
    strategy.start(grid, timeout=float(run_config.get("round-timeout", 3600.0)))
