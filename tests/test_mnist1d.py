"""MNIST-1D: generated offline, deterministic, cached as .npz without pickle; the cnn1d model."""

import random
import zipfile

import numpy as np
import pytest
import torch

from driftscope import RunConfig, open_run, train
from driftscope.data import DATASETS, load_dataset
from driftscope.data import mnist1d as m1d
from driftscope.errors import ConfigError
from driftscope.models.registry import MODELS, build_model, model_layout


@pytest.fixture(scope="module")
def generated():
    return m1d.generate()


def test_generation_is_deterministic_and_leaves_global_rngs_alone(generated):
    np.random.seed(123)  # noqa: NPY002 - the legacy global RNG is what mnist1d touches
    random.seed(7)
    before = (np.random.random(), random.random())  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(7)
    again = m1d.generate()
    assert (np.random.random(), random.random()) == before  # noqa: NPY002
    for key in m1d.KEYS:
        np.testing.assert_array_equal(again[key], generated[key])


def test_shapes_and_classes(generated):
    assert generated["x"].shape == (4000, 40) and generated["x_test"].shape == (1000, 40)
    assert generated["y"].dtype == np.int64
    for y in (generated["y"], generated["y_test"]):
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.min() > 0.08 * len(y)  # every class, roughly even
    x = np.concatenate([generated["x"], generated["x_test"]])
    assert abs(x.mean()) < 1e-6 and abs(x.std() - 1) < 1e-6  # make_dataset standardises


def test_cache_is_npz_without_pickle_and_is_reused(tmp_path, generated, monkeypatch):
    ds = load_dataset("mnist1d", tmp_path)
    path = m1d.cache_path(tmp_path)
    assert path.is_file() and path.suffix == ".npz"
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in m1d.KEYS)
    with np.load(path, allow_pickle=False) as f:  # raises if any array needed pickle
        for key in m1d.KEYS:
            np.testing.assert_array_equal(f[key], generated[key])
    assert ds.train_x.shape == (4000, 1, 1, 40) and ds.train_x.dtype == torch.float32
    assert ds.test_x.shape == (1000, 1, 1, 40) and ds.num_classes == 10
    assert ds.input_shape == (1, 1, 40)
    spec = DATASETS.get("mnist1d")  # the registry's torch-free description matches the load
    assert (spec.input_shape, spec.num_classes) == (ds.input_shape, ds.num_classes)
    np.testing.assert_array_equal(ds.train_x[:, 0, 0].numpy(), generated["x"].astype(np.float32))
    assert torch.equal(ds.test_y, torch.from_numpy(generated["y_test"]))

    def no_generation():
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(m1d, "generate", no_generation)
    again = load_dataset("mnist1d", tmp_path)
    assert torch.equal(again.train_x, ds.train_x)


def test_damaged_cache_is_regenerated(tmp_path, generated):
    path = m1d.cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file")
    np.testing.assert_array_equal(m1d.load_arrays(tmp_path)["x"], generated["x"])
    with np.load(path, allow_pickle=False) as f:
        assert f["x"].shape == (4000, 40)
    np.savez(path, x=np.zeros(3))  # readable, wrong shapes
    assert m1d.load_arrays(tmp_path)["x"].shape == (4000, 40)
    assert not list(path.parent.glob("*.tmp"))


def test_cnn1d_declares_its_head_and_classifies():
    model = build_model("cnn1d", (1, 1, 40), 10)
    layout = model_layout(model)
    assert [(ly.label, ly.group) for ly in layout.layers] == [
        ("conv1", "body"),
        ("conv2", "body"),
        ("conv3", "body"),
        ("conv4", "body"),
        ("fc1", "head"),
        ("fc2", "head"),
        ("fc3", "head"),
    ]
    assert layout.head_numel == 8970 and layout.numel == 33536 + 8970
    assert layout.numel == sum(p.numel() for p in model.parameters())
    assert MODELS.get("cnn1d").num_params((1, 1, 40), 10) == layout.numel
    x = torch.randn(5, 1, 1, 40)
    assert model(x).shape == (5, 10)
    torch.testing.assert_close(model(x), model(x[:, :, 0]))  # (B, C, L) works the same
    with pytest.raises(ConfigError, match="cnn1d needs 1-D signals"):
        build_model("cnn1d", (1, 8, 8), 10)


