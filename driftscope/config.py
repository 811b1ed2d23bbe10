"""Run configuration: frozen dataclasses, validated on construction, loadable from TOML.

A run is described by one :class:`RunConfig` with four sections that follow the data flow::

    [data]       dataset, partition          -> driftscope.data, driftscope.partition
    [model]      architecture, head          -> driftscope.models
    [train]      algorithm and its numbers   -> driftscope.algorithms, driftscope.simulator
    [record]     what the recorder stores    -> driftscope.recorder

``RunConfig.from_dict`` accepts the nested form (as in a TOML file); ``RunConfig.replace`` applies
dotted overrides such as ``{"train.lr": 0.1}`` (how CLI flags override a config file). The resolved
config is stored in every run file as JSON (``RunConfig.to_dict``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from driftscope.errors import ConfigError

ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedpvr")
PARTITIONS = ("iid", "dirichlet", "shards")
UPDATE_DTYPES = ("float16", "float32")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", tuple(self.head))
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
    """The federated algorithm and its hyperparameters."""

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
    mu: float = 0.01  # FedProx proximal weight
    body_momentum: float | None = 0.9  # FedPVR: momentum on body params (None: use `momentum`)
    eval_every: int = 1

    def __post_init__(self) -> None:
        _check(
            self.algorithm in ALGORITHMS,
            f"unknown algorithm '{self.algorithm}': choose one of {', '.join(ALGORITHMS)}",
        )
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
        _check(
            self.body_momentum is None or 0 <= self.body_momentum < 1,
            f"body_momentum must be in [0, 1) (got {self.body_momentum})",
        )
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})")
        _check(
            math.isfinite(self.server_lr) and self.server_lr > 0,
            f"server_lr must be > 0 (got {self.server_lr})",
        )
        _check(
            self.weighting in ("uniform", "samples"),
            f"unknown weighting '{self.weighting}': choose uniform or samples",
        )
        _check(self.mu >= 0, f"mu must be >= 0 (got {self.mu})")
        _check(self.eval_every >= 1, f"eval_every must be >= 1 (got {self.eval_every})")

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "update_layers", tuple(self.update_layers))
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
        """Build from a nested dict; unknown keys are an error naming the valid ones."""
        return _build(cls, raw, source, prefix="")

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist: check the path given to --config"
            )
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML ({err}): fix the file") from None
        return cls.from_dict(raw, source=str(path))

    def replace(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.lr": 0.1}``."""
        raw = self.to_dict()
        for key, value in overrides.items():
            parts = key.split(".")
            node = raw
            for part in parts[:-1]:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"unknown config key '{key}'")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config key '{key}'")
            node[parts[-1]] = value
        return RunConfig.from_dict(raw, source="overrides")


def _build(cls: type, raw: dict[str, Any], source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys here: "
            + ", ".join(prefix + k for k in known)
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, source, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, f, default, f"{prefix}{name}", source)
    return cls(**kwargs)


def _coerce(value: Any, f: dataclasses.Field, default: Any, key: str, source: str) -> Any:
    """Light type checking so a TOML typo gives a clear message instead of a crash later."""
    annotation = str(f.type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{source}: '{key}' cannot be empty")
    if annotation.startswith("tuple"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: '{key}' must be a list of strings")
        return tuple(value)
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false (got {value!r})")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer (got {value!r})")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: '{key}' must be a number (got {value!r})")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string (got {value!r})")
        return value
    return value
