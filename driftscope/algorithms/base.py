"""The base class every federated algorithm fills in, and the registry that names them.

The simulator drives one round as::

    x = global parameters (flat)
    for each sampled client i:
        algorithm.begin_client(i, x)
        K local SGD steps on the client's batches; after each backward pass
            algorithm.correct_gradient(grads, params, x)      # only if corrects_gradient
        extra = algorithm.end_client(i, x, y, K)              # e.g. a control-variate delta
    x <- algorithm.server_update(x, weighted mean of (y_i - x), [extra_i])

A variant overrides one or two of these steps. The arithmetic lives in
:mod:`driftscope.algorithms.aggregate` as pure functions.

Adding an algorithm is one file: a frozen ``Params`` dataclass (fields with
``metadata={"help": ...}`` become CLI flags ``--<field-with-dashes>`` and config keys
``train.params.<field>``) and an :class:`Algorithm` subclass with ``name``, ``label`` and ``Params``,
decorated with :func:`register_algorithm`. Nothing here imports torch at module level (methods
import it), so parsing arguments and validating configs stay torch-free.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from driftscope.errors import SettingsWarning
from driftscope.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from driftscope.models.layout import ModelLayout

BYTES_PER_VALUE = 4  # float32 on the wire


class TrainSettings(Protocol):
    """The training numbers an algorithm reads (:class:`~driftscope.config.TrainConfig` has
    them). Algorithms name this protocol, not the config, so the config may import the
    algorithm registry without an import cycle."""

    @property
    def algorithm(self) -> str: ...
    @property
    def params(self) -> Any: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def server_lr(self) -> float: ...
    @property
    def state_budget_mb(self) -> float: ...
    @property
    def clients_per_round(self) -> int: ...


@dataclass(frozen=True)
class NoParams:
    """The parameters of an algorithm that has none beyond the general training numbers."""


class Algorithm:
    """FedAvg (McMahan et al., AISTATS 2017): local SGD, then the (weighted) mean of client models.

    Subclasses override the hooks below; the defaults are FedAvg's. ``train`` is the
    :class:`~driftscope.config.TrainConfig` (general numbers), ``params`` the algorithm's own
    ``Params`` instance.
    """

    name: ClassVar[str] = "fedavg"
    label: ClassVar[str] = "FedAvg"
    Params: ClassVar[type] = NoParams
    corrects_gradient: bool = False
    #: An algorithm whose :meth:`momentum` changes during a run increments this; engines read
    #: ``momentum()`` again after :meth:`begin_client` when it changed (it is cached otherwise).
    momentum_version: int = 0

    def __init__(
        self, train: TrainSettings, params: Any, layout: ModelLayout, num_clients: int
    ) -> None:
        self.train = train
        self.params = params
        self.layout = layout
        self.num_clients = num_clients
        self.numel = layout.numel
        self.device: torch.device | str = "cpu"  # set by to()

    @classmethod
    def warnings(cls, train: TrainSettings) -> tuple[str, ...]:
        """One-line warnings about a legal but questionable combination of settings."""
        return ()

    # ---------------------------------------------------------------- local training
    def momentum(self) -> float | torch.Tensor:
        """Momentum of the local SGD: a float, or a (P,) tensor for per-parameter momentum."""
        return self.train.momentum

    def begin_client(self, client: int, x: torch.Tensor) -> None:
        """Called before client ``client`` trains from global parameters ``x`` (P,)."""

    def correct_gradient(self, grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor) -> None:
        """Modify the flat gradient (P,) in place before the SGD step."""

    def correct_gradients(
        self, clients: Sequence[int], grads: torch.Tensor, params: torch.Tensor, x: torch.Tensor
    ) -> None:
        """:meth:`correct_gradient` for a group of clients trained at once
        (:mod:`driftscope.engine.batched`): row k of ``grads`` and ``params`` (G, P) is client
        ``clients[k]``'s. The default calls ``begin_client`` and ``correct_gradient`` on each row
        (so ``begin_client`` must only set up per-client state); override it to batch."""
        for k, client in enumerate(clients):
            self.begin_client(client, x)
            self.correct_gradient(grads[k], params[k], x)

    def end_client(
        self, client: int, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> torch.Tensor | None:
        """Called after local training ended at ``y`` after ``steps`` steps; may return extra
        state to upload (e.g. a control-variate delta)."""
        return None

    # ---------------------------------------------------------------- server
    def server_update(
        self, x: torch.Tensor, mean_update: torch.Tensor, extras: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """New global parameters from the weighted mean update."""
        from driftscope.algorithms import aggregate

        return aggregate.server_step(x, mean_update, self.train.server_lr)

    # ---------------------------------------------------------------- accounting
    def values_per_client(self) -> tuple[int, int]:
        """(values sent down, values sent up) per participating client per round."""
        return self.numel, self.numel

    def bytes_per_client(self) -> tuple[int, int]:
        down, up = self.values_per_client()
        return down * BYTES_PER_VALUE, up * BYTES_PER_VALUE

    def to(self, device: torch.device) -> Algorithm:
        """Move the algorithm's state to ``device`` (the training device); returns self."""
        self.device = device
        return self

    def state_norms(self) -> dict[str, torch.Tensor]:
        """Per-parameter norms of internal state (control variates), for the recorder."""
        return {}

    def round_record(self) -> dict[str, np.ndarray]:
        """Per-round arrays of fixed shape that the run file stores under ``algorithm/<key>``
        (one row per round), e.g. which layers carry control variates; {} for most algorithms.
        Read after :meth:`server_update`; describes the round that just ended."""
        return {}

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The server-side state a resumed run needs (control variates); {} if stateless."""
        return {}

    def changed_rows(self) -> dict[str, np.ndarray]:
        """For state tensors whose rows are per client (``c_clients``): the rows that changed in
        the last two rounds (sorted), so a writer double-buffering the state in two slots
        rewrites only those; a name absent here is written whole. Called after server_update."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned; unknown or missing keys are an error."""
        if state:
            raise ValueError(f"{self.name} keeps no state but got {', '.join(state)}")


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")

