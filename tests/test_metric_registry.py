"""The METRICS registry: adding a metric is one function plus one record, and tables, summaries
and figures pick it up without further changes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from driftscope import open_run
from driftscope.analysis import drift_table, layer_summary
from driftscope.errors import ConfigError
from driftscope.experiments.report import format_summary
from driftscope.figures import layer_profile, write_figures
from driftscope.metrics import METRICS, Metric, register_metric

TOY = "max_client_sq_norm"


def max_client_sq_norm(G, numel, weights):
    """Largest squared client update norm: max_i G_ii; (...)."""
    return np.diagonal(G, axis1=-2, axis2=-1).max(axis=-1)


@pytest.fixture
def toy_metric():
    metric = register_metric(
        Metric(
            TOY,
            "largest $\\|d_i\\|^2$",
            "log",
            "gram",
            max_client_sq_norm,
            "toy metric",
            headline=True,  # shown by analyze and drawn by write_figures
        )
    )
    yield metric
    METRICS.unregister(TOY)


def test_a_registered_metric_reaches_tables_and_figures(toy_metric, make_run, tmp_path):
    with open_run(make_run()) as run:
        table = drift_table(run)
        rows = table[table["metric"] == TOY]
        assert len(rows) == len(run.rounds) * len(run.layers)
        for layer in run.layers:
            got = rows[rows["layer"] == layer.name]["value"].to_numpy()
            grams = run.gram(layer.name)
            expected = [max(np.diag(g)) for g in grams]  # the slow way
            np.testing.assert_allclose(got, expected)
        summary = layer_summary(run).set_index("layer")
        for layer in run.layers:  # not a ratio: its summary is the mean over rounds
            expected = np.mean([max(np.diag(g)) for g in run.gram(layer.name)])
            assert summary.loc[layer.name, TOY] == pytest.approx(expected)
        ax = layer_profile(run, TOY)
        assert ax.get_ylabel() == "largest $\\|d_i\\|^2$"
        assert ax.get_yscale() == "log"  # the record's scale
        plt.close(ax.figure)
        assert TOY in format_summary(run, layer_summary(run)).splitlines()[3]  # analyze's header
        written = write_figures([run], tmp_path)
        assert tmp_path / f"layer_profile_{TOY}.png" in written


def test_registry_rejects_duplicates_and_suggests_names():
    with pytest.raises(ValueError, match="already registered"):
        register_metric(METRICS.get("cka"))
    with pytest.raises(ConfigError, match="did you mean 'drift_diversity'"):
        METRICS.get("drift_diversty")
    with pytest.raises(ValueError, match="scale"):
        Metric("x", "x", "squared", "gram", max_client_sq_norm, "")


def test_ratio_metrics_are_their_parts_ratio():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 4, 20))
    g = d @ np.swapaxes(d, -1, -2)
    for name in METRICS:
        m = METRICS.get(name)
        if m.ratio is None:
            continue
        num, den = (f(g, 20, None) for f in m.ratio)
        np.testing.assert_allclose(m.function(g, 20, None), num / den, rtol=1e-12)
