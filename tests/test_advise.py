"""``driftscope advise``: the rules on hand-made numbers, the advice's evidence against slow
recomputations from a run's Grams, fedpvr_auto's choice (recorded and by its rule), and one-line
errors for what cannot be advised."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from driftscope import open_run
from driftscope.algorithms.fedpvr_auto import choose_layers
from driftscope.analysis import drift_table
from driftscope.analysis.advise import (
    AS_IS,
    KEEP_LOCAL,
    VARIANCE_REDUCE,
    VARIANCE_SHARE,
    advise,
    fedlama_relaxed,
    fedlama_shares,
    variance_reduced,
)
from driftscope.cli import main
from driftscope.errors import RunFileError
from driftscope.runfile import schema

# float64 sums of the same Gram entries grouped differently: a few unit roundoffs
SAME_SUMS = 1e-9


def test_variance_reduced_takes_the_top_discrepancy_layers_up_to_the_share():
    # by discrepancy: layer 0 (10% of the variance), layer 1 (50%: 60% together), layer 2
    got = variance_reduced(np.array([3.0, 2.0, 1.0]), np.array([10.0, 50.0, 40.0]), 0.5)
    assert got.tolist() == [True, True, False]
    assert variance_reduced(np.array([1.0, 2.0]), np.zeros(2), 0.5).tolist() == [False, False]


def test_fedlama_relaxes_the_low_discrepancy_layers_before_the_cross_point():
    # layer 0: 1% of the variance, half the parameters: delta 0.01 < 1 - lambda 0.5, relaxed;
    # layer 1 is the cross point (delta 1 > 0) and stays: a two-layer model is never wholly relaxed
    assert fedlama_relaxed(np.array([0.01, 1.0]), np.array([100, 100])).tolist() == [True, False]
    delta, rest = fedlama_shares(
        np.array([1.0, 0.01]), np.array([100, 100])
    )  # order: layer 1 first
    np.testing.assert_allclose(delta, [1.0, 1 / 101])
    np.testing.assert_allclose(rest, [0.0, 0.5])
    # a big layer with much of the discrepancy is not relaxed (delta 0.77 > 1 - lambda 0.1)
    got = fedlama_relaxed(np.array([1.0, 2.0, 10.0]), np.array([1000, 100, 10]))
    assert got.tolist() == [False, False, False]
    assert not fedlama_relaxed(np.zeros(3), np.array([1, 2, 3])).any()


def _slow_evidence(g, numel):
    """Pooled variance, alignment and discrepancy of one layer, client by client (uniform)."""
    variance = aligned = orthogonal = 0.0
    for gr in g:
        s = len(gr)
        m_sq = gr.sum() / s**2  # ||mean d||^2
        variance += np.trace(gr) / s - m_sq
        aligned += m_sq
        orthogonal += np.trace(gr) / s**2
    return variance, aligned / orthogonal, variance / (len(g) * numel)


def test_advice_rests_on_the_runs_numbers(make_run):
    with open_run(make_run()) as run:
        advice = advise(run)
        table = advice.table.set_index("layer")
        drift = drift_table(run)
        assert list(advice.table["rank"]) == list(range(1, len(run.layers) + 1))
        assert advice.table["discrepancy"].is_monotonic_decreasing
        variances = {}
        for layer in run.layers:
            row = table.loc[layer.name]
            variance, alignment, discrepancy = _slow_evidence(run.gram(layer.name), layer.numel)
            variances[layer.name] = variance
            assert row["alignment"] == pytest.approx(alignment, rel=SAME_SUMS)
            assert row["discrepancy"] == pytest.approx(discrepancy, rel=SAME_SUMS)
            mine = drift[(drift["layer"] == layer.name) & (drift["metric"] == "layer_discrepancy")]
            assert row["discrepancy"] == pytest.approx(mine["value"].mean(), rel=SAME_SUMS)
            angle = drift[
                (drift["layer"] == layer.name) & (drift["metric"] == "angular_divergence")
            ]
            assert row["angular_divergence"] == pytest.approx(angle["value"].mean(), rel=SAME_SUMS)
            # the rules, first match wins
            if alignment <= 1 and alignment < advice.model_alignment:
                assert row["action"] == "keep local" and row["recommendation"] == KEEP_LOCAL
        names = [ly.name for ly in run.layers]
        v = np.array([variances[n] for n in names])
        d = table.loc[names, "discrepancy"].to_numpy()
        a = table.loc[names, "alignment"].to_numpy()
        conflict = (a <= 1) & (a < advice.model_alignment)
        # the whole model's alignment: the layers' sums pooled (Grams of concatenated updates add)
        grams = sum(run.gram(n) for n in names)
        assert advice.model_alignment == pytest.approx(_slow_evidence(grams, 1)[1], rel=SAME_SUMS)
        reduce = variance_reduced(d, v, VARIANCE_SHARE) & ~conflict
        got = table.loc[names, "recommendation"].to_numpy()
        assert ((got == VARIANCE_REDUCE) == reduce).all()
        assert set(got) <= {AS_IS, VARIANCE_REDUCE, KEEP_LOCAL}
        # fedpvr_auto's rule on the same Grams, by hand: variance over its 5-round warm-up
        window = run.rounds < 5
        warm = [
            sum(_slow_evidence(run.gram(n)[window][[k]], 1)[0] for k in range(window.sum()))
            for n in names
        ]
        assert advice.fedpvr.source == "rule"
        np.testing.assert_array_equal(
            advice.fedpvr.chosen, choose_layers(np.array(warm), 0.5, "top")
        )
        assert table.loc[names, "fedpvr_auto"].tolist() == advice.fedpvr.chosen.tolist()


def test_a_fedpvr_auto_run_is_compared_with_its_recorded_choice(make_run, tmp_path):
    path = make_run(
        "fedpvr_auto",
        train__algorithm="fedpvr_auto",
        train__params__warmup_rounds=1,
        record__probe_size=0,
    )
    with open_run(path) as run:
        advice = advise(run)
        recorded = run.algorithm_record("chosen_layers").to_numpy().astype(bool)[-1]
    assert advice.fedpvr.source == "recorded"
    np.testing.assert_array_equal(advice.fedpvr.chosen, recorded)
    # a fedpvr_auto file without its recorded choice: the rule stands in, and the advice says so
    older = tmp_path / "auto-older.h5"
    shutil.copy(path, older)
    with h5py.File(older, "r+") as f:
        del f[schema.algorithm_record_path("chosen_layers")]
    with open_run(older) as run:
        advice = advise(run)
    assert advice.fedpvr.source == "rule"
    assert any("no recorded choice" in note for note in advice.notes)


def test_cli_prints_the_ranking_the_rules_and_the_comparison(make_run, tmp_path, capsys):
    csv = tmp_path / "advice.csv"
    assert main(["advise", str(make_run()), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    for label in ("conv1", "conv4", "fc1", "fc3"):
        assert f" {label} " in out
    assert "fedpvr_auto's rule on this run's numbers" in out
    assert "variance-reduce" in out and "rules (first match" in out
    import pandas as pd

    assert len(pd.read_csv(csv)) == 7


def test_what_cannot_be_advised_is_said_in_one_line(make_run, tmp_path, capsys):
    path = make_run()
    older = tmp_path / "older.h5"
    shutil.copy(path, older)
    with h5py.File(older, "r+") as f:
        del f[schema.GLOBAL_WEIGHTS]
    assert main(["advise", str(older)]) == 0
    out = capsys.readouterr().out
    assert "'aggregate less often' (FedLAMA's low-discrepancy layers) cannot be assessed" in out
    with open_run(older) as run:
        assert np.isnan(advise(run).table["angular_divergence"]).all()

    bare = make_run("norecord", record__enabled=False)
    with open_run(bare) as run, pytest.raises(RunFileError, match="no per-layer records"):
        advise(run)
    text = tmp_path / "x.h5"
    text.write_text("not a run")
    for args in (
        [str(bare)],
        [str(text)],
        [str(path), "--from-round", "99"],
        [str(path), "--from-round", "-1"],
    ):
        assert main(["advise", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("driftscope: error:") and "\n" not in err, args


def test_advise_runs_on_an_mnist1d_run(tmp_path, capsys):
    """Any model's layers: the 1-D CNN on MNIST-1D (3 clients, 2 rounds)."""
    from driftscope import RunConfig, train

    cfg = RunConfig().replace(
        {
            "data.dataset": "mnist1d",
            "data.data_dir": str(tmp_path / "cache"),
            "model.name": "cnn1d",
            "train.clients": 3,
            "train.rounds": 2,
            "train.local_steps": 3,
            "record.probe_size": 0,
        }
    )
    path = train(cfg, tmp_path / "m1d.h5")
    assert main(["advise", str(path)]) == 0
    out = capsys.readouterr().out
    with open_run(path) as run:
        table = advise(run).table
        assert sorted(table["layer"]) == sorted(ly.name for ly in run.layers)
        for layer in run.layers:
            assert f" {layer.label} " in out
    assert set(table["recommendation"]) <= {AS_IS, VARIANCE_REDUCE, KEEP_LOCAL}
    assert np.isfinite(table["angular_divergence"]).all()


