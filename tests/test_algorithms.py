"""Algorithms against theory: equivalences between them, SGD, and the control-variate formulas."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from conftest import small_config

from driftscope import open_run, train
from driftscope.algorithms import (
    ALGORITHMS,
    Algorithm,
    aggregate,
    build_algorithm,
    register_algorithm,
)
from driftscope.config import RunConfig, TrainConfig
from driftscope.engine.events import Hook
from driftscope.engine.inprocess import Simulator
from driftscope.errors import ConfigError


class Capture(Hook):
    """Keeps every client's y and the x it started from (``sim``'s global model)."""

    def __init__(self, sim):
        self.sim = sim
        self.x, self.y, self.steps = {}, {}, {}

    def on_round_start(self, event):
        self.x[event.round] = self.sim.global_params.clone()

    def on_client_end(self, event):
        self.y[event.round, event.client] = event.params.clone()
        self.steps[event.round, event.client] = event.steps


def final_params(digits, **overrides):
    sim = Simulator(small_config(train__rounds=2, record__enabled=False, **overrides), digits)
    sim.run()
    return sim.global_params


def test_fedpvr_with_empty_head_is_fedavg(digits):
    a = final_params(digits, train__algorithm="fedavg")
    b = final_params(
        digits, train__algorithm="fedpvr", model__head_last_k=0, train__params__body_momentum=None
    )
    assert torch.equal(a, b)


def test_fedpvr_with_everything_in_the_head_is_scaffold(digits):
    a = final_params(digits, train__algorithm="scaffold")
    b = final_params(
        digits, train__algorithm="fedpvr", model__head=["*"], train__params__body_momentum=None
    )
    assert torch.equal(a, b)
    # and it is not FedAvg: the correction does something from round 2 on
    assert not torch.allclose(a, final_params(digits, train__algorithm="fedavg"))


def test_fedpvr_body_momentum_changes_only_what_it_should(digits):
    plain = final_params(digits, train__algorithm="fedpvr", train__params__body_momentum=None)
    mom = final_params(digits, train__algorithm="fedpvr", train__params__body_momentum=0.9)
    assert not torch.allclose(plain, mom)


def test_fedavg_body_momentum_is_fedpvr_without_control_variates(digits):
    """The ablation arm: FedPVR's momentum rule, no correction. Its first round is FedPVR's
    (control variates start at zero), later rounds differ (FedPVR's correction acts); with the
    body momentum equal to the head's it is FedAvg; bitwise, the same arithmetic."""
    one = {"train__rounds": 1, "record__enabled": False}
    sims = {
        name: Simulator(small_config(train__algorithm=name, **one), digits)
        for name in ("fedpvr", "fedavg_body_momentum")
    }
    for sim in sims.values():
        sim.run()
    assert torch.equal(sims["fedpvr"].global_params, sims["fedavg_body_momentum"].global_params)
    momenta = [sim.algorithm.momentum() for sim in sims.values()]
    assert torch.equal(*momenta)
    assert momenta[0].unique().tolist() == pytest.approx([0.0, 0.9])  # head 0, body 0.9
    assert not sims["fedavg_body_momentum"].algorithm.corrects_gradient
    two = final_params(digits, train__algorithm="fedavg_body_momentum")
    assert not torch.allclose(two, final_params(digits, train__algorithm="fedpvr"))
    plain = final_params(
        digits, train__algorithm="fedavg_body_momentum", train__params__body_momentum=None
    )
    assert torch.equal(plain, final_params(digits, train__algorithm="fedavg"))
    # FedAvg's traffic: no control variates on the wire
    assert sims["fedavg_body_momentum"].algorithm.values_per_client() == (
        sims["fedpvr"].layout.numel,
        sims["fedpvr"].layout.numel,
    )


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_towards_x(digits):
    a = final_params(digits, train__algorithm="fedavg")
    b = final_params(digits, train__algorithm="fedprox", train__params__mu=0.0)
    assert torch.allclose(a, b, atol=0, rtol=0)
    avg = Simulator(small_config(train__rounds=1), digits)
    prox = Simulator(
        small_config(train__rounds=1, train__algorithm="fedprox", train__params__mu=1.0), digits
    )
    cap_avg, cap_prox = Capture(avg), Capture(prox)
    avg.run([cap_avg])
    prox.run([cap_prox])
    for key in cap_avg.y:
        d_avg = (cap_avg.y[key] - cap_avg.x[0]).norm()
        d_prox = (cap_prox.y[key] - cap_prox.x[0]).norm()
        assert d_prox < d_avg


def test_one_client_one_step_is_sgd(digits):
    cfg = small_config(
        train__clients=1,
        train__rounds=1,
        train__local_steps=1,
        data__partition="iid",
        train__lr=0.1,
        train__momentum=0.5,
        train__weight_decay=0.01,
    )
    sim = Simulator(cfg, digits)
    # the same model, the same batch, torch's own optimizer
    from driftscope.models.registry import build_model
    from driftscope.seeding import derive_seed, torch_generator

    torch.manual_seed(derive_seed(cfg.seed, "init"))
    ref = build_model("small_cnn", (1, 8, 8), 10)
    x0 = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert torch.equal(x0, sim.global_params)
    gen = torch_generator(cfg.seed, "batches", 0, 0)
    idx = torch.randperm(len(sim.client_y[0]), generator=gen)[: cfg.train.batch_size]
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5, weight_decay=0.01)
    loss = torch.nn.functional.cross_entropy(ref(sim.client_x[0][idx]), sim.client_y[0][idx])
    loss.backward()
    opt.step()
    sim.run()
    expected = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    torch.testing.assert_close(sim.global_params, expected, rtol=0, atol=1e-7)


