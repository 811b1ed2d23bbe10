"""FedPVR with a drift-chosen head (``fedpvr_auto``) against the algorithms it reduces to, the layer
rule against a slow obvious version, and its accounting and state against the selection."""

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import small_config
from torch import nn

from driftscope.algorithms import build_algorithm
from driftscope.algorithms.fedpvr_auto import FedPVRAutoParams, choose_layers
from driftscope.config import RunConfig
from driftscope.engine.inprocess import Simulator
from driftscope.errors import ConfigError
from driftscope.metrics import drift
from driftscope.metrics.gram import update_gram
from driftscope.models.registry import model_layout


def auto(**params):
    return {
        "train__algorithm": "fedpvr_auto",
        **{f"train__params__{k}": v for k, v in params.items()},
    }


def trajectory(digits, rounds=3, **overrides):
    """Global parameters after each round, and the simulator."""
    sim = Simulator(small_config(train__rounds=rounds, record__enabled=False, **overrides), digits)
    out = []
    for _ in range(rounds):
        sim.run_round()
        out.append(sim.global_params.clone())
    return out, sim


def test_warmup_rounds_are_fedavg_then_the_choice_differs(digits):
    fedavg, _ = trajectory(digits, rounds=4, train__algorithm="fedavg")
    mine, sim = trajectory(digits, rounds=4, **auto(warmup_rounds=2, body_momentum=None))
    assert torch.equal(mine[0], fedavg[0]) and torch.equal(mine[1], fedavg[1])
    assert sim.algorithm.chosen.any()  # the default share chose something ...
    # ... whose control variates start at zero (round 2 is FedAvg's too, as SCAFFOLD's first
    # round is) and correct from round 3 on
    assert torch.equal(mine[2], fedavg[2])
    assert not torch.equal(mine[3], fedavg[3])


def test_warmup_uses_body_momentum_everywhere(digits):
    fedavg, _ = trajectory(digits, rounds=2, train__algorithm="fedavg", train__momentum=0.9)
    mine, _ = trajectory(digits, rounds=2, **auto(warmup_rounds=2, body_momentum=0.9))
    assert torch.equal(mine[1], fedavg[1])


def test_share_zero_is_fedavg(digits):
    fedavg, _ = trajectory(digits, train__algorithm="fedavg")
    mine, sim = trajectory(
        digits, **auto(warmup_rounds=1, variance_share=0.0, rechoose_every=1, body_momentum=None)
    )
    assert not sim.algorithm.chosen.any()
    assert torch.equal(mine[-1], fedavg[-1])


def test_share_one_without_momentum_is_scaffold_after_warmup(digits):
    mine, sim = trajectory(
        digits, rounds=3, **auto(warmup_rounds=1, variance_share=1.0, body_momentum=None)
    )
    assert sim.algorithm.chosen.all()
    # SCAFFOLD started, with fresh control variates, from the warm-up's model at round 1
    ref = Simulator(
        small_config(train__rounds=3, record__enabled=False, train__algorithm="scaffold"), digits
    )
    fedavg, _ = trajectory(digits, rounds=1, train__algorithm="fedavg")
    ref.global_params = fedavg[0].clone()
    ref.round = 1
    ref.run_round()
    ref.run_round()
    assert torch.equal(mine[0], fedavg[0])
    assert torch.equal(mine[2], ref.global_params)


def test_communication_follows_the_selection(digits):
    sim = Simulator(
        small_config(record__enabled=False, **auto(warmup_rounds=1, variance_share=0.5)), digits
    )
    numel = sim.layout.numel
    first = sim.run_round()
    assert (first.downlink_bytes, first.uplink_bytes) == (4 * numel * 10, 4 * numel * 10)
    second = sim.run_round()
    algo = sim.algorithm
    chosen = sum(layer.numel for layer, c in zip(sim.layout.layers, algo.chosen, strict=True) if c)
    assert 0 < chosen < numel
    assert algo.values_per_client() == (numel + chosen, numel + chosen)
    assert second.uplink_bytes == second.downlink_bytes == 4 * (numel + chosen) * 10
    assert algo.c.numel() == chosen and algo.client_row(0).shape == (chosen,)
    assert algo.c_clients.shape == (10, numel)  # the table is full width
    # the chosen layers are a top block with the default order, and carry momentum 0
    idx = np.flatnonzero(algo.chosen)
    assert idx[-1] == len(algo.chosen) - 1 and np.all(np.diff(idx) == 1)
    record = algo.round_record()
    assert record["chosen_layers"].dtype == np.uint8
    assert np.array_equal(record["chosen_layers"].astype(bool), algo.chosen)


