"""Label attribution tables over run files, checked against the stored updates by hand."""

import numpy as np
import pytest

from driftscope import open_run
from driftscope.analysis.attribution import (
    ALIGNMENT_METRICS,
    CLASS_METRICS,
    class_variance_table,
    label_alignment_summary,
    label_alignment_table,
    output_layer,
)
from driftscope.analysis.tables import drift_table
from driftscope.errors import RunFileError
from driftscope.metrics import attribution as at


@pytest.fixture(scope="module")
def partial(make_run):
    """Half of the 10 clients per round, so row order must follow run.participants."""
    return make_run("attribution_partial", train__client_fraction=0.5)


def test_alignment_table_matches_updates_by_hand(partial):
    with open_run(partial) as run:
        table = label_alignment_table(run, permutations=200, seed=1)
        assert list(table.columns) == ["round", "layer", "label", "group", "metric", "value"]
        assert len(table) == len(run.rounds) * len(run.layers) * len(ALIGNMENT_METRICS)
        hist = run.label_histogram.to_numpy()
        for layer in (run.layers[0], run.layers[-1]):
            for r in run.update_rounds:
                u = np.concatenate(
                    [run.updates(p, int(r)).reshape(5, -1) for p in layer.params], axis=1
                ).astype(np.float64)
                clients = run.participants[int(np.flatnonzero(run.rounds == r)[0])]
                want = at.label_alignment(u @ u.T, hist[clients], permutations=200, seed=1)
                got = table[(table["layer"] == layer.name) & (table["round"] == r)]
                got = got.set_index("metric")["value"]
                assert got["label_alignment"] == pytest.approx(want.statistic, abs=1e-6)
                assert want.exact and want.permutations == 120  # 5 clients: all 5! relabellings
                assert got["label_alignment_p"] == pytest.approx(want.p_value)
                assert 0 < got["label_alignment_p"] <= 1


def test_class_variance_sums_to_the_layer_variance(partial):
    with open_run(partial) as run:
        table = class_variance_table(run)
        assert list(table.columns) == ["round", "layer", "label", "class", "metric", "value"]
        assert set(table["metric"]) == set(CLASS_METRICS)
        layer, weight, bias = output_layer(run)
        assert weight == layer.params[0]
        assert layer.name == run.layers[-1].name and bias is not None
        k = run.label_histogram.shape[1]
        per_class = table[table["metric"] == "class_variance"].pivot(
            index="round", columns="class", values="value"
        )
        assert per_class.shape == (len(run.update_rounds), k)
        drift = drift_table(run)
        layer_var = drift[(drift["layer"] == layer.name) & (drift["metric"] == "update_variance")]
        layer_var = layer_var.set_index("round")["value"].loc[per_class.index]
        np.testing.assert_allclose(per_class.sum(axis=1), layer_var, rtol=1e-5)
        share = table[table["metric"] == "class_variance_share"].groupby("round")["value"].sum()
        np.testing.assert_allclose(share, 1.0)
        # label spread by hand for the first stored round
        r = int(run.update_rounds[0])
        clients = run.participants[int(np.flatnonzero(run.rounds == r)[0])]
        hist = run.label_histogram.to_numpy()[clients].astype(float)
        shares = hist / hist.sum(axis=1, keepdims=True)
        spread = table[(table["metric"] == "label_share_variance") & (table["round"] == r)]
        np.testing.assert_allclose(spread["value"], shares.var(axis=0))


def test_summary_and_errors(make_run):
    with open_run(make_run("fedavg")) as run:
        summary = label_alignment_summary(run, permutations=20)
        assert list(summary["label"]) == [ly.label for ly in run.layers]
        assert summary["significant_share"].between(0, 1).all()
        assert summary["label_alignment_cumulative"].notna().all()  # every client, every round
        assert summary["label_alignment_median"].between(-1, 1).all()
        with pytest.raises(RunFileError, match="not a classifier output layer"):
            output_layer(run, run.layers[0].label)
