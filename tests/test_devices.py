"""Devices and many clients through the device code path on the CPU.

``--device cpu`` given explicitly runs the same code as a GPU run (parameters, data, control
variates and recordings placed on ``sim.device``) and must equal the default bit for bit; data held
off the device (the "does not fit" path) must too. Control variates in a scratch file (memmap)
equal those in memory, the resume state written as changed rows equals the whole table, and bad
input gives one-line errors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import small_config

import driftscope.engine.setup as run_setup_module
from driftscope import train
from driftscope.config import TrainConfig
from driftscope.device import DeviceError, available_devices, resolve_device
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.training import resume
from driftscope.errors import ConfigError
from driftscope.runfile import schema

NUMEL = 69194  # small_cnn on digits


def _contents(path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name != schema.metric_path("seconds"):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def _assert_same(a, b) -> None:
    x, y = _contents(a), _contents(b)
    assert sorted(x) == sorted(y)
    for key in x:
        assert np.array_equal(x[key], y[key], equal_nan=np.asarray(x[key]).dtype.kind == "f"), key


def test_resolve_device_names_and_errors(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    available = available_devices()
    assert "cpu" in available and not any(d.startswith("cuda") for d in available)
    assert resolve_device("auto").type in ("cpu", "mps")
    for name in ("cuda", "cuda:3"):
        with pytest.raises(DeviceError) as err:
            resolve_device(name)
        message = str(err.value)
        assert "\n" not in message and f"'{name}' is not available" in message
        assert "available devices are cpu" in message
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        TrainConfig(device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has cuda")
def test_cli_unavailable_device_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "driftscope", "run", "--device", "cuda", "--rounds", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "available devices are cpu" in lines[0], out.stderr


CFG = dict(
    train__rounds=3,
    train__clients=6,
    train__client_fraction=0.34,
    train__local_steps=2,
    train__algorithm="scaffold",
    data__augment=True,  # augmentation drawn on the CPU, applied on the device
    record__probe_size=16,
)


@pytest.mark.skipif(
    resolve_device("auto").type != "cpu", reason="auto is not the CPU on this machine"
)
def test_explicit_cpu_and_host_data_equal_the_default(tmp_path, digits, monkeypatch):
    default = train(small_config(**CFG), tmp_path / "default.h5", dataset=digits)
    explicit = train(small_config(**CFG, train__device="cpu"), tmp_path / "cpu.h5", dataset=digits)
    monkeypatch.setattr(run_setup_module, "data_fits", lambda nbytes, device: False)
    sim = Simulator(small_config(**CFG, train__device="cpu"), digits)
    assert not sim.data_on_device
    host = train(small_config(**CFG, train__device="cpu"), tmp_path / "host.h5", dataset=digits)
    _assert_same(explicit, default)
    _assert_same(host, default)
    with h5py.File(explicit, "r") as f:
        assert json.loads(f.attrs["environment"])["device"] == "cpu"


def _budget_for_scratch(cfg) -> float:
    """A budget that holds one round but not all N rows of c_clients."""
    t = cfg.train
    return (t.clients_per_round + 3 + 1) * NUMEL * 4 / 2**20


def test_scratch_file_control_variates_equal_in_memory(digits):
    cfg = small_config(**CFG, record__enabled=False)
    a = Simulator(cfg, digits)
    b = Simulator(cfg.replace({"train.state_budget_mb": _budget_for_scratch(cfg)}), digits)
    assert a.algorithm.in_memory and not b.algorithm.in_memory
    a.run()
    b.run()
    assert torch.equal(a.global_params, b.global_params)
    assert torch.equal(a.algorithm.c, b.algorithm.c)
    assert torch.equal(a.algorithm.c_clients, b.algorithm.c_clients)
    assert b.algorithm.c_clients.abs().sum() > 0
    # the kept per-client norms equal norms recomputed over the whole table
    for name, norms in b.algorithm.state_norms().items():
        p = b.layout.param(name)
        want = a.algorithm.c_clients[:, p.offset : p.offset + p.numel].norm(dim=1)
        torch.testing.assert_close(norms[1:], want, rtol=1e-6, atol=1e-7)


def test_budget_too_small_is_one_line(digits):
    cfg = small_config(**CFG, train__state_budget_mb=0.5)
    with pytest.raises(ConfigError) as err:
        Simulator(cfg, digits)
    message = str(err.value)
    assert "\n" not in message and "0.5 MiB" in message and "--state-budget-mb" in message


@pytest.mark.parametrize("scratch", [False, True])
def test_changed_rows_state_equals_the_whole_table(tmp_path, digits, scratch):
    """The resume state is written as the rows changed in the last two rounds; each slot must
    still hold the whole table of its round (checked against a run for every round count)."""
    cfg = small_config(**{**CFG, "train__rounds": 4}, record__enabled=False)
    if scratch:
        cfg = cfg.replace({"train.state_budget_mb": _budget_for_scratch(cfg)})
    path = train(cfg, tmp_path / "run.h5", dataset=digits)
    tables = {}
    for rounds in (3, 4):
        sim = Simulator(cfg.replace({"train.rounds": rounds}), digits)
        sim.run()
        tables[rounds - 1] = sim.algorithm.c_clients.clone().numpy()
    with h5py.File(path, "r") as f:
        saved = f[schema.state_path("algorithm/c_clients")]
        for r, table in tables.items():
            slot = schema.state_slot(r)
            assert int(f[schema.STATE_ROUND][slot]) == r
            assert np.array_equal(saved[slot], table), r


class _StopAt(Hook):
    def __init__(self, round: int) -> None:
        self.round = round

    def on_round_start(self, event):
        if event.round == self.round:
            raise KeyboardInterrupt


def test_scratch_file_run_resumes_to_the_same_state(tmp_path, digits):
    """Interrupted at round 2 and resumed with c_clients in the scratch file: the same file
    (metrics, records, both state slots) as the run left alone."""
    cfg = small_config(**{**CFG, "train__rounds": 4})
    cfg = cfg.replace({"train.state_budget_mb": _budget_for_scratch(cfg)})
    whole = train(cfg, tmp_path / "whole.h5", dataset=digits)
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, dataset=digits, hooks=[_StopAt(2)])
    resume(path, dataset=digits)
    _assert_same(path, whole)


def test_recorder_drops_probe_grams_after_a_cka_round(tmp_path, digits, monkeypatch):
    """The S + 1 probe Grams per layer live only during their CKA round."""
    from driftscope.engine.recorder import Recorder

    seen = []

    class Spy(Hook):
        def on_round_end(self, event):
            seen.append(recorders[0]._grams)  # runs before the recorder: the round's block

    recorders = []
    original = Recorder.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        recorders.append(self)

    monkeypatch.setattr(Recorder, "__init__", init)
    train(small_config(**CFG), tmp_path / "r.h5", dataset=digits, hooks=[Spy()])
    assert all(block is not None and block.shape[1] == 3 for block in seen)  # S + 1 = 3 models
    assert recorders[0]._grams is None