# ------------------------------------------------------------------ the rule


def slow_choice(v, share, order):
    """Try every candidate set in order of size; the first holding the share wins."""
    v = np.asarray(v, float)
    n = len(v)
    ranked = list(range(n))[::-1] if order == "top" else sorted(range(n), key=lambda i: -v[i])
    if share <= 0:
        return set()
    if share >= 1:
        return set(range(n))
    for k in range(1, n + 1):
        if sum(v[i] for i in ranked[:k]) >= share * v.sum():
            return set(ranked[:k])
    return set(range(n))


@pytest.mark.parametrize("order", ["top", "variance"])
def test_choose_layers_against_the_slow_rule(order):
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.exponential(size=int(rng.integers(1, 8)))
        share = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0, rng.random()]))
        got = set(np.flatnonzero(choose_layers(v, share, order)))
        assert got == slow_choice(v, share, order)


def test_choose_layers_hand_cases():
    v = np.array([1.0, 6.0, 2.0, 1.0])  # input first; total 10
    assert list(choose_layers(v, 0.1, "top")) == [False, False, False, True]
    assert list(choose_layers(v, 0.3, "top")) == [False, False, True, True]
    assert list(choose_layers(v, 0.5, "top")) == [False, True, True, True]
    assert list(choose_layers(v, 0.5, "variance")) == [False, True, False, False]
    assert not choose_layers(np.zeros(3), 0.5).any()


def tiny_algorithm(**params):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    layout = model_layout(model)
    cfg = RunConfig().replace(
        {"train.algorithm": "fedpvr_auto", **{f"train.params.{k}": v for k, v in params.items()}}
    )
    return build_algorithm(cfg.train, layout, 5), layout


def feed_round(algo, layout, noisy_layer, rng, clients=5):
    """One round where every client's update is the same except on ``noisy_layer``."""
    x = torch.zeros(layout.numel)
    common = torch.from_numpy(rng.normal(size=layout.numel)).float() * 0.1
    updates = []
    for i in range(clients):
        algo.begin_client(i, x)
        u = common.clone()
        for p in layout.params:
            if p.layer == noisy_layer:
                u[p.offset : p.offset + p.numel] = torch.from_numpy(
                    rng.normal(size=p.numel)
                ).float()
        updates.append(u)
        algo.end_client(i, x, x + u, steps=1)
    algo.server_update(x, torch.stack(updates).mean(0), [None] * clients)
    return torch.stack(updates)


@pytest.mark.parametrize("noisy", ["0", "1", "2"])
def test_the_layer_whose_updates_disagree_is_chosen(noisy):
    rng = np.random.default_rng(1)
    algo, layout = tiny_algorithm(warmup_rounds=2, variance_share=0.5, layer_order="variance")
    for _ in range(2):
        updates = feed_round(algo, layout, noisy, rng)
    # the measured variance matches driftscope's drift math on the update Gram (uniform weights)
    for i, layer in enumerate(layout.layers):
        cols = torch.cat(
            [
                updates[:, p.offset : p.offset + p.numel]
                for p in layout.params
                if p.layer == layer.name
            ],
            dim=1,
        )
        expected = drift.update_variance(update_gram(cols.numpy()))
        assert algo.last_variance[i] == pytest.approx(float(expected), rel=1e-9)
    algo.begin_client(0, torch.zeros(layout.numel))  # the choice applies from the next round
    names = [layer.name for layer, c in zip(layout.layers, algo.chosen, strict=True) if c]
    assert names == [noisy]
    # from the top down, the set reaches down to the disagreeing layer
    top, _ = tiny_algorithm(warmup_rounds=2, variance_share=0.5, layer_order="top")
    rng = np.random.default_rng(1)
    for _ in range(2):
        feed_round(top, layout, noisy, rng)
    top.begin_client(0, torch.zeros(layout.numel))
    names = [layer.name for layer, c in zip(layout.layers, top.chosen, strict=True) if c]
    assert names == [layer.name for layer in layout.layers][int(noisy) :]


