"""Your own model, data and split through ``train(cfg, out, model=, dataset=, split=)``, without
registering anything; the run file names what was used and is read back by a process that never
imported the code that made it.

Models and data are written here: a tabular MLP on 2-D rows (N, F), a token-id model on integer
(N, L) inputs, and a toy algorithm registered only in this process. Integers (sizes, label
histograms, names) are compared exactly; nothing here compares floats with stored numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config
from torch import nn

from driftscope import open_run, train
from driftscope.algorithms import ALGORITHMS, register_algorithm
from driftscope.algorithms.fedavg import FedAvg
from driftscope.analysis.tables import layer_summary
from driftscope.data import TensorData
from driftscope.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

BASE = {"train__rounds": 2, "train__local_steps": 2, "record__probe_size": 16}


class TabularMLP(nn.Module):
    """Rows of 6 features -> 3 classes."""

    head_prefixes = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


class TokenBag(nn.Module):
    """Integer token ids (N, L) -> an embedding bag -> 4 classes."""

    head_prefixes = ("out",)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x).mean(1))


def tabular(n: int = 240, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 60, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorData(x[:n], y[:n], x[n:], y[n:], name="rows")


def tokens(seed: int = 1) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 20, (200, 7), generator=g)
    y = x[:, 0] % 4  # the first token decides the class
    return TensorData(x[:160], y[:160], x[160:], y[160:], num_classes=4)


def by_first_feature(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """A callable split: 3 clients, dealt out in a seeded random order."""
    order = rng.permutation(len(labels))
    return [order[0::3], order[1::3], order[2::3]]


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory):
    """The run files made with own objects (made once, read by the tests below)."""
    d = tmp_path_factory.mktemp("own")
    data = tabular()
    split = [np.arange(0, 40), np.arange(40, 140), np.arange(140, 240)]
    runs = {}
    cfg = small_config(train__clients=3, **BASE)
    runs["tabular"] = train(cfg, d / "tabular.h5", model=TabularMLP, dataset=data, split=split)
    runs["tokens"] = train(
        small_config(train__clients=3, train__batched="on", **BASE),
        d / "tokens.h5",
        model=TokenBag,
        dataset=tokens(),
        split=by_first_feature,
    )

    @register_algorithm
    class OnlyHere(FedAvg):  # an algorithm of this process only
        name, label = "only_here_avg", "Only here"

    try:
        runs["algorithm"] = train(
            cfg.replace({"train.algorithm": "only_here_avg"}),
            d / "algorithm.h5",
            model=TabularMLP,
            dataset=data,
            split=split,
        )
    finally:
        ALGORITHMS.unregister("only_here_avg")
    return {"split": split, "data": data, **runs}


def test_a_custom_split_is_recorded_with_sizes_and_label_histograms(own_runs):
    data, split = own_runs["data"], own_runs["split"]
    with open_run(own_runs["tabular"]) as run:
        assert run.status == "complete"
        assert run.config_dict["data"]["partition"] == "custom"
        assert run.config_dict["data"]["dataset"] == "rows"  # the dataset's name, not "digits"
        assert run.config_dict["model"]["name"] == "TabularMLP"  # the class name
        assert run.client_sizes.tolist() == [40, 100, 100]
        slow = [[int((data.train_y[p] == k).sum()) for k in range(3)] for p in split]
        assert run.label_histogram.to_numpy().tolist() == slow
        assert [layer.name for layer in run.layers] == ["body", "head"]


def test_a_callable_split_gets_the_seeded_rng_and_integer_token_inputs_train(own_runs):
    with open_run(own_runs["tokens"]) as run:
        assert run.status == "complete"
        assert run.config_dict["data"]["dataset"] == "TensorData"  # no name: the class name
        assert run.config_dict["model"]["name"] == "TokenBag"
        assert run.config_dict["data"]["partition"] == "custom"
        sizes = run.client_sizes.tolist()
        assert sum(sizes) == 160 and sorted(sizes) == [53, 53, 54]
        assert not np.isnan(run.metrics.test_accuracy.to_numpy()).any()
    from driftscope.seeding import numpy_rng

    parts = by_first_feature(np.zeros(160), numpy_rng(0, "partition"))
    labels = tokens().train_y.numpy()
    hist = [np.bincount(labels[p], minlength=4).tolist() for p in parts]
    with open_run(own_runs["tokens"]) as run:
        assert run.label_histogram.to_numpy().tolist() == hist  # the run's partition stream


def test_the_same_seed_repeats_a_run_with_own_objects(own_runs, tmp_path):
    split = own_runs["split"]
    cfg = small_config(train__clients=3, **BASE)
    again = train(cfg, tmp_path / "again.h5", model=TabularMLP, dataset=tabular(), split=split)
    with open_run(own_runs["tabular"]) as a, open_run(again) as b:
        assert a.metrics.test_accuracy.tolist() == b.metrics.test_accuracy.tolist()
        np.testing.assert_array_equal(a.gram("body.weight"), b.gram("body.weight"))


def test_run_files_of_own_objects_are_read_by_a_process_that_never_imported_them(
    own_runs, tmp_path
):
    """``analyze``, ``inspect``, ``figures`` and ``layer_summary`` in a fresh interpreter: the
    model, dataset and algorithm names are read as stored strings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("DRIFTSCOPE_PLUGINS", None)
    paths = [str(own_runs[name]) for name in ("tabular", "tokens", "algorithm")]
    calls = [["analyze", p] for p in paths]
    calls += [["inspect", paths[2]], ["figures", *paths, "--out", str(tmp_path / "figs")]]
    for args in calls:
        out = subprocess.run(
            [sys.executable, "-m", "driftscope", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert out.returncode == 0, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert (tmp_path / "figs" / "accuracy_curves.png").is_file()
    code = (
        "import sys, json; from driftscope import open_run;"
        "from driftscope.analysis.tables import layer_summary;"
        "run = open_run(sys.argv[1]); c = run.config;"
        "print(json.dumps([c.train.algorithm, c.model.name, c.data.dataset, c.data.partition,"
        " len(layer_summary(run)), 'only_here_avg' in __import__('driftscope.algorithms',"
        " fromlist=['ALGORITHMS']).ALGORITHMS]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(own_runs["algorithm"])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(out.stdout) == ["only_here_avg", "TabularMLP", "rows", "custom", 2, False]
    assert "only_here_avg" not in ALGORITHMS  # and here it is gone too
    with open_run(own_runs["algorithm"]) as run:
        assert run.config.train.params == {}
        assert len(layer_summary(run)) == 2


def test_names_given_on_the_objects_are_recorded(tmp_path):
    def make() -> nn.Module:
        return TabularMLP()

    make.name = "my_mlp"  # type: ignore[attr-defined]
    split = [np.arange(0, 120), np.arange(120, 240)]
    cfg = small_config(train__clients=2, train__rounds=1, record__enabled=False)
    out = train(cfg, tmp_path / "n.h5", model=make, dataset=tabular(), split=split)
    with open_run(out) as run:
        assert run.config_dict["model"]["name"] == "my_mlp"
        assert run.config_dict["data"]["dataset"] == "rows"


def test_a_registered_dataset_passed_as_an_object_keeps_its_own_name(digits, tmp_path):
    cfg = small_config(train__clients=3, train__rounds=1, record__enabled=False)
    cfg = cfg.replace({"data.dataset": "mnist1d", "model.name": "mlp"})
    out = train(cfg, tmp_path / "d.h5", dataset=digits)
    with open_run(out) as run:
        assert run.config_dict["data"]["dataset"] == "digits"  # what was used, not the config's
        assert run.config_dict["data"]["partition"] == "dirichlet"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ([np.arange(0, 10)], "the split has 1 clients but train.clients = 2"),
        ([np.arange(0, 10), np.array([], dtype=int)], r"split\[1\] is empty"),
        ([np.arange(0, 10), np.array([5, 999])], r"split\[1\] has index 999 outside"),
        ([np.arange(0, 10), np.array([1.0, 2.0])], r"split\[1\] must be a 1-D array of integer"),
        ([np.arange(0, 10), np.array([3, 3])], r"split\[1\] holds a sample twice"),
    ],
)
def test_a_bad_split_is_a_one_line_error_before_any_file(split, message, tmp_path):
    cfg = small_config(train__clients=2, train__rounds=1)
    with pytest.raises(DataError, match=message) as err:
        train(cfg, tmp_path / "bad.h5", model=TabularMLP, dataset=tabular(), split=split)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad.h5").exists()


def test_bad_own_data_is_a_one_line_error(tmp_path):
    cfg = small_config(train__clients=2, train__rounds=1)
    d = tabular()
    split = [np.arange(0, 120), np.arange(120, 240)]
    cases = [
        (TensorData(d.train_x, d.train_y.float(), d.test_x, d.test_y), "integer class labels"),
        (TensorData(d.train_x, d.train_y, d.test_x[:, :5], d.test_y), "the same shape"),
        (TensorData(d.train_x, d.train_y, d.test_x, d.test_y, num_classes=2), "0 .. num_classes"),
        (TensorData(d.train_x, d.train_y, d.test_x, d.test_y, augment=True), "needs float images"),
        (TensorData(d.train_x, d.train_y, d.test_x, d.test_y, mean=(0.0,)), "both mean and std"),
        (object(), "has no train_x"),
    ]
    for data, message in cases:
        with pytest.raises(DataError, match=message):
            train(cfg, tmp_path / "bad.h5", model=TabularMLP, dataset=data, split=split)
    with pytest.raises(DataError, match="needs float images"):
        train(cfg.replace({"data.augment": True}), tmp_path / "bad.h5", model=TabularMLP,
              dataset=d, split=split)  # fmt: skip
    with pytest.raises(ConfigError, match=r"returns a torch\.nn\.Module"):
        train(cfg, tmp_path / "bad.h5", model=lambda: 3, dataset=d, split=split)
    with pytest.raises(ConfigError, match="needs the split itself"):
        from driftscope.registry import names_unchecked

        with names_unchecked():
            custom = cfg.replace({"data.partition": "custom"})
        train(custom, tmp_path / "bad.h5", model=TabularMLP, dataset=d)
    assert not (tmp_path / "bad.h5").exists()


def test_normalisation_only_where_the_dataset_asks(tmp_path):
    """mean/std normalise per feature (dimension 1): a run on (x - m) / s without them equals a
    run on x with them, bit for bit (the same arithmetic on the same tensors)."""
    d = tabular()
    m, s = d.train_x.mean(0), d.train_x.std(0)
    pre = TensorData((d.train_x - m) / s, d.train_y, (d.test_x - m) / s, d.test_y, name="rows")
    asks = TensorData(d.train_x, d.train_y, d.test_x, d.test_y, name="rows",
                      mean=tuple(m.tolist()), std=tuple(s.tolist()))  # fmt: skip
    split = [np.arange(0, 120), np.arange(120, 240)]
    cfg = small_config(train__clients=2, train__rounds=2, record__enabled=False)
    a = train(cfg, tmp_path / "a.h5", model=TabularMLP, dataset=pre, split=split)
    b = train(cfg, tmp_path / "b.h5", model=TabularMLP, dataset=asks, split=split)
    with open_run(a) as ra, open_run(b) as rb:
        np.testing.assert_array_equal(ra.metrics.test_loss, rb.metrics.test_loss)


def test_resume_with_own_objects_equals_the_uninterrupted_run(own_runs, tmp_path):
    from driftscope.engine.training import resume

    split = own_runs["split"]
    cfg = small_config(train__clients=3, **{**BASE, "train__rounds": 3})
    full = train(cfg, tmp_path / "full.h5", model=TabularMLP, dataset=tabular(), split=split)

    class Stop(Exception):
        pass

    from driftscope.engine.events import Hook

    class StopAfterOne(Hook):
        def on_round_end(self, event):
            if event.round == 1:
                raise Stop

    part = tmp_path / "part.h5"
    with pytest.raises(Stop):
        train(cfg, part, model=TabularMLP, dataset=tabular(), split=split, hooks=[StopAfterOne()])
    resume(part, model=TabularMLP, dataset=tabular(), split=split)
    with open_run(full) as a, open_run(part) as b:
        assert b.status == "complete"
        assert a.metrics.test_loss.tolist() == b.metrics.test_loss.tolist()


def test_the_documented_example_runs(tmp_path, monkeypatch):
    """docs/your-own-model.md's example under "Train on your own model, data and split"."""
    text = (ROOT / "docs" / "your-own-model.md").read_text()
    section = text.split("## Train on your own model, data and split", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "your-own-model.md", "exec"), {"__name__": "example"})
    with open_run(tmp_path / "my_rows.h5") as run:
        assert run.status == "complete"
        assert run.config_dict["data"]["partition"] == "custom"
        assert run.config_dict["data"]["dataset"] == "my_rows"
        assert run.config_dict["model"]["name"] == "TabularNet"
        assert run.client_sizes.sum() == 500