def test_control_variates_start_at_zero_and_follow_option_two(digits):
    cfg = small_config(
        train__algorithm="scaffold",
        train__rounds=2,
        train__client_fraction=0.5,
        record__enabled=False,
    )
    sim = Simulator(cfg, digits)
    algo = sim.algorithm
    assert algo.c.abs().sum() == 0 and algo.c_clients.abs().sum() == 0
    cap = Capture(sim)
    c_before = {}

    class Before(Hook):
        def on_round_start(self, event):
            c_before[event.round] = (algo.c.clone(), algo.c_clients.clone(), event.clients)

    sim.run([Before(), cap])
    lr = cfg.train.lr
    # state after round r: the next round's starting state, or the algorithm's final state
    after = {0: (c_before[1][0], c_before[1][1]), 1: (algo.c, algo.c_clients)}
    for r in (0, 1):
        c, c_i, clients = c_before[r]
        c_after, c_i_after = after[r]
        deltas = []
        for k in clients:
            x, y, steps = cap.x[r], cap.y[r, k], cap.steps[r, k]
            expected = c_i[k] - c + (x - y) / (steps * lr)
            deltas.append(expected - c_i[k])
            torch.testing.assert_close(c_i_after[k], expected, rtol=1e-5, atol=1e-6)
        expected_c = c + (len(clients) / cfg.train.clients) * torch.stack(deltas).mean(0)
        torch.testing.assert_close(c_after, expected_c, rtol=1e-5, atol=1e-6)
    # round 0 starts from zero, so its control variates are (x - y) / (K lr) exactly
    assert c_before[1][0].abs().sum() > 0
    # clients that did not take part keep their control variate
    absent = set(range(cfg.train.clients)) - set(c_before[1][2]) - set(c_before[0][2])
    for k in absent:
        assert algo.c_clients[k].abs().sum() == 0


def test_fedpvr_control_variates_live_on_the_head_only(digits):
    sim = Simulator(small_config(train__algorithm="fedpvr", train__rounds=1), digits)
    assert sim.algorithm.c.numel() == sim.layout.head_numel
    norms = sim.algorithm.state_norms()
    assert set(norms) == {p.name for p in sim.layout.params if p.group == "head"}


def test_sample_weighted_average(digits):
    cfg = small_config(train__rounds=1, train__weighting="samples", record__enabled=False)
    sim = Simulator(cfg, digits)
    cap = Capture(sim)
    sim.run([cap])
    sizes = torch.tensor([len(p) for p in sim.parts], dtype=torch.float64)
    w = sizes / sizes.sum()
    expected = cap.x[0] + sum(
        float(w[k]) * (cap.y[0, k] - cap.x[0]) for k in range(cfg.train.clients)
    )
    torch.testing.assert_close(sim.global_params, expected.float(), rtol=1e-5, atol=1e-6)


def test_pure_functions():
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    w = aggregate.client_weights(torch.tensor([1, 3]), "samples")
    torch.testing.assert_close(aggregate.weighted_mean(v, w), torch.tensor([2.5, 5.0]))
    torch.testing.assert_close(
        aggregate.client_weights(torch.tensor([1, 3]), "uniform"),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    )
    x, y = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(
        aggregate.scaffold_client_control(torch.zeros(3), torch.zeros(3), x, y, 4, 0.5),
        torch.full((3,), 0.5),
    )