def test_rechoosing_keeps_the_control_variates_of_layers_that_stay():
    algo, layout = tiny_algorithm(warmup_rounds=1, variance_share=0.5, layer_order="variance")
    algo._apply(np.array([False, True, True]))
    algo.c.copy_(torch.arange(algo.c.numel()).float() + 1)
    for client in range(5):
        algo.set_client_row(client, algo.c * (client + 1))
    kept = torch.cat([algo.c[: layout.layers[1].numel]])  # layer 1 comes first in c
    algo._apply(np.array([True, True, False]))
    n0, n1 = layout.layers[0].numel, layout.layers[1].numel
    assert algo.c.numel() == n0 + n1
    assert torch.equal(algo.c[:n0], torch.zeros(n0))  # newly chosen: zero
    assert torch.equal(algo.c[n0:], kept)  # kept
    for client in range(5):
        row = algo.client_row(client)
        assert torch.equal(row, torch.cat([torch.zeros(n0), kept * (client + 1)]))
    # the client table is full width: zeros outside the chosen layers (the dropped layer 2 too)
    assert algo.c_clients.shape == (5, layout.numel)
    assert torch.equal(algo.c_clients[:, n0 + n1 :], torch.zeros(5, layout.numel - n0 - n1))
    assert algo.values_per_client() == (layout.numel + n0 + n1,) * 2
    norms = algo.state_norms()
    assert set(norms) == {p.name for p in layout.params}  # same names whatever the choice


def test_state_dict_resumes_mid_run(digits):
    over = auto(warmup_rounds=1, variance_share=0.5, rechoose_every=2)
    full, _ = trajectory(digits, rounds=4, **over)
    _, sim = trajectory(digits, rounds=2, **over)
    state = sim.algorithm.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    again = Simulator(small_config(train__rounds=4, record__enabled=False, **over), digits)
    assert {k: tuple(v.shape) for k, v in again.algorithm.state_dict().items()} == shapes
    again.algorithm.load_state_dict({k: v.clone() for k, v in state.items()})
    again.global_params = sim.global_params.clone()
    again.round = 2
    again.run_round()
    again.run_round()
    assert torch.equal(again.global_params, full[-1])


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"warmup_rounds": 0}, "warmup_rounds"),
        ({"variance_share": 1.5}, "variance_share"),
        ({"layer_order": "bottom"}, "layer_order"),
        ({"rechoose_every": -1}, "rechoose_every"),
        ({"body_momentum": 1.0}, "body_momentum"),
    ],
)
def test_params_are_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        FedPVRAutoParams(**bad)


# ------------------------------------------------------------------ run file, inspect, figure


def test_the_choice_is_in_the_run_file_inspect_and_a_figure(tmp_path, digits):
    from driftscope import open_run, train
    from driftscope.experiments.report import format_inspect
    from driftscope.figures import chosen_layers_map, write_figures

    cfg = small_config(
        train__rounds=4,
        record__enabled=False,
        **auto(warmup_rounds=2, variance_share=0.5, rechoose_every=1),
    )
    path = train(cfg, tmp_path / "auto.h5", dataset=digits)
    with open_run(path) as run:
        assert set(run.algorithm_record_keys) == {"chosen_layers", "layer_variance"}
        chosen = run.algorithm_record("chosen_layers")
        assert list(chosen.index) == [0, 1, 2, 3]
        assert list(chosen.columns) == [layer.label for layer in run.layers]
        assert not chosen.loc[[0, 1]].to_numpy().any() and chosen.loc[2].any()
        # the traffic of every round follows that round's recorded choice
        numel = np.array([layer.numel for layer in run.layers])
        per_client = numel.sum() + chosen.to_numpy().astype(bool) @ numel
        m = run.metrics
        assert np.array_equal(m["downlink_bytes"], 4 * 10 * per_client)
        assert np.array_equal(m["uplink_bytes"], 4 * 10 * per_client)
        variance = run.algorithm_record("layer_variance")
        assert (variance.to_numpy() > 0).all()
        text = format_inspect(run)
        assert "layers with control variates" in text and "rounds 0-1       none" in text
        ax = chosen_layers_map(run)
        dots = ax.collections[1].get_offsets()
        assert len(dots) == int(chosen.to_numpy().sum())
        written = write_figures([run], tmp_path / "figures")
        assert tmp_path / "figures" / "chosen_layers.png" in written
    with open_run(make_fedavg(tmp_path, digits)) as run:
        assert run.algorithm_record_keys == ()
        assert "layers with control variates" not in format_inspect(run)


def make_fedavg(tmp_path, digits):
    from driftscope import train

    cfg = small_config(train__rounds=1, record__enabled=False)
    return train(cfg, tmp_path / "fedavg.h5", dataset=digits)


def test_cli_runs_it_with_its_flags(tmp_path, capsys):
    from driftscope import open_run
    from driftscope.cli import main

    out = tmp_path / "cli.h5"
    argv = ["run", "--algorithm", "fedpvr_auto", "--rounds", "2", "--local-epochs", "1"]
    argv += ["--warmup-rounds", "1", "--variance-share", "1", "--layer-order", "variance"]
    assert main([*argv, "--no-record", "--out", str(out)]) == 0
    with open_run(out) as run:
        assert run.algorithm_record("chosen_layers").loc[1].all()
    assert main(["inspect", str(out)]) == 0
    assert "rounds 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:  # argparse names the choices
        main([*argv[:3], "--layer-order", "bottom", "--out", str(tmp_path / "y.h5")])
    assert exit.value.code == 2
    assert "invalid choice: 'bottom'" in capsys.readouterr().err


