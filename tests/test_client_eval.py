"""Per-client evaluation (``data.client_test_fraction``) and the kept global models
(``record.global_every``): the held-out split, the stored numbers against a model rebuilt from the
run file, resume, ``analyze``, older files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config
from torch import nn

from driftscope import open_run, train
from driftscope.data.partition import hold_out
from driftscope.engine.setup import RunSetup
from driftscope.errors import ConfigError, RunFileError

pytestmark = pytest.mark.kernels


class BNNet(nn.Module):
    """A small BatchNorm CNN of this test's own (running statistics are buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


RUN = dict(
    train__rounds=3,
    train__clients=4,
    train__local_steps=2,
    record__probe_size=0,
    record__updates_every=0,
    data__client_test_fraction=0.25,
    record__global_every=2,
)


def test_hold_out_is_seeded_disjoint_and_keeps_the_training_order():
    rng = np.random.default_rng(0)
    parts = [np.sort(rng.choice(1000, size=n, replace=False)) for n in (10, 7, 1, 0)]
    train_a, held_a = hold_out(parts, 0.3, seed=5)
    train_b, held_b = hold_out(parts, 0.3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(held_a, held_b, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(train_a, train_b, strict=True))
    for part, tr, ho in zip(parts, train_a, held_a, strict=True):
        assert len(ho) == int(np.floor(0.3 * len(part)))  # 3, 2, 0, 0
        assert np.array_equal(np.sort(np.concatenate([tr, ho])), np.sort(part))
        assert not set(tr) & set(ho)
        assert np.array_equal(tr, part[np.isin(part, tr)])  # the rest, in its own order
    other = hold_out(parts, 0.3, seed=6)[1]
    assert not np.array_equal(other[0], held_a[0])  # another seed, another draw
    same, none = hold_out(parts, 0.0, seed=5)
    assert all(p is s for p, s in zip(parts, same, strict=True)) and not any(map(len, none))


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_a_one_line_error(fraction):
    with pytest.raises(ConfigError, match=r"client_test_fraction must be in \[0, 1\)") as err:
        small_config(data__client_test_fraction=fraction)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="global_every must be >= 0"):
        small_config(record__global_every=-1)


def _slow_eval(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The engine's evaluation written out: one float32 forward pass (the sets here are below its
    batch of 1024), the summed cross-entropy added in float64."""
    assert len(y) <= 1024
    with torch.no_grad():
        logits = model.eval()(x)
        total = torch.zeros((), dtype=torch.float64) + F.cross_entropy(logits, y, reduction="sum")
    return float(total) / len(y), int((logits.argmax(1) == y).sum()) / len(y)


@pytest.mark.parametrize("batched", ["off", "on"])
def test_held_out_accuracy_and_kept_models_equal_a_model_rebuilt_from_the_file(
    tmp_path, digits, batched
):
    cfg = small_config(**RUN, train__batched=batched)
    path = tmp_path / "r.h5"
    train(cfg, path, dataset=digits, model=BNNet)
    setup = RunSetup(cfg, digits, model=BNNet)  # the same split and normalisation
    with open_run(path) as run:
        # the clients trained on the rest: sizes and histograms describe it
        held = [len(h) for h in setup.held_out]
        assert held == [len(p) // 4 for p in hold_out_parts(cfg, digits)]
        assert sum(run.client_sizes) + sum(held) == len(digits.train_y)
        assert (run.label_histogram.sum(axis=1).to_numpy() == run.client_sizes).all()
        table = run.client_eval_table()
        assert sorted(set(table["round"])) == [0, 1, 2]  # eval_every 1: every round
        assert (table.groupby("round")["client"].count() == 4).all()
        assert run.global_rounds == [1, 2]  # every 2 rounds, and the last
        metrics = run.metrics.set_index("round")
        for r in run.global_rounds:
            state = run.global_model(r)
            assert all(isinstance(v, torch.Tensor) for v in state.values())
            assert state["conv.weight"].dtype == torch.float32
            assert "bn.running_mean" in state and "bn.num_batches_tracked" in state
            model = run.global_model(r, model=BNNet)
            # the same float32 model on the same inputs in one batch: the accuracy exactly, the
            # loss to float32 rounding of the summed losses (1e-6 relative)
            loss, acc = _slow_eval(model, setup.test_x, setup.test_y)
            assert acc == metrics.loc[r, "test_accuracy"]
            assert loss == pytest.approx(metrics.loc[r, "test_loss"], rel=1e-6)
            rows = table[table["round"] == r].set_index("client")
            for c in range(4):
                loss, acc = _slow_eval(model, setup.client_test_x[c], setup.client_test_y[c])
                assert acc == rows.loc[c, "test_accuracy"]
                assert loss == pytest.approx(rows.loc[c, "test_loss"], rel=1e-6)
                assert rows.loc[c, "held_out"] == held[c]
        # the running statistics matter: without them the model scores differently
        fresh = BNNet()
        fresh.load_state_dict(
            {k: v for k, v in run.global_model(2).items() if "running" not in k}, strict=False
        )
        assert _slow_eval(fresh, setup.test_x, setup.test_y)[0] != pytest.approx(
            metrics.loc[2, "test_loss"], rel=1e-3
        )
        with pytest.raises(RunFileError, match="no global model of round 0"):
            run.global_model(0)


def hold_out_parts(cfg, digits):
    """Each client's whole part before the hold-out (the split of a run without one)."""
    return RunSetup(cfg.replace({"data.client_test_fraction": 0.0}), digits, model=BNNet).parts


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, digits):
    from test_resume import StopAt, assert_same_run

    from driftscope.engine.training import resume

    cfg = small_config(**dict(RUN, train__eval_every=2, train__rounds=4))
    whole = tmp_path / "whole.h5"
    train(cfg, whole, dataset=digits, model=BNNet)
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, model=BNNet, hooks=[StopAt(2)])
    resume(path, dataset=digits, model=BNNet)
    assert_same_run(path, whole)  # every stored number, held-out and kept models included
    with open_run(path) as run:
        assert run.global_rounds == [1, 3]
        assert sorted(set(run.client_eval_table()["round"])) == [1, 3]


