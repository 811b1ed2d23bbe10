"""The ``run`` flags, built from the config defaults and the registries, and how they resolve.

Every ``run`` flag sets one dotted config key (:class:`Flag`); the table is derived from
:class:`~driftscope.config.RunConfig`'s defaults and the algorithm, dataset and model registries,
so adding an algorithm parameter adds its flag. Also the thread policy (:func:`choose_threads`).
Torch-free: :mod:`driftscope.cli` parses with it before any heavy module is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftscope.algorithms import ALGORITHMS
from driftscope.config import (
    CKA_PRECISIONS,
    PARTITIONS,
    UPDATE_DTYPES,
    RunConfig,
    annotation_text,
)
from driftscope.data import DATASETS
from driftscope.errors import ConfigError
from driftscope.models import MODELS

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


def _names(registry: Any) -> str:
    return ", ".join(registry.names())


def _general_flags() -> list[Flag]:
    """The flags for the general config keys (the algorithm's own parameters come from ALGORITHMS)."""
    return [
        Flag("data.dataset", f"one of: {_names(DATASETS)}", "data", metavar="NAME"),
        Flag(
            "data.data_dir",
            "where torchvision datasets are cached [$DRIFTSCOPE_DATA or data_cache]",
            "data",
            metavar="DIR",
        ),
        Flag(
            "data.partition",
            "how data is split across clients",
            "data",
            choices=tuple(p for p in PARTITIONS if p != "custom"),  # custom: train(split=...)
        ),
        Flag("data.alpha", "Dirichlet concentration; smaller = more skew", "data", type=float),
        Flag(
            "data.classes_per_client", "classes per client for --partition shards", "data", type=int
        ),
        Flag(
            "data.augment", "crop+flip augmentation [dataset default: on for CIFAR]", "data", "bool"
        ),
        Flag("model.name", f"one of: {_names(MODELS)}", "model", metavar="NAME", name="model"),
        Flag(
            "model.head",
            "parameter-name patterns forming the head, e.g. 'classifier.*' [the model's own head]",
            "model",
            "list",
            metavar="PATTERN",
        ),
        Flag(
            "model.head_last_k", "the last K layers form the head", "model", type=int, metavar="K"
        ),
        Flag(
            "model.buffers",
            "module buffers (BatchNorm statistics) between rounds: average | local (FedBN)",
            "model",
            choices=("average", "local"),
            metavar="MODE",
        ),
        Flag("train.algorithm", f"one of: {_names(ALGORITHMS)}", "training", metavar="NAME"),
        Flag("train.rounds", "communication rounds", "training", type=int),
        Flag("train.clients", "number of clients", "training", type=int),
        Flag("train.client_fraction", "share of clients sampled per round", "training", type=float),
        Flag("train.local_epochs", "local epochs per round", "training", type=int),
        Flag(
            "train.local_steps",
            "fixed local SGD steps per round (replaces epochs)",
            "training",
            type=int,
        ),
        Flag("train.batch_size", "local batch size", "training", type=int),
        Flag("train.drop_last", "drop each client's last incomplete batch", "training", "bool"),
        Flag("train.lr", "local learning rate", "training", type=float),
        Flag("train.momentum", "local SGD momentum", "training", type=float),
        Flag("train.weight_decay", "weight decay", "training", type=float),
        Flag("train.server_lr", "server learning rate", "training", type=float),
        Flag(
            "train.weighting",
            "client weights in the average",
            "training",
            choices=("uniform", "samples"),
        ),
        Flag(
            "train.batched",
            "train a round's clients in one vmapped step (auto: from 32 clients, small inputs)",
            "training",
            choices=("auto", "on", "off"),
        ),
        Flag("train.eval_every", "evaluate the global model every K rounds", "training", type=int),
        Flag(
            "train.device",
            "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps",
            "training",
            metavar="DEVICE",
        ),
        Flag(
            "train.state_budget_mb",
            "MiB of memory for per-client state (control variates); beyond it a scratch file",
            "training",
            type=float,
            metavar="MIB",
        ),
        Flag("seed", "fixes partition, init, sampling and batch order", "training", type=int),
        Flag(
            "record.enabled",
            "record per-layer drift (--no-record for baselines)",
            "recording",
            "bool",
            name="record",
        ),
        Flag(
            "record.every",
            "record Gram matrices every K rounds",
            "recording",
            type=int,
            metavar="K",
            name="record_every",
        ),
        Flag(
            "record.updates_every",
            "store full client updates every K recorded rounds; 0 = never",
            "recording",
            type=int,
            metavar="K",
        ),
        Flag("record.update_dtype", "dtype of stored updates", "recording", choices=UPDATE_DTYPES),
        Flag(
            "record.update_layers",
            "store updates only for parameters matching these patterns",
            "recording",
            "list",
            metavar="PATTERN",
        ),
        Flag(
            "record.probe_size", "probe inputs for activation CKA; 0 = off", "recording", type=int
        ),
        Flag(
            "record.cka_every",
            "probe CKA every K recorded rounds",
            "recording",
            type=int,
            metavar="K",
        ),
        Flag(
            "record.cka_precision",
            "probe Grams: float32 products summed and centred in float64 (bounded error), or float64",
            "recording",
            choices=CKA_PRECISIONS,
        ),
    ]


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
    for name, algo in ALGORITHMS.items():
        for f in dataclasses.fields(algo.Params):
            owners.setdefault(f.name, []).append(name)
            fields.setdefault(f.name, f)
    flags = []
    for pname, f in fields.items():
        annotation = annotation_text(f.type)
        base = {"float": float, "int": int, "str": str, "bool": bool}.get(
            annotation.split("|")[0].strip(), str
        )
        kind = "bool" if base is bool else "value"
        parse = _optional(base) if "None" in annotation else base
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} ({', '.join(owners[pname])}) [{default}]"
        if "None" in annotation and "none" not in help_text:
            help_text += " ('none' for none)"
        flags.append(
            Flag(
                f"train.params.{pname}",
                help_text,
                "algorithm parameters",
                kind,
                type=parse if kind == "value" else None,
                choices=f.metadata.get("choices"),
            )
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


FLAG_KEYS = flag_keys()  # as registered at import; build_parser() re-reads the registries


def _default_of(key: str, defaults: dict[str, Any]) -> Any:
    node: Any = defaults
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_dict()
    groups: dict[str, Any] = {}
    for f in run_flags():
        if f.group not in groups:
            groups[f.group] = p.add_argument_group(f.group)
        g = groups[f.group]
        help_text = f.help
        if not f.key.startswith("train.params.") and "[" not in help_text:
            default = _default_of(f.key, defaults)
            shown = ", ".join(default) if isinstance(default, list | tuple) else default
            help_text += f" [{shown}]"
        common: dict[str, Any] = {"dest": f.dest, "help": help_text, "default": argparse.SUPPRESS}
        if f.kind == "bool":
            g.add_argument(f.flag, action=argparse.BooleanOptionalAction, **common)
        elif f.kind == "list":
            g.add_argument(f.flag, nargs="+", metavar=f.metavar, **common)
        else:
            metavar = f.metavar or (None if f.choices else "N" if f.type is int else "X")
            g.add_argument(f.flag, type=f.type, choices=f.choices, metavar=metavar, **common)


def _add_threads(p: argparse.ArgumentParser) -> None:
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
    from driftscope.models import check_model_fits

    ds = DATASETS.get(cfg.data.dataset)
    check_model_fits(cfg.model.name, ds.input_shape, ds.num_classes, ds.name)