def test_client_size_weights_enter_every_pooled_number(make_run):
    path = make_run("samples", train__weighting="samples", record__probe_size=0)
    with open_run(path) as run:
        advice = advise(run).table.set_index("layer")
        sizes = np.asarray(run.client_sizes, dtype=np.float64)
        drift = drift_table(run)
        for layer in run.layers:
            aligned = orthogonal = variance = 0.0
            for g, clients in zip(run.gram(layer.name), run.participants):
                p = sizes[clients] / sizes[clients].sum()
                m_sq = sum(p[i] * p[j] * g[i, j] for i in range(len(p)) for j in range(len(p)))
                aligned += m_sq
                orthogonal += sum(p[i] ** 2 * g[i, i] for i in range(len(p)))
                variance += sum(p[i] * g[i, i] for i in range(len(p))) - m_sq
            row = advice.loc[layer.name]
            assert row["alignment"] == pytest.approx(aligned / orthogonal, rel=SAME_SUMS)
            d = variance / (len(run.rounds) * layer.numel)
            assert row["discrepancy"] == pytest.approx(d, rel=SAME_SUMS)
            mine = drift[(drift["layer"] == layer.name) & (drift["metric"] == "layer_discrepancy")]
            assert d == pytest.approx(mine["value"].mean(), rel=SAME_SUMS)


def test_a_layer_whose_global_weights_start_at_zero_has_an_angle_from_its_defined_rounds(
    tmp_path, digits
):
    # like a LoRA B factor: a layer initialised at zero has no L-DAWA cosine in round 0
    # (||w_g|| = 0); the advice's angle is the mean over the rounds where it is defined, the
    # value drift_table's per-round rows give when their NaN is skipped
    from driftscope import train
    from driftscope.models.registry import build_model

    def zero_last_layer():
        model = build_model("mlp", (1, 8, 8), 10)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        return model

    from conftest import small_config

    path = train(small_config(), tmp_path / "zero.h5", model=zero_last_layer, dataset=digits)
    with open_run(path) as run:
        last = run.layers[-1].name
        drift = drift_table(run)
        rows = drift[(drift["layer"] == last) & (drift["metric"] == "angular_divergence")]
        values = rows.sort_values("round")["value"].to_numpy()
        assert np.isnan(values[0]) and np.isfinite(values[1:]).all()
        got = advise(run).table.set_index("layer").loc[last, "angular_divergence"]
        assert got == pytest.approx(values[1:].mean(), rel=SAME_SUMS)