A = TypeVar("A", bound=type[Algorithm])


def register_algorithm(cls: A) -> A:
    """Class decorator: check ``name``/``label``/``Params`` and add ``cls`` to :data:`ALGORITHMS`."""
    params = cls.__dict__.get("Params", cls.Params)
    if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):  # type: ignore[union-attr]
        raise TypeError(f"{cls.__name__}.Params must be a frozen dataclass")
    for f in dataclasses.fields(params):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.Params.{f.name} needs a default")
        if "help" not in f.metadata:
            raise TypeError(f"{cls.__name__}.Params.{f.name} needs metadata={{'help': ...}}")
    if "name" not in cls.__dict__ or "label" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must set its own name and label")
    ALGORITHMS.register(cls.name, cls)
    return cls


def warn_settings(train: TrainSettings, stacklevel: int = 1) -> tuple[str, ...]:
    """Warn (:class:`~driftscope.errors.SettingsWarning`) with each of the chosen algorithm's
    :meth:`Algorithm.warnings` about ``train``; returns them. ``stacklevel`` 1 points the warning
    at the caller of this function, 2 at its caller's caller (the user's ``train(...)`` line)."""
    lines = ALGORITHMS.get(train.algorithm).warnings(train)
    for line in lines:
        warnings.warn(line, SettingsWarning, stacklevel=stacklevel + 1)
    return lines


def build_algorithm(train: TrainSettings, layout: ModelLayout, num_clients: int) -> Algorithm:
    """The algorithm ``train.algorithm`` with its ``train.params``, over ``layout``."""
    return ALGORITHMS.get(train.algorithm)(train, train.params, layout, num_clients)


class Selection:
    """A subset of the flat parameter vector: a slice view when contiguous, an index otherwise."""

    def __init__(self, mask: torch.Tensor) -> None:
        idx = mask.nonzero().flatten()
        self.size = int(idx.numel())
        self.index = idx
        self.slice: slice | None = None
        if self.size and int(idx[-1] - idx[0]) + 1 == self.size:
            self.slice = slice(int(idx[0]), int(idx[-1]) + 1)

    def take(self, v: torch.Tensor) -> torch.Tensor:
        """The selected entries of v (P,) -> (M,) (a view when contiguous)."""
        return v[..., self.slice] if self.slice is not None else v[..., self.index]

    def add_(self, v: torch.Tensor, values: torch.Tensor) -> None:
        """v[selected] += values, in place."""
        if self.slice is not None:
            v[self.slice].add_(values)
        elif self.size:
            v.index_add_(0, self.index, values)
