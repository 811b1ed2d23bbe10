"""Plugins: a user's module that registers a model, imported by ``driftscope --plugin``, by
``DRIFTSCOPE_PLUGINS``, and by the Flower engine's ClientApps; a Flower round in which every
client failed fails the run.

The runs compared here are made by the same code on the same machine from the same seed, so
they are compared exactly (as tests/test_flower.py compares in-process and Flower runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from driftscope import open_run, plugins, train
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent(
    '''
    """A user's plugin: registers the model 'tiny_plugin' (torch imported when it is built)."""
    import math

    from driftscope.models.registry import ModelSpec, register_model


    def build(shape, num_classes):
        from torch import nn

        class Tiny(nn.Module):
            head_prefixes = ("head",)

            def __init__(self):
                super().__init__()
                self.body = nn.Linear(math.prod(shape), 16)
                self.head = nn.Linear(16, num_classes)

            def forward(self, x):
                return self.head(self.body(x.flatten(1)).relu())

        return Tiny()


    register_model(ModelSpec("tiny_plugin", "a plugin's model", build))
    '''
)

RUN = ["--clients", "3", "--rounds", "2", "--local-steps", "2", "--probe-size", "16", "-q"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV}
    return {**env, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **extra}


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def loaded_plugin(plugin_file, monkeypatch):
    """The plugin imported into this process for one test (unregistered afterwards)."""
    monkeypatch.setenv(plugins.ENV, str(plugin_file))
    plugins.load_plugins(entry_points=False)
    try:
        yield plugin_file
    finally:
        MODELS.unregister("tiny_plugin")
        plugins._LOADED.pop(str(plugin_file), None)
        sys.modules.pop("driftscope_plugin_my_plugin", None)


def test_missing_or_broken_plugins_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="plugin 'no_such_module_here' not found"):
        plugins.load_plugin("no_such_module_here")
    with pytest.raises(ConfigError, match="does not exist"):
        plugins.load_plugin(str(tmp_path / "nothing.py"))
    (tmp_path / "broken_plugin.py").write_text("import no_such_dependency\n")
    with pytest.raises(ConfigError, match="'broken_plugin' failed on import: ModuleNotFoundError"):
        plugins.load_plugin("broken_plugin")
    (tmp_path / "raising.py").write_text("raise RuntimeError('bad registration')\n")
    with pytest.raises(ConfigError, match="failed on import: RuntimeError: bad registration"):
        plugins.load_plugin(str(tmp_path / "raising.py"))
    assert plugins.from_env({plugins.ENV: " a, ,b.py "}) == ["a", "b.py"]
    out = subprocess.run(
        [sys.executable, "-m", "driftscope", "--plugin", "no_such_module_here", "run"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"driftscope: error: plugin 'no_such_module_here' not found: give a module importable "
        f"from {tmp_path} or the Python path, or a path to a .py file"
    ]


def test_a_plugin_model_on_the_command_line(plugin_file, tmp_path):
    """``--plugin MODULE`` (a module next to the user) and ``DRIFTSCOPE_PLUGINS`` (a file) make
    the same run file; a process without the plugin reads it."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for args, env in (
        (["--plugin", "my_plugin", "run", "--out", str(a)], _env()),
        (["run", "--out", str(b)], _env(**{plugins.ENV: str(plugin_file)})),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "driftscope", *args, "--model", "tiny_plugin", *RUN],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr
    with open_run(a) as ra, open_run(b) as rb:
        assert ra.config_dict["model"]["name"] == "tiny_plugin" and ra.status == "complete"
        np.testing.assert_array_equal(ra.metrics.test_loss, rb.metrics.test_loss)
        np.testing.assert_array_equal(ra.gram("body.weight"), rb.gram("body.weight"))
    assert "tiny_plugin" not in MODELS


def test_flower_clients_import_the_plugins_and_match_inprocess(loaded_plugin, digits, tmp_path):
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid
    from test_flower import _run_files_equal

    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    cfg = small_config(train__clients=3, train__rounds=2, train__local_steps=2,
                       record__probe_size=16, model__name="tiny_plugin")  # fmt: skip
    train(cfg, tmp_path / "a.h5", dataset=digits)
    DriftscopeStrategy(cfg, tmp_path / "b.h5", dataset=digits).start(LocalGrid(client_app, 3))
    _run_files_equal(tmp_path / "a.h5", tmp_path / "b.h5")


def test_a_round_in_which_every_client_failed_fails_the_run(digits, tmp_path):
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid

    from driftscope.flower import FlowerRunError
    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    def fail(msg, client):  # every client of round 1 (round 0 is committed, so a file stays)
        train_msg = msg.metadata.message_type == "train"
        return "error" if train_msg and int(msg.content["config"]["round"]) == 1 else None

    cfg = small_config(train__clients=3, train__rounds=2, train__local_steps=2)
    strategy = DriftscopeStrategy(cfg, tmp_path / "f.h5", dataset=digits)
    with pytest.raises(FlowerRunError, match="every client failed in round 1 \\(client 0: ") as err:
        strategy.start(LocalGrid(client_app, 3, fail=fail))
    assert "\n" not in str(err.value) and "--plugin" in str(err.value)
    with open_run(tmp_path / "f.h5") as run:
        assert run.status == "failed"
        assert "every client failed in round 1" in run.status_message
        assert len(run.metrics) == 1


@pytest.mark.slow
def test_plugins_on_flowers_simulation_engine(plugin_file, tmp_path):
    """``driftscope --plugin ... run --engine flower`` equals the in-process run: the Ray workers
    import the plugin (one engine start)."""
    pytest.importorskip("ray")

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for out, engine in ((a, "inprocess"), (b, "flower")):
        res = subprocess.run(
            [sys.executable, "-m", "driftscope", "--plugin", "my_plugin", "run", "--out", str(out),
             "--model", "tiny_plugin", "--engine", engine, *RUN],
            capture_output=True, text=True, env=_env(), cwd=tmp_path,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    from test_flower import _run_files_equal

    _run_files_equal(a, b)