# ------------------------------------------------------------------ registry, params, resume
FIXTURES = Path(__file__).parent / "fixtures"


@dataclasses.dataclass(frozen=True)
class ScaledParams:
    scale: float = dataclasses.field(default=1.0, metadata={"help": "server step on the mean"})


class ServerScaled(Algorithm):
    """A toy algorithm from outside the package: x <- x + scale * mean update."""

    name = "toy_scaled"
    label = "Toy (scaled server step)"
    Params = ScaledParams

    def server_update(self, x, mean_update, extras):
        return x + self.params.scale * mean_update


@pytest.fixture
def toy_algorithm():
    """ServerScaled registered for one test only, so it never leaks into other tests' choices."""
    register_algorithm(ServerScaled)
    try:
        yield ServerScaled
    finally:
        ALGORITHMS.unregister(ServerScaled.name)


def test_an_algorithm_from_outside_runs_end_to_end(tmp_path, digits, toy_algorithm):
    """scale 0 never moves the global model (flat test accuracy and loss); scale 1 is FedAvg,
    bit for bit. Both go through the public registry, config and driftscope.train."""
    base = small_config(train__rounds=3, record__enabled=False)
    frozen = base.replace({"train.algorithm": "toy_scaled", "train.params.scale": 0.0})
    assert frozen.to_dict()["train"]["params"] == {"scale": 0.0}
    runs = {}
    for name, cfg in {
        "frozen": frozen,
        "one": frozen.replace({"train.params.scale": 1.0}),
        "fedavg": base,
    }.items():
        train(cfg, tmp_path / f"{name}.h5", dataset=digits)
        with open_run(tmp_path / f"{name}.h5") as run:
            runs[name] = run.metrics[["test_loss", "test_accuracy"]].to_numpy()
    assert (runs["frozen"] == runs["frozen"][0]).all()
    assert (runs["one"] == runs["fedavg"]).all()
    assert not (runs["fedavg"] == runs["fedavg"][0]).all()


def test_registration_checks_the_declaration():
    with pytest.raises(TypeError, match="frozen dataclass"):

        @register_algorithm
        class NoDataclass(Algorithm):
            name, label = "bad1", "Bad"
            Params = dict

    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        x: float = 1.0

    with pytest.raises(TypeError, match="help"):

        @register_algorithm
        class NoHelp(Algorithm):
            name, label = "bad2", "Bad"
            Params = Undocumented

    with pytest.raises(ValueError, match="already registered"):
        register_algorithm(type("Again", (Algorithm,), {"name": "fedavg", "label": "X"}))
    assert "bad1" not in ALGORITHMS and "bad2" not in ALGORITHMS


def test_names_labels_and_params_are_declared_by_each_algorithm():
    assert ALGORITHMS.names()[:4] == ("fedavg", "fedprox", "scaffold", "fedpvr")
    labels = {n: ALGORITHMS.get(n).label for n in ("fedavg", "fedprox", "scaffold", "fedpvr")}
    assert labels == {
        "fedavg": "FedAvg",
        "fedprox": "FedProx",
        "scaffold": "SCAFFOLD",
        "fedpvr": "FedPVR",
    }
    assert TrainConfig(algorithm="fedprox").params.mu == 0.01
    assert TrainConfig(algorithm="fedpvr").params.body_momentum == 0.9
    assert dataclasses.fields(TrainConfig().params) == ()
    assert dataclasses.fields(TrainConfig(algorithm="scaffold").params) == ()


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold", "fedpvr"])
def test_state_dict_resumes_control_variates(digits, algorithm):
    """Run 2 rounds; a fresh algorithm loaded with the state equals the trained one's state."""
    sim = Simulator(
        small_config(train__algorithm=algorithm, train__rounds=2, record__enabled=False), digits
    )
    sim.run()
    state = sim.algorithm.state_dict()
    fresh = build_algorithm(sim.cfg.train, sim.layout, sim.cfg.train.clients)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert set(again) == set(state) == ({"c", "c_clients"} if algorithm != "fedavg" else set())
    for key in state:
        assert torch.equal(again[key], state[key])
        assert state[key].abs().sum() > 0  # something was learned
    state_before = {k: v.clone() for k, v in state.items()}
    for v in state.values():
        v.add_(1.0)  # the returned tensors are copies
    for key, value in sim.algorithm.state_dict().items():
        assert torch.equal(value, state_before[key])
    if algorithm == "fedavg":
        with pytest.raises(ValueError, match="no state"):
            fresh.load_state_dict({"c": torch.zeros(1)})
    else:
        with pytest.raises(ValueError, match="shapes"):
            fresh.load_state_dict({"c": torch.zeros(1), "c_clients": torch.zeros(1, 1)})


