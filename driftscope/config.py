"""Run configuration: frozen dataclasses, validated on construction, loadable from TOML.

A run is described by one :class:`RunConfig` with four sections that follow the data flow::

    [data]       dataset, partition          -> driftscope.data, driftscope.partition
    [model]      architecture, head          -> driftscope.models
    [train]      algorithm and its numbers   -> driftscope.algorithms, driftscope.simulator
    [record]     what the recorder stores    -> driftscope.recorder

``RunConfig.from_dict`` accepts the nested form (as in a TOML file); ``RunConfig.replace`` applies
dotted overrides such as ``{"train.lr": 0.1}`` (how CLI flags override a config file). The resolved
config is stored in every run file as JSON (``RunConfig.to_dict``).

``train.params`` holds the chosen algorithm's own parameters (its ``Params`` dataclass, declared in
its file under :mod:`driftscope.algorithms`), e.g. ``[train.params] mu = 0.01`` for FedProx.
Names of datasets, models and algorithms are checked against their registries. Mistakes are
one-line :class:`~driftscope.errors.ConfigError` messages: an unknown key names the nearest valid
one, a wrong type names the key and the expected type, and no number may be NaN or infinite.
Configs of schema-1 run files (``train.mu``, ``train.body_momentum``) are migrated on load.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from driftscope.algorithms import ALGORITHMS
from driftscope.data import DATASETS
from driftscope.device import check_device_name
from driftscope.errors import ConfigError
from driftscope.models import MODELS
from driftscope.registry import checking_names, nearest

PARTITIONS = ("iid", "dirichlet", "shards", "custom")  # custom: train(split=...)
UPDATE_DTYPES = ("float16", "float32")
CKA_PRECISIONS = ("float32", "float64")  # = driftscope.metrics.gram.PRECISIONS


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


#: the largest magnitude of a float setting: what float32 holds (every number is used as a float32
#: tensor or stored in the run file; 1e308 would overflow there)
FLOAT_MAX = 3.4028234663852886e38
#: the largest magnitude of an integer setting: what int64 (the run file's integer type) holds
INT_MAX = 2**63 - 1


def check_number(value: Any, key: str) -> None:
    """A numeric setting must be one that float32 (a float) or int64 (an integer) can hold."""
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite (got {value})")
        if abs(value) > FLOAT_MAX:
            raise ConfigError(
                f"{key} = {value:g} is out of range: a setting must lie within +-3.4e38 "
                "(what float32 holds)"
            )
    elif isinstance(value, int) and not -INT_MAX <= value <= INT_MAX:
        raise ConfigError(
            f"{key} = {value} is out of range: an integer setting must lie within +-(2**63 - 1) "
            "(what int64 holds)"
        )


def _check_finite(obj: Any, section: str) -> None:
    """Every number of a config section must be finite (NaN and inf are never meaningful) and
    within the range its float32 / int64 holds (:func:`check_number`)."""
    for f in fields(obj):
        check_number(getattr(obj, f.name), f"{section}{f.name}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how it is split across clients."""

    dataset: str = "digits"
    data_dir: str | None = None  # None: $DRIFTSCOPE_DATA or ./data_cache
    partition: str = "dirichlet"
    alpha: float = 0.1  # Dirichlet concentration
    classes_per_client: int = 2  # for partition = "shards"
    min_share: float = 0.5  # each client holds >= min_share * (samples / clients)
    max_redraws: int = 1000
    augment: bool | None = None  # None: the dataset's default (on for CIFAR)

    def __post_init__(self) -> None:
        _check_finite(self, "data.")
        DATASETS.check(self.dataset)
        _check(
            self.partition in PARTITIONS,
            f"unknown partition '{self.partition}': choose one of {', '.join(PARTITIONS)}",
        )
        _check(
            math.isfinite(self.alpha) and self.alpha > 0,
            f"alpha must be > 0 (got {self.alpha}): use e.g. --alpha 0.1 for strong label skew",
        )
        _check(
            self.classes_per_client >= 1,
            f"classes_per_client must be >= 1 (got {self.classes_per_client})",
        )
        num_classes = DATASETS.get(self.dataset).num_classes if self.dataset in DATASETS else 2**31
        _check(
            self.partition != "shards" or self.classes_per_client <= num_classes,
            f"classes_per_client {self.classes_per_client} is more than {self.dataset}'s "
            f"{num_classes} classes: give --classes-per-client at most {num_classes}",
        )
        _check(
            0 <= self.min_share < 1,
            f"min_share must be in [0, 1) (got {self.min_share}): it is a fraction of the average",
        )
        _check(self.max_redraws >= 1, f"max_redraws must be >= 1 (got {self.max_redraws})")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and the split of its parameters into body and head."""

    name: str = "small_cnn"
    head: tuple[str, ...] = ()  # fnmatch patterns over parameter names; () = model's own head
    head_last_k: int | None = None  # or: the last k parameterised layers form the head
    buffers: str = "average"  # BatchNorm statistics: "average" | "local" (docs/your-own-model.md)

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", tuple(self.head))
        MODELS.check(self.name)
        modes = ("average", "local")
        _check(self.buffers in modes, f"model.buffers is average or local, not {self.buffers!r}")
        _check(
            self.head_last_k is None or self.head_last_k >= 0,
            f"head_last_k must be >= 0 (got {self.head_last_k})",
        )
        _check(
            not (self.head and self.head_last_k is not None),
            "give either model.head patterns or model.head_last_k, not both",
        )


@dataclass(frozen=True)
class TrainConfig:
    """The federated algorithm and its hyperparameters.

    ``params`` is the chosen algorithm's ``Params`` instance (None: its defaults); the general
    numbers (rounds, lr, momentum, ...) apply to every algorithm.
    """

    algorithm: str = "fedavg"
    rounds: int = 40
    clients: int = 10
    client_fraction: float = 1.0  # share of clients sampled each round
    local_epochs: int = 2
    local_steps: int | None = None  # if set, a fixed number of SGD steps replaces epochs
    batch_size: int = 32
    drop_last: bool = False
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    server_lr: float = 1.0
    weighting: str = "uniform"  # "uniform" (the paper's) or "samples"
    eval_every: int = 1
    batched: str = "auto"  # train sampled clients in one vmapped step: "auto", "on" or "off"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (driftscope.device)
    state_budget_mb: float = 1024.0  # client state (control variates) in memory; more: scratch file
    params: Any = None  # the algorithm's Params; None: its defaults

    def __post_init__(self) -> None:
        _check_finite(self, "train.")
        if checking_names() or self.algorithm in ALGORITHMS:
            cls = ALGORITHMS.get(self.algorithm)
            if self.params is None:
                object.__setattr__(self, "params", cls.Params())
            _check(
                isinstance(self.params, cls.Params),
                f"train.params are {type(self.params).__name__}, not {self.algorithm}'s "
                f"{cls.Params.__name__}: change algorithms with RunConfig.replace",
            )
        else:  # an algorithm this process does not know: its params as stored (a dict)
            object.__setattr__(self, "params", dict(self.params or {}))
        _check(self.rounds >= 1, f"rounds must be >= 1 (got {self.rounds})")
        _check(self.clients >= 1, f"clients must be >= 1 (got {self.clients})")
        _check(
            0 < self.client_fraction <= 1,
            f"client_fraction must be in (0, 1] (got {self.client_fraction})",
        )
        _check(self.local_epochs >= 1, f"local_epochs must be >= 1 (got {self.local_epochs})")
        _check(
            self.local_steps is None or self.local_steps >= 1,
            f"local_steps must be >= 1 (got {self.local_steps})",
        )
        _check(self.batch_size >= 1, f"batch_size must be >= 1 (got {self.batch_size})")
        _check(
            math.isfinite(self.lr) and self.lr > 0,
            f"learning rate must be > 0 (got {self.lr}): try --lr 0.05",
        )
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum})")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})")
        _check(
            math.isfinite(self.server_lr) and self.server_lr > 0,
            f"server_lr must be > 0 (got {self.server_lr})",
        )
        _check(
            self.weighting in ("uniform", "samples"),
            f"unknown weighting '{self.weighting}': choose uniform or samples",
        )
        _check(
            self.batched in ("auto", "on", "off"),
            f"unknown batched '{self.batched}': choose auto, on or off",
        )
        _check(self.eval_every >= 1, f"eval_every must be >= 1 (got {self.eval_every})")
        check_device_name(self.device)
        _check(
            self.state_budget_mb > 0,
            f"state_budget_mb must be > 0 (got {self.state_budget_mb}): e.g. --state-budget-mb 1024",
        )

    @property
    def clients_per_round(self) -> int:
        return max(1, round(self.client_fraction * self.clients))


@dataclass(frozen=True)
class RecordConfig:
    """What the recorder writes. Gram matrices are always kept when recording is on."""

    enabled: bool = True
    every: int = 1  # record per-layer statistics every k rounds
    updates_every: int = 5  # store full client updates every k recorded rounds; 0 = never
    update_dtype: str = "float32"
    update_layers: tuple[str, ...] = ("*",)  # fnmatch patterns over parameter names
    probe_size: int = 128  # probe inputs for activation CKA; 0 = no CKA
    cka_every: int = 10  # compute probe CKA every k recorded rounds (benchmarks/README.md: cost)
    # probe Grams as float32 block products summed and centred in float64 (bounded error,
    # metrics/gram.py gram32_error), or all in float64
    cka_precision: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "update_layers", tuple(self.update_layers))
        _check_finite(self, "record.")
        _check(self.every >= 1, f"record.every must be >= 1 (got {self.every})")
        _check(
            self.updates_every >= 0,
            f"record.updates_every must be >= 0 (got {self.updates_every}); 0 stores no updates",
        )
        _check(
            self.update_dtype in UPDATE_DTYPES,
            f"unknown update dtype '{self.update_dtype}': choose float16 or float32",
        )
        _check(self.probe_size >= 0, f"probe_size must be >= 0 (got {self.probe_size})")
        _check(
            self.probe_size == 0 or self.probe_size >= 4,
            f"probe_size must be 0 (off) or >= 4 (got {self.probe_size}): debiased CKA needs 4",
        )
        _check(self.cka_every >= 1, f"record.cka_every must be >= 1 (got {self.cka_every})")
        _check(
            self.cka_precision in CKA_PRECISIONS,
            f"unknown record.cka_precision '{self.cka_precision}': choose float32 or float64",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. One seed fixes partition, init, sampling and batches."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        _check(self.seed >= 0, f"seed must be >= 0 (got {self.seed})")

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """Build from a nested dict; unknown keys are an error naming the nearest valid one.

        Schema-1 configs (``train.mu``, ``train.body_momentum``) are migrated: the key that belongs
        to the chosen algorithm moves to ``train.params``, the other is dropped. Inside
        ``registry.names_unchecked()`` (a run file's config) names are kept as stored.
        """
        return _build(cls, _migrate(raw), source, prefix="")

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder, not a config file: give --config a TOML file")
        if path.exists() and not path.is_file():
            raise ConfigError(
                f"{path} is not a regular file (a device or a pipe): give --config a TOML file"
            )
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist: check the path given to --config"
            )
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path} is not a UTF-8 text file: give a TOML config file to --config"
            ) from None
        except OSError as err:
            raise ConfigError(f"cannot read {path} ({err.strerror}): check the file") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML ({err}): fix the file") from None
        return cls.from_dict(raw, source=str(path))

    def replace(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.lr": 0.1}``.

        ``train.params.<name>`` keys are checked against the algorithm in effect after the
        overrides; changing ``train.algorithm`` starts from the new algorithm's default params.
        """
        raw = self.to_dict()
        algorithm = overrides.get("train.algorithm", self.train.algorithm)
        if algorithm != self.train.algorithm:
            raw["train"]["params"] = {}
        for key, value in overrides.items():
            parts = key.split(".")
            if parts[:2] == ["train", "params"] and len(parts) == 3:
                raw["train"]["params"][parts[2]] = value  # validated against the algorithm
                continue
            node = raw
            for i, part in enumerate(parts[:-1]):
                if part not in node or not isinstance(node[part], dict):
                    prefix = ".".join(parts[:i]) + "." if i else ""
                    raise ConfigError(_unknown(".".join(parts[: i + 1]), node, prefix, True))
                node = node[part]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
                raise ConfigError(_unknown(key, _leaves(node), prefix))
            node[parts[-1]] = value
        return RunConfig.from_dict(raw, source="")


# keys of schema-1 configs that moved to train.params
_LEGACY_TRAIN_KEYS = ("mu", "body_momentum")


def _migrate(raw: Any) -> Any:
    """Schema-1 config -> current: train.mu / train.body_momentum move to train.params."""
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        return raw
    train = raw["train"]
    legacy = {k: train[k] for k in _LEGACY_TRAIN_KEYS if k in train}
    if not legacy:
        return raw
    train = {k: v for k, v in train.items() if k not in legacy}
    algorithm = train.get("algorithm", TrainConfig.algorithm)
    if algorithm in ALGORITHMS and "params" not in train:
        own = {f.name for f in fields(ALGORITHMS.get(algorithm).Params)}
        train["params"] = {k: v for k, v in legacy.items() if k in own}
    return {**raw, "train": train}


def annotation_text(tp: Any) -> str:
    """A field's type as text ("float | None"), whether annotations are strings or types."""
    if isinstance(tp, str):
        return tp
    args = typing.get_args(tp)
    if args and (typing.get_origin(tp) in (typing.Union, types.UnionType)):
        return " | ".join(annotation_text(a) for a in args)
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _at(source: str) -> str:
    """Message prefix naming where a value came from (a file), or nothing (overrides, flags)."""
    return f"{source}: " if source else ""


def _leaves(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not isinstance(v, dict)}


def _unknown(key: str, valid: Any, prefix: str, section: bool = False) -> str:
    """ "unknown key 'train.lrr': did you mean 'train.lr'? valid keys here: ..."."""
    what = "section" if section else "key"
    name = key[len(prefix) :]
    names = list(valid)
    guess = nearest(name, names)
    hint = f" did you mean '{prefix}{guess}'?" if guess else ""
    listing = ", ".join(prefix + k for k in names) if names else "none"
    return f"unknown {what} '{key}':{hint} valid keys here: {listing}"


def _params_owner(name: str, current: str) -> str | None:
    """The first other algorithm whose Params has a field ``name``."""
    for other, algo in ALGORITHMS.items():
        if other != current and name in {f.name for f in fields(algo.Params)}:
            return other
    return None


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(source)}'{prefix.rstrip('.')}' must be a table")
    known = {f.name: f for f in fields(cls)}
    for name in raw:
        if name not in known:
            section = isinstance(raw[name], dict)
            raise ConfigError(f"{_at(source)}" + _unknown(prefix + name, known, prefix, section))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        f = known[name]
        if cls is TrainConfig and name == "params":
            kwargs[name] = _build_params(raw, value, source)
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, source, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, f, f"{prefix}{name}", source)
    return cls(**kwargs)


