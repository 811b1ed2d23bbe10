"""Batched clients (driftscope.engine.batched) against the sequential path (driftscope.engine.local).

Both paths do the same arithmetic in another order: a vmapped convolution is one grouped
convolution, a vmapped linear layer one batched matmul. In float64 the two agree to ~1e-15, so the
per-algorithm tests run in float64 with a tolerance of 1e-11: anything wrong (a batch, a momentum
buffer, a correction, a partial batch's mean) would show at 1e-3 or more. In float32 (what runs
use) they agree to ~1e-6 as long as no ReLU pre-activation lies within rounding of zero: when one
does, the two paths gate that unit differently and a client's update can differ by up to ~1e-2
after a few steps (seen with SCAFFOLD on small_cnn), so the float32 test is FedAvg, one round.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from driftscope.algorithms import ALGORITHMS, build_algorithm
from driftscope.algorithms.base import Algorithm
from driftscope.config import RunConfig
from driftscope.engine import batched
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.engine.local import batches as local_batches
from driftscope.errors import ConfigError
from driftscope.models.registry import build_model, model_layout

# float results compared at a rounding tolerance: make test runs these again under other CPU kernels
pytestmark = pytest.mark.kernels


class Events(Hook):
    def __init__(self) -> None:
        self.clients: list[tuple] = []

    def on_client_end(self, e) -> None:
        self.clients.append(
            (
                e.round,
                e.client,
                e.num_samples,
                e.steps,
                e.train_loss,
                e.train_accuracy,
                e.update.clone(),
                e.params.clone(),
            )
        )


def run(ds, mode: str, **values) -> tuple[Simulator, Events]:
    base = {
        "train.clients": 7,
        "train.rounds": 2,
        "train.local_epochs": 1,
        "data.partition": "dirichlet",
        "data.alpha": 0.1,
        "train.batch_size": 16,
        "record.enabled": False,
        "train.batched": mode,
    }
    sim = Simulator(RunConfig().replace(base | values), ds)
    events = Events()
    sim.run([events])
    return sim, events


def assert_same(a, b, atol: float) -> None:
    (sa, ea), (sb, eb) = a, b
    assert len(ea.clients) == len(eb.clients) > 0
    for x, y in zip(ea.clients, eb.clients, strict=True):
        assert x[:4] == y[:4]  # round, client, samples, steps: same batches
        assert x[4] == pytest.approx(y[4], abs=atol)  # train loss
        assert x[5] == pytest.approx(y[5], abs=1e-12)  # train accuracy
        torch.testing.assert_close(x[6], y[6], rtol=0, atol=atol)  # update
        torch.testing.assert_close(x[7], y[7], rtol=0, atol=atol)  # params
    torch.testing.assert_close(sa.global_params, sb.global_params, rtol=0, atol=atol)
    for k, v in sa.algorithm.state_dict().items():
        # relative as well: fedpvr_auto's ``window`` sums squared update norms (values ~100), so
        # float64 sums taken in another order (a vmapped kernel, or another CPU's kernels under
        # ATEN_CPU_CAPABILITY) differ by ~1e-13 of the value, above an absolute 1e-11
        torch.testing.assert_close(v, sb.algorithm.state_dict()[k], rtol=atol, atol=atol)


@pytest.fixture
def few_digits(digits):
    """400 training and 50 test images: enough for unequal clients, quick to train."""
    return dataclasses.replace(
        digits,
        train_x=digits.train_x[:400],
        train_y=digits.train_y[:400],
        test_x=digits.test_x[:50],
        test_y=digits.test_y[:50],
    )


@pytest.fixture
def digits64(few_digits):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield dataclasses.replace(
            few_digits, train_x=few_digits.train_x.double(), test_x=few_digits.test_x.double()
        )
    finally:
        torch.set_default_dtype(old)


ALGOS = [a for a in ("fedavg", "fedprox", "scaffold", "fedpvr", "fedpvr_auto") if a in ALGORITHMS]
VARIANTS = {
    "epochs": {},
    "steps-momentum": {"train.local_steps": 5, "train.momentum": 0.5},
    "augment-wd": {"data.augment": True, "train.weight_decay": 1e-3, "train.local_epochs": 2},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("algorithm", ALGOS)
def test_batched_equals_sequential_float64(digits64, algorithm, variant, monkeypatch):
    # groups of 3 clients: several groups per round and gathered (non-contiguous) rows
    monkeypatch.setattr(batched, "MAX_GROUP", 3)
    values = {"train.algorithm": algorithm} | VARIANTS[variant]
    seq = run(digits64, "off", **values)
    bat = run(digits64, "on", **values)
    sizes = {e[2] for e in seq[1].clients}
    steps = {e[3] for e in seq[1].clients}
    if variant != "steps-momentum":  # unequal clients: different step counts, partial batches
        assert len(steps) > 1 and any(n % 16 for n in sizes)
    assert seq[0].global_params.dtype == torch.float64
    assert_same(seq, bat, atol=1e-11)


def test_batched_equals_sequential_float32(few_digits):
    a = run(few_digits, "off", **{"train.rounds": 1})
    b = run(few_digits, "on", **{"train.rounds": 1})
    assert_same(a, b, atol=1e-5)


def test_default_correct_gradients_loops_over_clients(digits):
    """The base class's per-row loop and SCAFFOLD's batched override agree."""
    cfg = RunConfig().replace({"train.algorithm": "scaffold", "train.clients": 5})
    model = build_model("small_cnn", digits.input_shape, digits.num_classes)
    layout = model_layout(model, cfg.model.head, cfg.model.head_last_k)
    algo = build_algorithm(cfg.train, layout, 5)
    g = torch.Generator().manual_seed(0)
    algo.c = torch.randn(algo.c.shape, generator=g)
    algo.c_clients = torch.randn(algo.c_clients.shape, generator=g)
    clients = [3, 0, 4]
    grads = torch.randn(3, layout.numel, generator=g)
    params = torch.randn(3, layout.numel, generator=g)
    x = torch.randn(layout.numel, generator=g)
    fast, slow = grads.clone(), grads.clone()
    algo.correct_gradients(clients, fast, params, x)
    Algorithm.correct_gradients(algo, clients, slow, params, x)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast[1], grads[1] + algo.c - algo.c_clients[0])


def test_auto_rule_and_dropout_fallback(digits):
    cnn = build_model("small_cnn", digits.input_shape, 10)
    vgg = build_model("vgg11", (3, 32, 32), 10)
    numel = sum(p.numel() for p in cnn.parameters())

    def train(**values):
        return RunConfig().replace(values).train

    assert not batched.supported(vgg)  # dropout: per-client masks need the sequential path
    assert not batched.use_batched(train(**{"train.batched": "on"}), vgg, 10**7, (3, 32, 32))
    assert batched.use_batched(train(**{"train.batched": "on"}), cnn, numel, (1, 8, 8))
    assert not batched.use_batched(
        train(**{"train.batched": "off", "train.clients": 100}), cnn, numel, (1, 8, 8)
    )
    auto = train(**{"train.clients": 100})
    assert batched.use_batched(auto, cnn, numel, (1, 8, 8))
    assert not batched.use_batched(auto, cnn, numel, (1, 28, 28))  # measured slower batched
    assert not batched.use_batched(train(), cnn, numel, (1, 8, 8))  # 10 clients: sequential
    with pytest.raises(ConfigError, match="batched"):
        train(**{"train.batched": "yes"})


def test_recorded_run_same_as_sequential(few_digits, tmp_path):
    """The recorder sees the same events: a recorded run's Grams and stored updates agree."""
    from driftscope.engine.training import train
    from driftscope.runfile.reader import open_run

    values = {
        "train.clients": 4,
        "train.rounds": 2,
        "train.local_steps": 3,
        "record.updates_every": 1,
        "record.probe_size": 16,
    }
    paths = {}
    for mode in ("off", "on"):
        paths[mode] = tmp_path / f"{mode}.h5"
        train(
            RunConfig().replace(values | {"train.batched": mode}), paths[mode], dataset=few_digits
        )
    with open_run(paths["off"]) as a, open_run(paths["on"]) as b:
        assert list(a.rounds) == list(b.rounds) == [0, 1]
        for p in a.params:
            assert a.gram(p.name) == pytest.approx(b.gram(p.name), rel=1e-4, abs=1e-9)
            assert a.updates(p.name) == pytest.approx(b.updates(p.name), abs=1e-5)