@pytest.mark.parametrize("name", ["fedavg", "fedpvr", "scaffold"])
def test_schema_one_configs_migrate(name):
    with h5py.File(FIXTURES / f"v1_{name}.h5", "r") as f:
        raw = json.loads(f.attrs["config"])
    assert {"mu", "body_momentum"} <= set(raw["train"])
    cfg = RunConfig.from_dict(raw)
    expected = {"fedavg": {}, "scaffold": {}, "fedpvr": {"body_momentum": 0.9}}[name]
    assert dataclasses.asdict(cfg.train.params) == expected
    raw["train"].update(algorithm="fedprox", mu=0.3)
    assert RunConfig.from_dict(raw).train.params.mu == 0.3


def test_momentum_warnings_name_the_combination():
    assert ALGORITHMS.get("scaffold").warnings(TrainConfig(algorithm="scaffold")) == ()
    (w,) = ALGORITHMS.get("scaffold").warnings(TrainConfig(algorithm="scaffold", momentum=0.9))
    assert "SCAFFOLD" in w and "--momentum 0" in w
    (w,) = ALGORITHMS.get("fedpvr").warnings(TrainConfig(algorithm="fedpvr", momentum=0.5))
    assert "head" in w
    assert ALGORITHMS.get("fedpvr").warnings(TrainConfig(algorithm="fedpvr")) == ()
    assert ALGORITHMS.get("fedprox").warnings(TrainConfig(algorithm="fedprox", momentum=0.9)) == ()


def _settings_warnings(record) -> list[str]:
    from driftscope.errors import SettingsWarning

    return [str(w.message) for w in record if issubclass(w.category, SettingsWarning)]


def test_train_warns_about_momentum_with_control_variates(tmp_path, digits, capsys):
    """The library API warns (``warnings.warn``, pointing at the caller's line); the CLI prints
    the same warning once as a ``driftscope: warning:`` line."""
    import warnings

    from driftscope.cli import main
    from driftscope.errors import SettingsWarning

    over = dict(train__rounds=1, train__local_steps=1, train__clients=3, record__enabled=False)
    with pytest.warns(SettingsWarning, match="momentum 0.5 with SCAFFOLD") as record:
        train(small_config(**over, train__algorithm="scaffold", train__momentum=0.5),
              tmp_path / "s.h5", dataset=digits)  # fmt: skip
    assert len(_settings_warnings(record)) == 1
    assert record[0].filename == __file__  # stacklevel: the user's train(...) line
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(small_config(**over, train__algorithm="fedavg", train__momentum=0.9),
              tmp_path / "a.h5", dataset=digits)  # fmt: skip
    assert _settings_warnings(record) == []
    argv = ["run", "--algorithm", "fedpvr", "--momentum", "0.5", "--rounds", "1"]
    argv += ["--local-steps", "1", "--clients", "3", "--no-record", "--quiet"]
    for name in ("c1.h5", "c2.h5"):  # each main() prints it, once
        assert main([*argv, "--out", str(tmp_path / name)]) == 0
        err = capsys.readouterr().err
        assert err.count("driftscope: warning: momentum 0.5 also applies to FedPVR's head") == 1
        assert err.count("warning") == 1, err


def test_algorithm_modules_do_not_import_torch():
    code = (
        "import sys; import driftscope.algorithms, driftscope.config, driftscope.models.registry, "
        "driftscope.data; from driftscope.config import RunConfig; "
        "RunConfig().replace({'train.algorithm': 'fedprox', 'train.params.mu': 0.1}); "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'h5py', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_params_of_another_algorithm_are_refused():
    with pytest.raises(
        ConfigError, match=r"'train.params.mu' is a parameter of fedprox, not of fedavg"
    ):
        RunConfig().replace({"train.params.mu": 0.1})
    with pytest.raises(ConfigError, match="mu must be >= 0"):
        RunConfig().replace({"train.algorithm": "fedprox", "train.params.mu": -1.0})