def _build_params(train: dict[str, Any], value: Any, source: str) -> Any:
    """``[train.params]`` against the Params of the algorithm chosen in the same table."""
    algorithm = train.get("algorithm", TrainConfig.algorithm)
    if not isinstance(algorithm, str):
        raise ConfigError(f"{_at(source)}'train.algorithm' must be a string (got {algorithm!r})")
    if algorithm not in ALGORITHMS and not checking_names():
        return dict(value) if isinstance(value, dict) else {}  # as stored
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{_at(source)}{ALGORITHMS.unknown_message(algorithm)}")
    params_cls = ALGORITHMS.get(algorithm).Params
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{_at(source)}'train.params' must be a table")
    own = {f.name for f in fields(params_cls)}
    for name in value:
        if name not in own:
            owner = _params_owner(name, algorithm)
            if owner is not None:
                raise ConfigError(
                    f"{_at(source)}'train.params.{name}' is a parameter of {owner}, not of "
                    f"{algorithm}: remove it or choose algorithm {owner}"
                )
    return _build(params_cls, value, source, prefix="train.params.")


_TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _coerce(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    """Type checking so a TOML typo gives a clear message instead of a crash later."""
    annotation = annotation_text(f.type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{_at(source)}'{key}' cannot be empty")
    if annotation.startswith("tuple"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{_at(source)}'{key}' must be a list of strings (got {value!r})")
        return tuple(value)
    kind = annotation.split("|")[0].strip()
    expected = _TYPE_NAMES.get(kind)
    if expected is None:
        return value
    none_ok = " (or empty)" if "None" in annotation else ""
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        raise ConfigError(f"{_at(source)}'{key}' must be {expected}{none_ok} (got {value!r})")
    if kind == "float":
        value = float(value)
    try:
        check_number(value, f"'{key}'")
    except ConfigError as err:
        raise ConfigError(f"{_at(source)}{err}") from None
    return value