# ------------------------------------------------------------------ the device code path
# No GPU here: these run the device path with the CPU device (given explicitly), the host-data
# placement the simulator picks when the data do not fit on the device, and the batch-by-batch
# copy of host data forced on; the cuda/mps placements themselves are not exercised.

DEVICE_RUN = {"train.algorithm": "fedpvr", "train.momentum": 0.0} | VARIANTS["augment-wd"]


def test_batched_explicit_cpu_and_host_data(digits64, monkeypatch):
    """``--device cpu`` given explicitly equals the default bit for bit on the batched path, and
    so do client data kept in host memory; both equal the sequential path (per-parameter momentum,
    augmentation, weight decay and control variates all on the device path)."""
    import driftscope.engine.setup as run_setup_module

    monkeypatch.setattr(batched, "MAX_GROUP", 3)
    default = run(digits64, "on", **DEVICE_RUN)
    explicit = run(digits64, "on", **DEVICE_RUN, **{"train.device": "cpu"})
    sequential = run(digits64, "off", **DEVICE_RUN, **{"train.device": "cpu"})
    assert explicit[0].device == torch.device("cpu")
    assert isinstance(explicit[0].algorithm.momentum(), torch.Tensor)  # per-parameter momentum
    assert_same(explicit, default, atol=0)
    assert_same(explicit, sequential, atol=1e-11)
    monkeypatch.setattr(run_setup_module, "data_fits", lambda nbytes, device: False)
    host = run(digits64, "on", **DEVICE_RUN, **{"train.device": "cpu"})
    assert not host[0].data_on_device
    assert_same(host, default, atol=0)


