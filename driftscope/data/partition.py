"""Split a labelled training set across clients: IID, Dirichlet label skew, or k classes each,
or a split of the user's own (``custom_split``).

Every partitioner takes the labels (N,) and a ``numpy.random.Generator`` and returns one sorted
int64 index array per client. ``label_histogram`` gives the (clients, classes) counts that the run
file stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from driftscope.errors import ConfigError, DataError
from driftscope.seeding import numpy_rng

if TYPE_CHECKING:
    from driftscope.config import DataConfig


def iid(labels: np.ndarray, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and deal out equal shares (sizes differ by at most one)."""
    _check_size(len(labels), n_clients)
    order = rng.permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, n_clients)]


def dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_share: float = 0.5,
    max_redraws: int = 1000,
) -> list[np.ndarray]:
    """Dirichlet label skew (Hsu et al. 2019), as in the FedPVR reference code.

    For each class, client proportions are drawn from Dir(alpha); a client that already holds more
    than the average share gets no more samples of later classes (the NIID-Bench balancing rule).
    The whole draw repeats until every client holds at least ``min_share`` x the average number of
    samples, at most ``max_redraws`` times.
    """
    _check_size(len(labels), n_clients)
    if alpha <= 0:
        raise DataError(f"alpha must be > 0 (got {alpha}): use e.g. --alpha 0.1")
    n = len(labels)
    classes = np.unique(labels)
    need = max(1, int(np.floor(min_share * n / n_clients)))  # every client holds data
    smallest = 0
    for _ in range(max_redraws):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            props = rng.dirichlet(np.full(n_clients, alpha))
            sizes = np.array([len(p) for p in parts])
            props = props * (sizes < n / n_clients)
            if props.sum() == 0:
                props = np.full(n_clients, 1.0 / n_clients)
            props = props / props.sum()
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        smallest = min(len(p) for p in parts)
        if smallest >= need:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) partition in {max_redraws} draws gave every one of "
        f"{n_clients} clients >= {need} samples (smallest had {smallest}; {n} samples are "
        f"{n / n_clients:.1f} per client): raise --alpha, lower data.min_share, use fewer clients "
        "or --partition iid"
    )


def shards(
    labels: np.ndarray, n_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into ``n_clients * k`` equal shards, give each client k random shards
    (McMahan et al. 2017), so each client sees about k classes."""
    n_shards = n_clients * classes_per_client
    _check_size(len(labels), n_shards, what="shards (clients x classes_per_client)")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    assignment = rng.permutation(n_shards).reshape(n_clients, classes_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assignment]


def partition(
    labels: np.ndarray,
    n_clients: int,
    method: str,
    rng: np.random.Generator,
    *,
    alpha: float = 0.1,
    classes_per_client: int = 2,
    min_share: float = 0.5,
    max_redraws: int = 1000,
) -> list[np.ndarray]:
    """Dispatch on ``method`` ("iid", "dirichlet", "shards")."""
    labels = np.asarray(labels)
    if method == "iid":
        return iid(labels, n_clients, rng)
    if method == "dirichlet":
        return dirichlet(labels, n_clients, alpha, rng, min_share, max_redraws)
    if method == "shards":
        return shards(labels, n_clients, classes_per_client, rng)
    raise DataError(f"unknown partition '{method}': choose iid, dirichlet or shards")


# a user's split: one index array per client, or a function (labels, rng) -> such a list
Split = Sequence[Any] | Callable[[np.ndarray, np.random.Generator], Sequence[Any]]


def client_split(
    data: DataConfig,
    labels: np.ndarray,
    n_clients: int,
    rng: np.random.Generator,
    split: Split | None = None,
) -> list[np.ndarray]:
    """The clients' index arrays: the user's own ``split`` (:func:`custom_split`), or the
    partition ``data.partition`` names, drawn from ``rng``."""
    if split is not None:
        return custom_split(split, labels, n_clients, rng)
    if data.partition == "custom":
        raise ConfigError(
            "data.partition = 'custom' needs the split itself: train(cfg, out, split=...), "
            "or choose iid, dirichlet or shards"
        )
    return partition(
        labels,
        n_clients,
        data.partition,
        rng,
        alpha=data.alpha,
        classes_per_client=data.classes_per_client,
        min_share=data.min_share,
        max_redraws=data.max_redraws,
    )


def custom_split(
    split: Split, labels: np.ndarray, n_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """A user's own client split, checked: ``split`` is a list of index arrays into the training
    set, one per client, or a callable ``(labels, rng) -> list`` of them (``rng``: the run's
    partition stream, so the split repeats with the seed). Each client's indices come back as a
    sorted int64 array; a client may not be empty nor hold an index twice, and the number of
    arrays must equal ``n_clients`` (``train.clients``). Clients may share samples."""
    labels = np.asarray(labels)
    if callable(split):
        split = split(labels, rng)
    if isinstance(split, np.ndarray) and split.ndim == 2:
        split = list(split)
    if isinstance(split, str | bytes) or not isinstance(split, Sequence | np.ndarray):
        raise DataError(
            f"the split must be a list of index arrays, one per client (got {type(split).__name__})"
        )
    if len(split) != n_clients:
        raise DataError(
            f"the split has {len(split)} clients but train.clients = {n_clients}: set "
            f"train.clients = {len(split)} (cfg.replace({{'train.clients': {len(split)}}}))"
        )
    n = len(labels)
    parts: list[np.ndarray] = []
    for client, part in enumerate(split):
        index = np.asarray(_as_numpy(part))
        if index.dtype == bool and index.shape == (n,):
            index = np.flatnonzero(index)  # a boolean mask over the training set
        if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
            raise DataError(
                f"split[{client}] must be a 1-D array of integer indices "
                f"(got dtype {index.dtype}, shape {index.shape})"
            )
        if index.size == 0:
            raise DataError(f"split[{client}] is empty: every client needs training samples")
        if index.min() < 0 or index.max() >= n:
            raise DataError(
                f"split[{client}] has index {int(index.min() if index.min() < 0 else index.max())}"
                f" outside the training set of {n} samples (0 .. {n - 1})"
            )
        index = np.sort(index.astype(np.int64))
        if (np.diff(index) == 0).any():
            raise DataError(f"split[{client}] holds a sample twice: give each index once")
        parts.append(index)
    return parts


def _as_numpy(part: Any) -> Any:
    """An index array given as a torch tensor, a list or a numpy array, as numpy."""
    return part.cpu().numpy() if hasattr(part, "cpu") and hasattr(part, "numpy") else part


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) int64 counts of each client's labels."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def _check_size(n_samples: int, n_clients: int, what: str = "clients") -> None:
    if n_clients > n_samples:
        raise DataError(
            f"{n_clients} {what} but only {n_samples} training samples: use fewer clients"
        )


def hold_out(
    parts: Sequence[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training rows, held-out rows) of each client's ``parts``: ``floor(fraction * n)`` rows
    held out at random from the (seed, "client_test", client) stream; the training rows keep
    their order. ``fraction = 0`` returns the parts as they are and nothing held out."""
    train: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for client, part in enumerate(parts):
        part = np.asarray(part)
        k = int(np.floor(fraction * len(part)))
        if k == 0:
            train.append(part)
            held.append(part[:0])
            continue
        order = numpy_rng(seed, "client_test", client).permutation(len(part))
        held.append(part[np.sort(order[:k])])
        train.append(part[np.sort(order[k:])])
    return train, held