# ------------------------------------------------------------------ client state within a budget

STATE = dict(
    train__rounds=5,
    train__clients=6,
    train__client_fraction=0.5,
    train__local_steps=2,
    **auto(warmup_rounds=1, rechoose_every=2, layer_order="variance"),  # layers dropped, kept, new
)


def _scratch_budget(cfg, numel):
    """Holds one round with every layer chosen, (S + 3) x P x 4 bytes, but not the N x P table."""
    return (cfg.train.clients_per_round + 3 + 1) * numel * 4 / 2**20


def test_scratch_file_client_state_equals_in_memory(digits):
    cfg = small_config(**STATE, record__enabled=False)
    a = Simulator(cfg, digits)
    numel = a.layout.numel
    b = Simulator(cfg.replace({"train.state_budget_mb": _scratch_budget(cfg, numel)}), digits)
    assert a.algorithm.in_memory and not b.algorithm.in_memory
    chosen = []
    for _ in range(cfg.train.rounds):
        a.run_round()
        b.run_round()
        chosen.append(b.algorithm.chosen.copy())
        assert np.array_equal(a.algorithm.chosen, b.algorithm.chosen)
        assert torch.equal(a.global_params, b.global_params)
        assert torch.equal(a.algorithm.c, b.algorithm.c)
        assert torch.equal(a.algorithm.c_clients, b.algorithm.c_clients)
        # zeros outside the chosen layers
        outside = ~a.algorithm.layer_mask(a.algorithm.chosen)
        assert not a.algorithm.c_clients[:, outside].any()
        # the kept per-client norms equal norms recomputed over the table
        for name, norms in b.algorithm.state_norms().items():
            p = b.layout.param(name)
            want = a.algorithm.c_clients[:, p.offset : p.offset + p.numel].norm(dim=1)
            torch.testing.assert_close(norms[1:], want, rtol=1e-6, atol=1e-7)
    # the choice changed with layers kept and layers dropped, and control variates were learned
    assert any((x & ~y).any() for x, y in itertools.pairwise(chosen)), chosen
    assert b.algorithm.c_clients.abs().sum() > 0
    state = b.algorithm.state_dict()
    assert state["c_clients"].shape == (6, numel) and state["c"].shape == (numel,)


def test_scratch_file_run_resumes_bit_for_bit(tmp_path, digits):
    """Interrupted after a change of choice and resumed with the client table in the scratch
    file: the same file (metrics, records, both state slots) as the in-memory run left alone."""
    from test_resume import contents

    from driftscope import train
    from driftscope.engine.events import Hook
    from driftscope.engine.training import resume

    class StopAt(Hook):
        def on_round_start(self, event):
            if event.round == 3:
                raise KeyboardInterrupt

    cfg = small_config(**STATE, record__probe_size=16)
    whole = train(cfg, tmp_path / "whole.h5", dataset=digits)
    numel = Simulator(cfg, digits).layout.numel
    scratch = cfg.replace({"train.state_budget_mb": _scratch_budget(cfg, numel)})
    path = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        train(scratch, path, dataset=digits, hooks=[StopAt()])
    resume(path, dataset=digits)
    got, want = contents(path), contents(whole)
    assert "state/algorithm/c_clients" in got and got.pop("@config") != want.pop("@config")
    # the configs differ in state_budget_mb, so do their checksums; every other checksum is equal
    sums_got, sums_want = (json.loads(str(d.pop("@static_crc32"))) for d in (got, want))
    assert sums_got.pop("config") != sums_want.pop("config") and sums_got == sums_want
    assert sorted(got) == sorted(want)
    for key, value in got.items():
        assert np.array_equal(value, want[key], equal_nan=np.asarray(value).dtype.kind == "f"), key


def test_a_budget_below_one_round_with_every_layer_is_one_line(digits):
    cfg = small_config(**STATE)
    numel = Simulator(cfg.replace({"train.algorithm": "fedavg"}), digits).layout.numel
    tight = _scratch_budget(cfg, numel) / 2  # no layer is chosen yet, but any may be
    with pytest.raises(ConfigError) as err:
        Simulator(cfg.replace({"train.state_budget_mb": tight}), digits)
    message = str(err.value)
    assert "\n" not in message and f"{numel} values" in message and "--state-budget-mb" in message
