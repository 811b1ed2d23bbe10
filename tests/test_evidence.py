"""What analyze and reproduce print as evidence: measures that are not functions of one another,
the per-round spread beside the pooled ratio, and the ratio parts that analyze --csv writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftscope.analysis.evidence import depth_trend, head_vs_body
from driftscope.analysis.tables import drift_table, layer_summary
from driftscope.cli import main
from driftscope.metrics import METRICS, headline_metrics
from driftscope.metrics.drift import relative_variance
from driftscope.runfile.reader import open_run


@pytest.fixture(scope="module")
def run_path(make_run):
    # 6 rounds of 4 clients, so that a warm-up and quartiles over rounds mean something
    return make_run("evidence", train__rounds=6, train__clients=4, train__local_steps=4)


@pytest.mark.kernels
def test_drift_diversity_is_one_plus_relative_variance_over_s_under_uniform_weights(run_path):
    """The relation that makes drift diversity no second piece of evidence, on a real run: per
    round and layer, and pooled over rounds (a ratio of sums of the same parts). Float64 sums of
    the same Gram entries in another order: 1e-10 relative."""
    with open_run(run_path) as run:
        assert run.config.train.weighting == "uniform"
        s = run.clients_per_round
        t = drift_table(run).pivot_table(index=["round", "layer"], columns="metric", values="value")
        np.testing.assert_allclose(
            t["drift_diversity"], (1 + t["relative_variance"]) / s, rtol=1e-10
        )
        summary = layer_summary(run)
    np.testing.assert_allclose(
        summary["drift_diversity"], (1 + summary["relative_variance"]) / s, rtol=1e-10
    )
    # so neither analyze nor reproduce prints both as evidence
    assert "drift_diversity" not in headline_metrics()
    assert {"relative_variance", "mean_pairwise_cosine", "cka"} <= set(headline_metrics())


@pytest.mark.kernels
def test_csv_ratio_parts_pool_to_layer_summary(run_path, tmp_path, capsys):
    """Pool analyze --csv's numerator and denominator columns over rounds: layer_summary's value
    (the same float64 numbers summed in the same order: 1e-12 relative)."""
    csv = tmp_path / "t.csv"
    assert main(["analyze", str(run_path), "--csv", str(csv)]) == 0
    capsys.readouterr()
    table = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    ratios = [name for name in METRICS if METRICS.get(name).ratio is not None]
    assert {"relative_variance", "drift_diversity"} <= set(ratios)
    rv = table[table.metric == "relative_variance"]
    assert set(rv.numerator_name) == {"update_variance"}
    assert set(rv.denominator_name) == {"mean_update_sq_norm"}
    # the named numerator is the metric of that name, row for row
    v = table[table.metric == "update_variance"].set_index(["round", "layer"])["value"]
    np.testing.assert_allclose(rv.set_index(["round", "layer"])["numerator"], v, rtol=1e-12)
    assert table[~table.metric.isin(ratios)][["numerator", "denominator"]].isna().all().all()
    sums = table[table.metric.isin(ratios)].groupby(["metric", "layer"])[
        ["numerator", "denominator"]
    ]
    pooled = (sums.sum()["numerator"] / sums.sum()["denominator"]).unstack("metric")
    with open_run(run_path) as run:
        summary = layer_summary(run).set_index("layer")
    for metric in ratios:
        np.testing.assert_allclose(pooled.loc[summary.index, metric], summary[metric], rtol=1e-12)


@pytest.mark.kernels
def test_head_vs_body_against_a_loop_over_rounds_and_layers(run_path):
    """Every number of head_vs_body recomputed the obvious way from the stored Gram matrices."""
    warmup = 2
    with open_run(run_path) as run:
        ev = head_vs_body(run, warmup=warmup).set_index("metric")
        heads = [ly for ly in run.layers if ly.group == "head"]
        bodies = [ly for ly in run.layers if ly.group == "body"]
        grams = {ly.name: run.gram(ly.name).astype(np.float64) for ly in run.layers}
        rounds = list(run.rounds)
        t = drift_table(run)
    # relative variance: ratio of group means, per round and pooled (ratio of sums per layer)
    per_round = []
    for k in range(len(rounds)):
        h = np.mean([relative_variance(grams[ly.name][k]) for ly in heads])
        b = np.mean([relative_variance(grams[ly.name][k]) for ly in bodies])
        per_round.append(h / b)

    def pooled(first: int) -> float:
        def layer(ly):
            from driftscope.metrics.drift import mean_update_sq_norm, update_variance

            ks = [k for k, r in enumerate(rounds) if r >= first]
            num = sum(float(update_variance(grams[ly.name][k])) for k in ks)
            return num / sum(float(mean_update_sq_norm(grams[ly.name][k])) for k in ks)

        return np.mean([layer(ly) for ly in heads]) / np.mean([layer(ly) for ly in bodies])

    row = ev.loc["relative_variance"]
    assert row.comparison == "head/body" and row.rounds == len(rounds) and row.warmup == warmup
    assert row["median"] == pytest.approx(np.median(per_round), rel=1e-12)
    assert row.q25 == pytest.approx(np.quantile(per_round, 0.25), rel=1e-12)
    assert row.q75 == pytest.approx(np.quantile(per_round, 0.75), rel=1e-12)
    assert row.head_beyond == sum(r > 1 for r in per_round)
    assert row.pooled == pytest.approx(pooled(0), rel=1e-12)
    assert row.pooled_after_warmup == pytest.approx(pooled(warmup), rel=1e-12)
    # alignment measures: body - head of group means, pooled as the mean over rounds
    for metric in ("mean_pairwise_cosine", "cka"):
        m = t[t.metric == metric]
        by_round = m.groupby(["round", "group"])["value"].mean().unstack("group")
        diff = by_round["body"] - by_round["head"]
        row = ev.loc[metric]
        assert row.comparison == "body - head"
        assert row["median"] == pytest.approx(diff.median(), rel=1e-12)
        assert row.head_beyond == (diff > 0).sum()
        layer_means = m.groupby(["layer", "group"])["value"].mean().groupby("group").mean()
        assert row.pooled == pytest.approx(layer_means["body"] - layer_means["head"], rel=1e-12)


def test_depth_trend_is_spearman_with_depth():
    assert depth_trend([1.0, 2.0, 3.5, 9.0]) == pytest.approx(1.0)
    assert depth_trend([4.0, 3.0, 2.0]) == pytest.approx(-1.0)
    assert np.isnan(depth_trend([1.0]))


def test_analyze_prints_per_round_spread_beside_pooled(run_path, capsys):
    assert main(["analyze", str(run_path), "--warmup", "2"]) == 0
    out = capsys.readouterr().out
    assert "pooled, rounds >= 2" in out and "per-round median [IQR]" in out
    rows = [line for line in out.splitlines() if "rel. variance head/body" in line]
    assert len(rows) == 1 and rows[0].rstrip().endswith("/6")
    assert "(1 + relative variance) / S" in out  # why drift diversity is not shown
    assert main(["analyze", str(run_path), "--warmup", "-1"]) == 2
    assert "--warmup" in capsys.readouterr().err
