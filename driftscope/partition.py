"""Split a labelled training set across clients: IID, Dirichlet label skew, or k classes each.

Every partitioner takes the labels (N,) and a ``numpy.random.Generator`` and returns one sorted
int64 index array per client. ``label_histogram`` gives the (clients, classes) counts that the run
file stores.
"""

from __future__ import annotations

import numpy as np

from driftscope.errors import DataError


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


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) int64 counts of each client's labels."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def _check_size(n_samples: int, n_clients: int, what: str = "clients") -> None:
    if n_clients > n_samples:
        raise DataError(
            f"{n_clients} {what} but only {n_samples} training samples: use fewer clients"
        )