def test_analyze_shows_the_spread_and_older_files_have_neither(tmp_path, digits, make_run):
    path = tmp_path / "r.h5"
    train(small_config(**RUN), path, dataset=digits)
    out = subprocess.run(
        [sys.executable, "-m", "driftscope", "analyze", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "held-out accuracy per client" in out and "median" in out
    with open_run(path) as run:
        from driftscope.analysis.client_eval import client_spread

        spread = client_spread(run)
        table = run.client_eval_table()
        last = table[table["round"] == 2]["test_accuracy"]
        assert spread.iloc[-1]["min"] == last.min() and spread.iloc[-1]["max"] == last.max()
        assert spread.iloc[-1]["median"] == last.median()
    with open_run(make_run("fedavg")) as run:  # a run without either setting
        assert not run.has_client_eval and run.global_rounds == []
        with pytest.raises(RunFileError, match="--client-test-fraction"):
            run.client_eval_table()


def test_the_flower_engine_records_the_same_held_out_numbers(tmp_path, digits):
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid

    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    cfg = small_config(**dict(RUN, train__clients=3, train__rounds=2))
    train(cfg, tmp_path / "inprocess.h5", dataset=digits)
    strategy = DriftscopeStrategy(cfg, tmp_path / "flower.h5", dataset=digits)
    strategy.start(LocalGrid(client_app, 3, seed=7))
    # the ClientApps train on the same rest (their RunSetup holds out the same rows), so the
    # global models and every held-out number are equal bit for bit (as the Flower tests)
    with open_run(tmp_path / "inprocess.h5") as a, open_run(tmp_path / "flower.h5") as b:
        assert np.array_equal(a.client_sizes, b.client_sizes)
        ta, tb = a.client_eval_table(), b.client_eval_table()
        assert len(ta) == 6
        assert ta.equals(tb)
        cols = ["test_accuracy", "test_loss", "train_loss"]
        assert np.array_equal(a.metrics[cols].to_numpy(), b.metrics[cols].to_numpy())


def _kept(path) -> dict[int, dict[str, np.ndarray]]:
    with open_run(path) as run:
        return {r: run.global_state(r) for r in run.global_rounds}


def test_kept_models_without_recording_and_on_flower_equal_the_inprocess_ones(tmp_path, digits):
    pytest.importorskip("flwr")
    from flowergrid import LocalGrid

    from driftscope.flower.client import app as client_app
    from driftscope.flower.strategy import DriftscopeStrategy

    cfg = small_config(
        train__clients=3, train__rounds=2, train__local_steps=3, record__global_every=1
    )
    train(cfg, tmp_path / "inprocess.h5", dataset=digits)
    want = _kept(tmp_path / "inprocess.h5")
    assert sorted(want) == [0, 1]
    train(cfg.replace({"record.enabled": False}), tmp_path / "plain.h5", dataset=digits)
    strategy = DriftscopeStrategy(cfg, tmp_path / "flower.h5", dataset=digits)
    strategy.start(LocalGrid(client_app, 3, seed=7))
    for other in ("plain.h5", "flower.h5"):  # the same model bit for bit (as the Flower tests)
        got = _kept(tmp_path / other)
        assert sorted(got) == [0, 1]
        for r, state in want.items():
            assert sorted(got[r]) == sorted(state)
            for name, value in state.items():
                assert np.array_equal(got[r][name], value), (other, r, name)
