import numpy as np
import pytest

from driftscope.data.partition import dirichlet, label_histogram, partition, shards
from driftscope.errors import DataError


def labels(n=1000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_partitions_cover_every_sample_once(method):
    y = labels()
    parts = partition(y, 10, method, np.random.default_rng(1), alpha=0.5)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_partitions_repeat_for_a_seed(method):
    y = labels()
    a = partition(y, 10, method, np.random.default_rng(5), alpha=0.3)
    b = partition(y, 10, method, np.random.default_rng(5), alpha=0.3)
    c = partition(y, 10, method, np.random.default_rng(6), alpha=0.3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_dirichlet_respects_min_share_and_skews_labels():
    y = labels(2000)
    parts = dirichlet(y, 10, 0.1, np.random.default_rng(0), min_share=0.5)
    assert min(len(p) for p in parts) >= 0.5 * len(y) / 10
    hist = label_histogram(y, parts, 10)
    # strong skew: on average a client's top class holds far more than the uniform 10%
    top_share = (hist.max(axis=1) / hist.sum(axis=1)).mean()
    assert top_share > 0.4
    iid_hist = label_histogram(y, partition(y, 10, "iid", np.random.default_rng(0)), 10)
    assert (iid_hist.max(axis=1) / iid_hist.sum(axis=1)).mean() < 0.2


def test_dirichlet_impossible_is_a_clear_error():
    y = labels(100)
    with pytest.raises(DataError, match="raise --alpha"):
        dirichlet(y, 50, 0.01, np.random.default_rng(0), min_share=0.9, max_redraws=5)


def test_dirichlet_with_under_two_samples_per_client_asks_for_one_each():
    # min_share 0.5 of 1.4 samples per client floors to 0: the partition still needs >= 1 each,
    # and the error says so (it used to say ">= 0 samples (smallest had 0)")
    y = labels(140)
    with pytest.raises(DataError, match=r">= 1 samples \(smallest had 0; 140 samples are 1.4"):
        dirichlet(y, 100, 0.1, np.random.default_rng(0), min_share=0.5, max_redraws=3)


def test_more_clients_than_samples():
    with pytest.raises(DataError, match="only 5 training samples"):
        partition(labels(5), 10, "iid", np.random.default_rng(0))


def test_shards_give_k_classes():
    y = np.repeat(np.arange(10), 100)
    parts = shards(y, 10, 2, np.random.default_rng(0))
    hist = label_histogram(y, parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert (hist.sum(axis=1) == 100).all()