def _recorded_batches(monkeypatch, module) -> list[list[torch.Tensor]]:
    """Every index tensor ``module.batches`` yields, one list per client."""
    seen: list[list[torch.Tensor]] = []

    def spy(*args, **kwargs):
        mine: list[torch.Tensor] = []  # the batched path interleaves its clients' streams
        seen.append(mine)
        for idx in local_batches(*args, **kwargs):  # the function, not a spy patched before
            mine.append(idx.clone())
            yield idx

    monkeypatch.setattr(module, "batches", spy)
    return seen


def test_batched_draws_the_sequential_paths_batches(few_digits, monkeypatch):
    """The same permutations, client by client and step by step, as local_train draws (from each
    client's CPU generator, moved to the device as local_train moves them)."""
    from driftscope.engine import local

    monkeypatch.setattr(batched, "MAX_GROUP", 3)
    values = {"train.device": "cpu", "data.augment": True, "train.local_epochs": 2}
    seq_batches = _recorded_batches(monkeypatch, local)
    run(few_digits, "off", **values)
    bat_batches = _recorded_batches(monkeypatch, batched)
    run(few_digits, "on", **values)
    assert len(seq_batches) == len(bat_batches) == 2 * 7  # two rounds of 7 clients
    assert {len(b) for b in seq_batches} != {1}  # several steps, unequal clients
    for s, b in zip(seq_batches, bat_batches, strict=True):
        assert len(s) == len(b)
        for x, y in zip(s, b, strict=True):
            assert x.device == y.device and torch.equal(x, y)


def test_a_client_with_host_data_copies_each_batch_to_the_device(few_digits):
    """The host-memory branch (data off the training device: copied batch by batch), forced on
    with the CPU as the device: the same batches, augmentation draws included, as data on it."""
    from driftscope.engine.local import Augmentation

    cfg = RunConfig().replace({"train.batch_size": 16, "train.local_epochs": 2})
    aug = Augmentation(1, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    x, y = few_digits.train_x[:50], few_digits.train_y[:50]
    cpu = torch.device("cpu")
    on = batched._Client(x, y, cfg.train, aug, 0, 1, 2, cpu)
    off = batched._Client(x, y, cfg.train, aug, 0, 1, 2, cpu)
    assert on.on_device
    off.on_device = False
    taken = 0
    while on.next_idx is not None:
        (xa, ya), (xb, yb) = on.take(), off.take()
        assert xb.device == cpu and torch.equal(xa, xb) and torch.equal(ya, yb)
        taken += 1
    assert off.next_idx is None and taken == 2 * 4  # 50 samples: 4 batches a pass