def test_train_runs_on_mnist1d(tmp_path):
    cfg = RunConfig().replace(
        {
            "data.dataset": "mnist1d",
            "data.data_dir": str(tmp_path / "cache"),
            "model.name": "cnn1d",
            "train.clients": 3,
            "train.rounds": 2,
            "train.local_steps": 3,
            "record.probe_size": 16,
        }
    )
    path = train(cfg, tmp_path / "m1d.h5")
    with open_run(path) as run:
        assert run.status == "complete" and run.num_rounds == 2
        assert run.label_histogram.to_numpy().sum() == 4000
        assert [ly.group for ly in run.layers][-3:] == ["head"] * 3
        assert np.isfinite(run.gram("fc3")).all()


def test_reproduce_prints_the_observation_on_mnist1d(tmp_path, monkeypatch, capsys):
    from driftscope.cli import main

    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    args = ["reproduce", "--dataset", "mnist1d", "--rounds", "1", "--quiet", "--no-figures"]
    assert main([*args, "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "head vs body" in out and "fc3" in out and "conv4" in out
    # the last line names the model trained and its parameter count
    assert out.strip().splitlines()[-1].startswith("torch threads: 1 (cnn1d, 42,506 parameters")
    with open_run(tmp_path / "rep" / "fedavg-iid.h5") as run:
        assert run.config.data.dataset == "mnist1d"
        assert run.config.model.name == "cnn1d"


def test_run_without_model_picks_the_datasets_default_and_names_the_file(tmp_path, monkeypatch):
    """`driftscope run --dataset mnist1d` trains cnn1d, the model reproduce uses (small_cnn's
    pooling cannot take 1x40 signals), and the default file name says what differs."""
    from driftscope.cli import main

    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = ["run", "--dataset", "mnist1d", "--clients", "3", "--rounds", "1", "-q"]
    assert main([*args, "--local-steps", "2", "--probe-size", "16"]) == 0
    (path,) = (tmp_path / "runs").iterdir()
    assert path.name == "mnist1d-fedavg-dirichlet0.1-3clients-1rounds-seed0.h5"
    with open_run(path) as run:
        assert run.config.model.name == "cnn1d" and run.status == "complete"


def test_a_model_that_does_not_fit_is_refused_in_one_line_before_any_file(
    tmp_path, monkeypatch, capsys
):
    from driftscope.cli import main

    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    out = tmp_path / "runs" / "m.h5"
    config = tmp_path / "c.toml"
    config.write_text('[data]\ndataset = "mnist1d"\n[model]\nname = "small_cnn"\n')
    for args in (["--dataset", "mnist1d", "--model", "small_cnn"], ["--config", str(config)]):
        assert main(["run", *args, "--rounds", "1", "-q", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        assert "small_cnn does not fit mnist1d" in err and "--model cnn1d" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    # the library refuses it too, before any file
    cfg = RunConfig().replace({"data.dataset": "mnist1d", "data.data_dir": str(tmp_path / "c")})
    with pytest.raises(ConfigError, match="use --model cnn1d"):
        train(cfg, out)
    assert not out.exists()


def test_reproduce_of_another_dataset_leaves_the_digits_demo_alone(tmp_path, monkeypatch, capsys):
    """Each dataset gets its own default folder; a folder holding a reproduce of other settings
    is refused in one line without --overwrite (the same settings may run again)."""
    from driftscope.cli import main

    monkeypatch.setenv("DRIFTSCOPE_DATA", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    fast = ["--rounds", "1", "--quiet", "--no-figures"]
    assert main(["reproduce", *fast]) == 0
    digits = tmp_path / "runs" / "reproduce-digits-1rounds"
    before = {p.name: p.read_bytes() for p in digits.iterdir()}
    assert "fedavg.h5" in before
    assert main(["reproduce", "--dataset", "mnist1d", *fast]) == 0
    assert (tmp_path / "runs" / "reproduce-mnist1d-1rounds" / "fedavg.h5").exists()
    assert {p.name: p.read_bytes() for p in digits.iterdir()} == before
    capsys.readouterr()
    assert main(["reproduce", "--dataset", "mnist1d", "--out", str(digits), *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a reproduce of other settings" in err and "--overwrite" in err
    assert "\n" not in err
    assert {p.name: p.read_bytes() for p in digits.iterdir()} == before
