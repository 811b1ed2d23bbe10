"""The ``run`` flags, derived from the config's fields and the registries, and how they resolve.

Every ``run`` flag sets one dotted config key (:class:`Flag`). The flags are derived from the
fields themselves: a :class:`~driftscope.config.RunConfig` section's field with ``help``
(:func:`driftscope.options.option`: help, flag name, metavar; choices and type from its type
hint) and every registered algorithm's ``Params`` field, so adding a field adds its flag. Also the thread policy (:func:`choose_threads`).
Torch-free: :mod:`driftscope.cli` parses with it before any heavy module is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftscope.algorithms import ALGORITHMS
from driftscope.config import RunConfig
from driftscope.data import DATASETS
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS
from driftscope.options import FieldType, field_types

# The most torch intra-op threads a run may ask for (torch holds the count in a C int).
MAX_THREADS = 4096
# Thread policy: below this many parameters one torch thread is used (see choose_threads).
SMALL_MODEL_PARAMS = 1_000_000


@dataclass(frozen=True)
class Flag:
    """One ``run`` flag that sets one dotted config key."""

    key: str  # dotted config key
    help: str
    group: str
    kind: str = "value"  # "value", "bool" (--x/--no-x), "list" (nargs +)
    type: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    name: str | None = None  # the flag without dashes; default: the key's last part

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.key.split(".")[-1]).replace("_", "-")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


#: the help's groups, in order; a config section's flags go to its group unless a field names one
GROUPS = ("data", "model", "training", "recording", "algorithm parameters")
SECTION_GROUPS = {"data": "data", "model": "model", "train": "training", "record": "recording"}


def field_flag(key: str, f: dataclasses.Field, kind: FieldType, group: str, help: str) -> Flag:
    """The flag of one config or ``Params`` field: its kind, type and choices from the type hint
    (``kind``), its name and metavar from the field's metadata."""
    flag_kind = "list" if kind.is_list else "bool" if kind.base is bool else "value"
    parse = kind.base or str
    return Flag(
        key,
        help,
        f.metadata.get("group", group),
        flag_kind,
        type=(_optional(parse) if kind.optional else parse) if flag_kind == "value" else None,
        choices=f.metadata.get("choices") or kind.choices,
        metavar=f.metadata.get("metavar")
        or (
            None if kind.choices else "N" if parse is int else "X" if flag_kind == "value" else None
        ),
        name=f.metadata.get("flag"),
    )


def _general_flags() -> list[Flag]:
    """The flags of the general config: every field of :class:`RunConfig` and its sections that
    carries ``help`` (:func:`driftscope.options.option`), in the config's order."""
    hints = typing.get_type_hints(RunConfig)
    top = field_types(RunConfig)
    flags = []
    for f in dataclasses.fields(RunConfig):
        section = hints[f.name]
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            kinds = field_types(section)
            group = SECTION_GROUPS.get(f.name, f.name)
            for g in dataclasses.fields(section):
                if "help" in g.metadata:
                    key = f"{f.name}.{g.name}"
                    flags.append(field_flag(key, g, kinds[g.name], group, _help(g)))
        elif "help" in f.metadata:
            flags.append(field_flag(f.name, f, top[f.name], "training", _help(f)))
    return flags


def _help(f: dataclasses.Field) -> str:
    """A config field's help: its text with the registry's names, then its default."""
    text = str(f.metadata["help"])
    if "names" in f.metadata:
        text = text.replace("{names}", ", ".join(f.metadata["names"].names()))
    if "[" not in text:
        default = f.default
        text += f" [{', '.join(default) if isinstance(default, tuple) else default}]"
    return text


