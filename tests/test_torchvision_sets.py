"""driftscope.data.torchvision_sets on tiny files in each dataset's real on-disk format."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from fakedata import (
    trust_cifar,
    write_cifar10,
    write_cifar100,
    write_fashion_mnist,
    write_idx,
    write_mnist,
)

from driftscope.data.torchvision_sets import (
    SUPPORTED,
    expected_location,
    load_raw,
    num_classes,
)
from driftscope.errors import DataError

WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "mnist": write_mnist,
    "fashion_mnist": write_fashion_mnist,
}
SHAPES = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
}
FOLDERS = {
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "mnist": ("MNIST", "raw"),
    "fashion_mnist": ("FashionMNIST", "raw"),
}


@pytest.mark.parametrize("name", SUPPORTED)
def test_round_trip_is_exact(tmp_path, monkeypatch, name):
    written = WRITERS[name](tmp_path, n_train=13, n_test=7, seed=3)
    if name.startswith("cifar"):
        trust_cifar(monkeypatch, name, tmp_path)
    for train, (x_ref, y_ref) in (
        (True, (written.train_images, written.train_labels)),
        (False, (written.test_images, written.test_labels)),
    ):
        x, y = load_raw(name, tmp_path, train=train)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert tuple(x.shape) == (len(x_ref), *SHAPES[name])
        assert tuple(y.shape) == (len(y_ref),)
        assert x.is_contiguous()
        np.testing.assert_array_equal(x.numpy(), x_ref)
        np.testing.assert_array_equal(y.numpy(), y_ref)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_rows_become_chw(tmp_path, monkeypatch, name):
    """A row of the file is R plane, G plane, B plane, each row-major: pixel (c, h, w) sits at
    c*1024 + h*32 + w. Read the file the way the CIFAR web page does, independent of fakedata."""
    write_cifar10(tmp_path) if name == "cifar10" else write_cifar100(tmp_path)
    trust_cifar(monkeypatch, name, tmp_path)
    path = expected_location(name, tmp_path) / ("test_batch" if name == "cifar10" else "test")
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    rows = entry[b"data"]
    labels = entry[b"labels" if name == "cifar10" else b"fine_labels"]

    x, y = load_raw(name, tmp_path, train=False)
    for i, c, h, w in [(0, 0, 0, 1), (1, 2, 5, 30), (3, 1, 31, 0), (6, 2, 17, 9)]:
        assert int(x[i, c, h, w]) == int(rows[i, c * 1024 + h * 32 + w])
    assert y.tolist() == list(labels)


def test_cifar10_training_batches_are_concatenated_in_order(tmp_path, monkeypatch):
    written = write_cifar10(tmp_path, n_train=10, n_test=2)  # 2 images per data_batch_i
    trust_cifar(monkeypatch, "cifar10", tmp_path)
    x, _ = load_raw("cifar10", tmp_path, train=True)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "rb") as f:
        batch3 = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(x[4:6].reshape(2, -1).numpy(), batch3["data"])
    np.testing.assert_array_equal(written.train_images[4:6].reshape(2, -1), batch3["data"])


def test_fake_cifar_pickles_read_like_the_real_ones(tmp_path):
    """Python 2 str keys: latin1 gives str keys (torchvision), bytes gives b"..." keys."""
    write_cifar100(tmp_path, n_train=4, n_test=2)
    folder = tmp_path / "cifar-100-python"
    with open(folder / "train", "rb") as f:
        as_latin1 = pickle.load(f, encoding="latin1")
    with open(folder / "train", "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")
    assert set(as_latin1) == {"batch_label", "fine_labels", "coarse_labels", "data", "filenames"}
    assert b"data" in as_bytes and b"fine_labels" in as_bytes
    assert as_latin1["data"].dtype == np.uint8 and as_latin1["data"].shape == (4, 3072)
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_headers_are_the_real_magic_numbers(tmp_path, name):
    WRITERS[name](tmp_path, n_train=5, n_test=3)
    raw = expected_location(name, tmp_path)
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">4I", images[:16]) == (2051, 5, 28, 28)
    assert len(images) == 16 + 5 * 28 * 28
    assert struct.unpack(">2I", labels[:8]) == (2049, 3)
    assert len(labels) == 8 + 3


@pytest.mark.parametrize("name", SUPPORTED)
def test_expected_location_is_torchvision_layout(tmp_path, name):
    assert expected_location(name, tmp_path) == tmp_path.joinpath(*FOLDERS[name])


def test_num_classes():
    assert [num_classes(n) for n in SUPPORTED] == [10, 100, 10, 10]
    with pytest.raises(DataError, match="cifar10"):
        num_classes("svhn")


@pytest.mark.parametrize("name", SUPPORTED)
def test_missing_files_name_the_folder_and_the_fix(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_raw(name, tmp_path, train=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(expected_location(name, tmp_path)) in msg
    assert "download=True" in msg and "DRIFTSCOPE_DATA" in msg


def test_one_missing_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .*\(missing data_batch_4\)"):
        load_raw("cifar10", tmp_path, train=False)

    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte"):
        load_raw("mnist", tmp_path, train=True)


def test_unknown_name_lists_supported(tmp_path):
    with pytest.raises(DataError) as info:
        load_raw("imagenet", tmp_path, train=True)
    assert "imagenet" in str(info.value)
    for name in SUPPORTED:
        assert name in str(info.value)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    ("name", "relpath"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_2"),
        ("cifar10", "cifar-10-batches-py/batches.meta"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/train-labels-idx1-ubyte"),
    ],
)
@pytest.mark.parametrize("trusted", [False, True])
def test_truncated_file_is_a_data_error(tmp_path, monkeypatch, name, relpath, trusted):
    """Untrusted: the MD5 check refuses it. Trusted (sum registered after the damage): the
    reader's own failure is still a one-line DataError."""
    WRITERS[name](tmp_path)
    _truncate(tmp_path / relpath)
    if trusted and name.startswith("cifar"):
        trust_cifar(monkeypatch, name, tmp_path)
    with pytest.raises(DataError) as info:
        load_raw(name, tmp_path, train=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert "corrupt" in msg and str(expected_location(name, tmp_path)) in msg


@pytest.mark.parametrize(
    ("name", "relpath"),
    [
        ("cifar10", "cifar-10-batches-py/test_batch"),
        ("mnist", "MNIST/raw/t10k-images-idx3-ubyte"),
    ],
)
@pytest.mark.parametrize("junk", [b"", b"not a dataset file at all\n" * 40])
def test_garbage_file_is_a_data_error(tmp_path, monkeypatch, name, relpath, junk):
    WRITERS[name](tmp_path)
    (tmp_path / relpath).write_bytes(junk)
    if name.startswith("cifar"):
        trust_cifar(monkeypatch, name, tmp_path)  # past the MD5 check: the parser's error
    with pytest.raises(DataError, match="corrupt"):
        load_raw(name, tmp_path, train=False)


def test_image_label_count_mismatch_is_a_data_error(tmp_path):
    write_mnist(tmp_path, n_train=6)
    write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="6 images but 5 labels"):
        load_raw("mnist", tmp_path, train=True)


