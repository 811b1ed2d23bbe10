"""Datasets through the registry: embedded digits, and torchvision formats written by the tests."""

import numpy as np
import pytest
import torch
from fakedata import trust_cifar, write_cifar10, write_mnist

from driftscope import open_run
from driftscope.cli import main
from driftscope.data import CIFAR_MEAN, load_dataset
from driftscope.errors import DataError


def test_digits_is_real_and_split_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert torch.equal(a.test_y, b.test_y) and torch.equal(a.train_x, b.train_x)
    assert 0 <= float(a.train_x.min()) and float(a.train_x.max()) <= 1
    assert np.bincount(a.test_y.numpy()).min() >= 30  # stratified: every digit is tested


def test_cifar10_registry_scales_and_augments(tmp_path, monkeypatch):
    fake = write_cifar10(tmp_path, n_train=60, n_test=20)
    trust_cifar(monkeypatch, "cifar10", tmp_path)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (60, 3, 32, 32) and ds.num_classes == 10
    assert ds.augment and ds.mean == CIFAR_MEAN
    expected = torch.from_numpy(fake.train_images).float() / 255
    torch.testing.assert_close(ds.train_x, expected)
    assert torch.equal(ds.test_y, torch.from_numpy(fake.test_labels))


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_cli_trains_on_mnist_files(tmp_path, capsys, monkeypatch):
    write_mnist(tmp_path / "cache", n_train=200, n_test=50)
    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "mnist.h5"
    args = [
        "run",
        "--dataset",
        "mnist",
        "--clients",
        "4",
        "--rounds",
        "2",
        "--alpha",
        "1",
        "--probe-size",
        "16",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    with open_run(out) as run:
        assert run.config.data.dataset == "mnist"
        assert run.label_histogram.to_numpy().sum() == 200
        assert run.num_rounds == 2


def test_registry_specs_describe_what_they_load(tmp_path, monkeypatch):
    from driftscope.data import DATASETS

    assert DATASETS.names() == (
        "digits",
        "mnist1d",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
    )
    ds = load_dataset("digits")
    spec = DATASETS.get("digits")
    assert (spec.input_shape, spec.num_classes) == (ds.input_shape, ds.num_classes)
    write_cifar10(tmp_path, n_train=10, n_test=5)
    trust_cifar(monkeypatch, "cifar10", tmp_path)
    cifar = DATASETS.get("cifar10")
    loaded = cifar.load(tmp_path)
    assert (cifar.input_shape, cifar.num_classes) == (loaded.input_shape, loaded.num_classes)


def test_untrusted_cifar_is_refused(tmp_path):
    write_cifar10(tmp_path, n_train=10, n_test=5)
    with pytest.raises(DataError, match="does not match its published MD5 sum"):
        load_dataset("cifar10", tmp_path)