def _optional(parse: Any) -> Any:
    """A flag type that also accepts 'none' (the config's None)."""

    def convert(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    convert.__name__ = parse.__name__  # argparse names the type in its error message
    return convert


def _param_flags() -> list[Flag]:
    """One flag per algorithm-parameter name over every registered algorithm."""
    owners: dict[str, list[str]] = {}
    fields: dict[str, dataclasses.Field] = {}
    owner_params: dict[str, type] = {}
    for name, algo in ALGORITHMS.items():
        for f in dataclasses.fields(algo.Params):
            owners.setdefault(f.name, []).append(name)
            fields.setdefault(f.name, f)
            owner_params.setdefault(f.name, algo.Params)
    flags = []
    for pname, f in fields.items():
        kind = field_types(owner_params[pname])[pname]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} ({', '.join(owners[pname])}) [{default}]"
        if kind.optional and "none" not in help_text:
            help_text += " ('none' for none)"
        flags.append(
            field_flag(f"train.params.{pname}", f, kind, "algorithm parameters", help_text)
        )
    return flags


def param_owners() -> dict[str, tuple[str, ...]]:
    """Parameter name -> the algorithms that have it."""
    out: dict[str, list[str]] = {}
    for name, algo in ALGORITHMS.items():
        for f in dataclasses.fields(algo.Params):
            out.setdefault(f.name, []).append(name)
    return {k: tuple(v) for k, v in out.items()}


def run_flags() -> list[Flag]:
    """Every config flag of ``driftscope run``: the general ones, then the algorithm parameters."""
    flags = _general_flags() + _param_flags()
    seen: dict[str, str] = {}
    for f in flags:
        if f.dest in seen:
            raise ValueError(f"flag {f.flag} would set both {seen[f.dest]} and {f.key}")
        seen[f.dest] = f.key
    return flags


def flag_keys() -> dict[str, str]:
    """argparse dest -> dotted config key, for every config flag of ``driftscope run``."""
    return {f.dest: f.key for f in run_flags()}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    flags = run_flags()
    groups: dict[str, Any] = {}
    for name in (*GROUPS, *(f.group for f in flags)):
        if name not in groups:
            groups[name] = p.add_argument_group(name)
    for f in flags:
        g = groups[f.group]
        common: dict[str, Any] = {"dest": f.dest, "help": f.help, "default": argparse.SUPPRESS}
        if f.kind == "bool":
            g.add_argument(f.flag, action=argparse.BooleanOptionalAction, **common)
        elif f.kind == "list":
            g.add_argument(f.flag, nargs="+", metavar=f.metavar, **common)
        else:
            metavar = f.metavar or (None if f.choices else "N" if f.type is int else "X")
            g.add_argument(f.flag, type=f.type, choices=f.choices, metavar=metavar, **common)


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads [1 for models under 1M parameters, else torch's default]",
    )