def test_label_out_of_range_is_a_data_error(tmp_path):
    write_fashion_mnist(tmp_path, n_test=4)
    write_idx(
        tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte",
        np.array([0, 1, 10, 2], np.uint8),
    )
    with pytest.raises(DataError, match=r"label 10 outside 0\.\.9"):
        load_raw("fashion_mnist", tmp_path, train=False)


def test_wrong_image_size_is_a_data_error(tmp_path):
    write_mnist(tmp_path, n_train=3)
    write_idx(
        tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8)
    )
    with pytest.raises(DataError, match=r"expected uint8 \(1, 28, 28\)"):
        load_raw("mnist", tmp_path, train=True)


def test_accepts_str_root(tmp_path):
    written = write_mnist(tmp_path, n_train=4, n_test=2)
    x, y = load_raw("mnist", str(tmp_path), train=False)
    np.testing.assert_array_equal(x.numpy(), written.test_images)
    np.testing.assert_array_equal(y.numpy(), written.test_labels)


def test_cifar_files_must_match_the_published_md5_before_unpickling(tmp_path, monkeypatch):
    """A pickle that would run code when loaded is refused unread, in one line."""
    import pickle as pkl

    write_cifar10(tmp_path, n_train=10, n_test=2)
    trust_cifar(monkeypatch, "cifar10", tmp_path)
    assert load_raw("cifar10", tmp_path, train=False)[0].shape[0] == 2  # trusted: loads

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pkl.dumps(Payload()))
    with pytest.raises(DataError) as info:
        load_raw("cifar10", tmp_path, train=False)
    msg = str(info.value)
    assert "\n" not in msg and "does not match its published MD5 sum" in msg
    assert str(folder / "test_batch") in msg and "download=True" in msg
    assert not marker.exists()  # never unpickled
    # the training split does not read test_batch, and its files are still trusted
    assert load_raw("cifar10", tmp_path, train=True)[0].shape[0] == 10


def test_published_md5_table_is_torchvisions():
    from torchvision import datasets as tvd

    from driftscope.data.torchvision_sets import CIFAR_MD5

    assert CIFAR_MD5["cifar10"]["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    assert CIFAR_MD5["cifar10"]["batches.meta"] == tvd.CIFAR10.meta["md5"]
    assert set(CIFAR_MD5["cifar100"]) == {"train", "test", "meta"}
    assert CIFAR_MD5["cifar100"]["train"] == "16019d7e3df5f24257cddd939b257f8d"
