"""Run configuration: frozen dataclasses, validated on construction, loadable from TOML.

A run is described by one :class:`RunConfig` with four sections that follow the data flow::

    [data]       dataset, partition          -> driftscope.data, driftscope.data.partition
    [model]      architecture, head          -> driftscope.models.registry
    [train]      algorithm and its numbers   -> driftscope.algorithms, driftscope.engine.inprocess
    [record]     what the recorder stores    -> driftscope.engine.recorder

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
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from driftscope.algorithms import ALGORITHMS
from driftscope.config_build import build_section, leaves, migrate_schema1, unknown_key
from driftscope.data import DATASETS
from driftscope.device import check_device_name
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS
from driftscope.options import check_choices, check_number, option
from driftscope.registry import checking_names

Partition = Literal["iid", "dirichlet", "shards", "custom"]  # custom: train(split=...)
Buffers = Literal["average", "local"]
Weighting = Literal["uniform", "samples"]
Batched = Literal["auto", "on", "off"]
UpdateDtype = Literal["float16", "float32"]
CkaPrecision = Literal["float32", "float64"]  # = driftscope.metrics.gram.PRECISIONS
PARTITIONS: tuple[str, ...] = typing.get_args(Partition)
UPDATE_DTYPES: tuple[str, ...] = typing.get_args(UpdateDtype)
CKA_PRECISIONS: tuple[str, ...] = typing.get_args(CkaPrecision)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_finite(obj: Any, section: str) -> None:
    """Every number of a config section must be finite (NaN and inf are never meaningful) and
    within the range its float32 / int64 holds (:func:`check_number`)."""
    for f in fields(obj):
        check_number(getattr(obj, f.name), f"{section}{f.name}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how it is split across clients."""

    dataset: str = option("digits", "one of: {names}", names=DATASETS, metavar="NAME")
    data_dir: str | None = option(  # None: $DRIFTSCOPE_DATA or ./data_cache
        None,
        "where torchvision datasets are cached [$DRIFTSCOPE_DATA or data_cache]",
        metavar="DIR",
    )
    partition: Partition = option(
        "dirichlet",
        "how data is split across clients",
        choices=("iid", "dirichlet", "shards"),  # custom: train(split=...), no flag
    )
    alpha: float = option(0.1, "Dirichlet concentration; smaller = more skew")
    classes_per_client: int = option(2, "classes per client for --partition shards")
    min_share: float = 0.5  # each client holds >= min_share * (samples / clients)
    max_redraws: int = 1000
    augment: bool | None = option(  # None: the dataset's default (on for CIFAR)
        None, "crop+flip augmentation [dataset default: on for CIFAR]"
    )
    client_test_fraction: float = option(  # engine/client_eval.py; docs/your-own-model.md
        0.0,
        "hold out this fraction of each client's data and evaluate the global model on it; 0 = off",
        metavar="F",
    )

    def __post_init__(self) -> None:
        _check_finite(self, "data.")
        _check(
            0 <= self.client_test_fraction < 1,
            f"client_test_fraction must be in [0, 1) (got {self.client_test_fraction}): "
            "e.g. 0.2 holds out a fifth of each client's data, 0 turns it off",
        )
        check_choices(self)
        DATASETS.check(self.dataset)
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

    name: str = option("small_cnn", "one of: {names}", names=MODELS, metavar="NAME", flag="model")
    head: tuple[str, ...] = option(  # fnmatch patterns over parameter names; () = model's own head
        (),
        "parameter-name patterns forming the head, e.g. 'classifier.*' [the model's own head]",
        metavar="PATTERN",
    )
    head_last_k: int | None = option(  # or: the last k parameterised layers form the head
        None, "the last K layers form the head", metavar="K"
    )
    buffers: Buffers = option(  # docs/your-own-model.md
        "average",
        "module buffers (BatchNorm statistics) between rounds: average | local (FedBN)",
        metavar="MODE",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", tuple(self.head))
        check_choices(self)
        MODELS.check(self.name)
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

    algorithm: str = option("fedavg", "one of: {names}", names=ALGORITHMS, metavar="NAME")
    rounds: int = option(40, "communication rounds")
    clients: int = option(10, "number of clients")
    client_fraction: float = option(1.0, "share of clients sampled per round")
    local_epochs: int = option(2, "local epochs per round")
    local_steps: int | None = option(None, "fixed local SGD steps per round (replaces epochs)")
    batch_size: int = option(32, "local batch size")
    drop_last: bool = option(False, "drop each client's last incomplete batch")
    lr: float = option(0.05, "local learning rate")
    momentum: float = option(0.0, "local SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    server_lr: float = option(1.0, "server learning rate")
    weighting: Weighting = option(
        "uniform", "client weights in the average"
    )  # uniform: the paper's
    eval_every: int = option(1, "evaluate the global model every K rounds")
    batched: Batched = option(
        "auto", "train a round's clients in one vmapped step (auto: from 32 clients, small inputs)"
    )
    device: str = option(  # driftscope.device
        "auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps", metavar="DEVICE"
    )
    state_budget_mb: float = option(
        1024.0,
        "MiB of memory for per-client state (control variates); beyond it a scratch file",
        metavar="MIB",
    )
    params: Any = None  # the algorithm's Params; None: its defaults

    def __post_init__(self) -> None:
        _check_finite(self, "train.")
        check_choices(self)
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

    enabled: bool = option(
        True, "record per-layer drift (--no-record for baselines)", flag="record"
    )
    every: int = option(1, "record Gram matrices every K rounds", metavar="K", flag="record_every")
    updates_every: int = option(
        5, "store full client updates every K recorded rounds; 0 = never", metavar="K"
    )
    update_dtype: UpdateDtype = option("float32", "dtype of stored updates")
    update_layers: tuple[str, ...] = option(  # fnmatch patterns over parameter names
        ("*",), "store updates only for parameters matching these patterns", metavar="PATTERN"
    )
    probe_size: int = option(128, "probe inputs for activation CKA; 0 = off")
    cka_every: int = option(  # cost: benchmarks/README.md
        10, "probe CKA every K recorded rounds", metavar="K"
    )
    # probe Grams as float32 block products summed and centred in float64 (bounded error,
    # metrics/gram.py gram32_error), or all in float64
    cka_precision: CkaPrecision = option(
        "float32",
        "probe Grams: float32 products summed and centred in float64 (bounded error), or float64",
    )
    global_every: int = option(  # engine/global_model.py; Run.global_model
        0,
        "keep the global parameters and buffers every K rounds (and the last); 0 = off",
        metavar="K",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "update_layers", tuple(self.update_layers))
        _check_finite(self, "record.")
        check_choices(self)
        _check(self.every >= 1, f"record.every must be >= 1 (got {self.every})")
        _check(
            self.updates_every >= 0,
            f"record.updates_every must be >= 0 (got {self.updates_every}); 0 stores no updates",
        )
        _check(self.probe_size >= 0, f"probe_size must be >= 0 (got {self.probe_size})")
        _check(
            self.probe_size == 0 or self.probe_size >= 4,
            f"probe_size must be 0 (off) or >= 4 (got {self.probe_size}): debiased CKA needs 4",
        )
        _check(self.cka_every >= 1, f"record.cka_every must be >= 1 (got {self.cka_every})")
        _check(
            self.global_every >= 0,
            f"record.global_every must be >= 0 (got {self.global_every}); 0 keeps no global model",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. One seed fixes partition, init, sampling and batches."""

    seed: int = option(0, "fixes partition, init, sampling and batch order", group="training")
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
        return build_section(cls, migrate_schema1(raw, TrainConfig.algorithm), source)

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
                    raise ConfigError(unknown_key(".".join(parts[: i + 1]), node, prefix, True))
                node = node[part]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
                raise ConfigError(unknown_key(key, leaves(node), prefix))
            node[parts[-1]] = value
        return RunConfig.from_dict(raw, source="")
