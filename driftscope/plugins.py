"""Plugins: modules of the user's that register models, datasets, algorithms or metrics.

A plugin is an ordinary Python module whose import registers things (``register_model``,
``register_dataset``, ``register_algorithm``, ``register_metric``). It is named

* on the command line: ``driftscope --plugin my_module run --model mine ...`` (repeatable; a
  module name importable from the current directory or the Python path, or a path to a ``.py``
  file);
* in the environment: ``DRIFTSCOPE_PLUGINS=my_module,other.py`` (comma-separated);
* by an installed package, in the entry-point group ``driftscope.plugins``
  (``[project.entry-points."driftscope.plugins"] mine = "my_package.driftscope_plugin"``).

:func:`load_plugins` imports them once per process. The command line loads them before it builds
its parser (so ``--model mine`` is a valid choice) and puts the names it loaded into
``DRIFTSCOPE_PLUGINS`` (:func:`export`), so that the Flower engine's ClientApps and Ray workers,
which start from that environment, import the same registrations. Torch-free.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from driftscope.errors import ConfigError

ENV = "DRIFTSCOPE_PLUGINS"
ENTRY_POINT_GROUP = "driftscope.plugins"

_LOADED: dict[str, ModuleType] = {}  # plugin name as given -> its module


def from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The plugins named in ``DRIFTSCOPE_PLUGINS`` (comma-separated; blanks ignored)."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    return [name.strip() for name in value.split(",") if name.strip()]


def load_plugin(name: str) -> ModuleType:
    """Import one plugin (a module name, or a path to a ``.py`` file), once per process.

    A plugin that cannot be found or fails on import is a one-line :class:`ConfigError`."""
    if name in _LOADED:
        return _LOADED[name]
    if name.endswith(".py") or os.sep in name:
        module = _load_file(Path(name))
    else:
        module = _load_module(name)
    _LOADED[name] = module
    return module


def load_plugins(
    names: Iterable[str] = (), *, env: bool = True, entry_points: bool = True
) -> list[str]:
    """Import ``names``, then those in ``DRIFTSCOPE_PLUGINS`` (``env``) and the installed
    ``driftscope.plugins`` entry points (``entry_points``); returns the names given and from the
    environment, in order, without repeats (what :func:`export` passes on)."""
    wanted: list[str] = []
    for name in [*names, *(from_env() if env else [])]:
        if name not in wanted:
            wanted.append(name)
    for name in wanted:
        load_plugin(name)
    if entry_points:
        _load_entry_points()
    return wanted


def export(names: Iterable[str]) -> None:
    """Put ``names`` into ``DRIFTSCOPE_PLUGINS`` of this process (what its children inherit):
    file paths made absolute, so a worker started in another directory finds them."""
    resolved = [str(Path(n).resolve()) if n.endswith(".py") or os.sep in n else n for n in names]
    if resolved:
        os.environ[ENV] = ",".join(resolved)


def _load_module(name: str) -> ModuleType:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # a module next to the user, as `python -c "import my_module"` would find it
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise ConfigError(
                f"plugin '{name}' not found: give a module importable from {cwd} or the Python "
                "path, or a path to a .py file"
            ) from None
        raise ConfigError(
            f"plugin '{name}' failed on import: {type(err).__name__}: {err}"
        ) from None
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"plugin '{name}' failed on import: {type(err).__name__}: {err}"
        ) from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"plugin file {path} does not exist: check the path given to --plugin")
    module_name = f"driftscope_plugin_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {path} is not a Python file: give a .py file or a module name")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        del sys.modules[module_name]
        raise
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"plugin {path} failed on import: {type(err).__name__}: {err}") from None
    return module


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name}"
        if key in _LOADED:
            continue
        try:
            loaded = ep.load()
        except Exception as err:
            raise ConfigError(
                f"plugin entry point '{ep.name}' ({ep.value}) failed on import: "
                f"{type(err).__name__}: {err}"
            ) from None
        _LOADED[key] = loaded if isinstance(loaded, ModuleType) else sys.modules[ep.module]