def resolve_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Config file (if any; else ``base`` or the default), then the flags that were given.

    An algorithm-parameter flag must belong to the algorithm in effect (from the flags or the file).
    A new run (no ``base``) whose model is named neither by ``--model`` nor by the file gets its
    dataset's default model (``DatasetSpec.default_model``: ``cnn1d`` for ``mnist1d``), the one
    ``reproduce`` uses.
    """
    cfg = (
        RunConfig.from_toml(args.config) if getattr(args, "config", None) else (base or RunConfig())
    )
    overrides: dict[str, Any] = {}
    for dest, key in flag_keys().items():
        if hasattr(args, dest):
            value = getattr(args, dest)
            overrides[key] = list(value) if isinstance(value, list) else value
    algorithm = overrides.get("train.algorithm", cfg.train.algorithm)
    if algorithm in ALGORITHMS:
        own = {f.name for f in dataclasses.fields(ALGORITHMS.get(algorithm).Params)}
        owners = param_owners()
        for key in overrides:
            name = key.removeprefix("train.params.")
            if key.startswith("train.params.") and name not in own:
                flag = "--" + name.replace("_", "-")
                them = " or ".join(owners.get(name, ()))
                raise ConfigError(
                    f"{flag} is a parameter of {them}, not of {algorithm}: "
                    f"drop {flag} or choose --algorithm {owners[name][0]}"
                )
    if base is None and "model.name" not in overrides and not _file_names_model(args):
        dataset = overrides.get("data.dataset", cfg.data.dataset)
        dataset_model = DATASETS.get(dataset).default_model if dataset in DATASETS else None
        if dataset_model is not None:
            overrides["model.name"] = dataset_model
    return cfg.replace(overrides) if overrides else cfg


def _file_names_model(args: argparse.Namespace) -> bool:
    """Whether the ``--config`` file sets ``model.name`` (read by RunConfig.from_toml before)."""
    import tomllib

    path = getattr(args, "config", None)
    if not path:
        return False
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return isinstance(raw.get("model"), dict) and "name" in raw["model"]


def choose_threads(num_params: int, requested: int | None, default: int) -> tuple[int, str]:
    """torch intra-op threads for a model of ``num_params`` parameters, and the reason.

    ``requested`` (``--threads``) wins. Otherwise models under :data:`SMALL_MODEL_PARAMS` (1M)
    parameters get 1 thread: their per-batch kernels are too small to split across threads, and on
    shared cores extra threads only wait for each other (benchmarks/README.md). Larger models
    keep torch's ``default`` (the core count, or ``OMP_NUM_THREADS``).
    """
    if requested is not None:
        if not 1 <= requested <= MAX_THREADS:
            raise ConfigError(
                f"--threads must be between 1 and {MAX_THREADS} (got {requested}): "
                "e.g. --threads 1 for small models"
            )
        return requested, "--threads"
    if num_params < SMALL_MODEL_PARAMS:
        return 1, f"{num_params:,} parameters < {SMALL_MODEL_PARAMS:,}: one thread is fastest"
    return default, f"{num_params:,} parameters: torch's default"


def apply_threads(cfg: RunConfig, requested: int | None) -> str:
    """Set torch's thread count by :func:`choose_threads`; return the line that says so.

    The commands print that line once, with their result (so a user error stays one line).
    The run file records the count (``environment.torch_threads``).
    """
    import torch

    ds = DATASETS.get(cfg.data.dataset)
    num_params = MODELS.get(cfg.model.name).num_params(ds.input_shape, ds.num_classes)
    threads, why = choose_threads(num_params, requested, torch.get_num_threads())
    torch.set_num_threads(threads)
    return f"torch threads: {threads} ({cfg.model.name}, {why})"


def default_out(cfg: RunConfig) -> Path:
    """``runs/<dataset>-<algorithm>-<partition>-seed<seed>.h5``, plus each of the model, clients,
    rounds and learning rate that differs from the default (``-cnn1d``, ``-100clients``,
    ``-5rounds``, ``-lr0.1``), so runs that differ in them get different files."""
    default = RunConfig()
    part = cfg.data.partition + (f"{cfg.data.alpha:g}" if cfg.data.partition == "dirichlet" else "")
    own_model = DATASETS.get(cfg.data.dataset).default_model or default.model.name
    extra = "".join(
        text
        for differs, text in (
            (cfg.model.name != own_model, f"-{cfg.model.name}"),
            (cfg.train.clients != default.train.clients, f"-{cfg.train.clients}clients"),
            (cfg.train.rounds != default.train.rounds, f"-{cfg.train.rounds}rounds"),
            (cfg.train.lr != default.train.lr, f"-lr{cfg.train.lr:g}"),
        )
        if differs
    )
    name = f"{cfg.data.dataset}-{cfg.train.algorithm}-{part}{extra}-seed{cfg.seed}.h5"
    return Path("runs") / name


def check_fits(cfg: RunConfig) -> None:
    """The model takes the dataset's inputs (one-line ConfigError), from the dataset's declared
    shape: before any data is loaded or any file is touched."""
    from driftscope.models.registry import check_model_fits

    ds = DATASETS.get(cfg.data.dataset)
    check_model_fits(cfg.model.name, ds.input_shape, ds.num_classes, ds.name)
