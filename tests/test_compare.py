"""experiments.compare: rounds to target, summaries over seeds, and divergence reported as a result."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import small_config

from driftscope.experiments import Arm, compare, rounds_to, summarize
from driftscope.reader import open_run
from driftscope.report import format_compare


def test_rounds_to_counts_from_one_and_is_nan_when_never_reached():
    acc = np.array([0.2, 0.5, 0.91, 0.85, 0.95])
    assert rounds_to(acc, 0.9) == 3
    assert rounds_to(acc, 0.2) == 1
    assert math.isnan(rounds_to(acc, 0.99))


def test_summarize_averages_finished_seeds_and_counts_diverged_ones():
    rows = [
        # FedAvg: two seeds, both finished
        ("FedAvg", 0, 0.80, 10.0, np.nan, 100.0),
        ("FedAvg", 1, 0.90, 20.0, np.nan, 100.0),
        # SCAFFOLD: one finished, one diverged at round 7
        ("SCAFFOLD", 0, 0.70, 5.0, np.nan, 200.0),
        ("SCAFFOLD", 1, np.nan, np.nan, 7, 200.0),
        # X: every seed diverged
        ("X", 0, np.nan, np.nan, 3, 150.0),
        ("X", 1, np.nan, np.nan, 9, 150.0),
    ]
    cols = ["algorithm", "seed", "final_accuracy", "rounds_to_target", "diverged_at_round"]
    df = pd.DataFrame(rows, columns=[*cols, "bytes_per_round"])
    numbers = summarize(df).set_index("algorithm")
    assert numbers.loc["FedAvg", "final_mean"] == pytest.approx(0.85)
    assert numbers.loc["SCAFFOLD", "diverged_rounds"] == [7]
    assert numbers.loc["X", "communication_vs_baseline"] == pytest.approx(1.5)
    s = format_compare(summarize(df), 0.9).set_index("algorithm")
    # mean 0.85, sample std of (0.8, 0.9) = 0.0707
    assert s.loc["FedAvg", "final test accuracy"] == "0.850 ± 0.071"
    assert s.loc["FedAvg", "rounds to 90%"] == "15.0 ± 7.1"
    assert s.loc["SCAFFOLD", "final test accuracy"] == "0.700 (1/2 seeds diverged, rounds 7)"
    assert s.loc["SCAFFOLD", "rounds to 90%"] == "1/2 seeds reached"
    assert s.loc["X", "final test accuracy"] == "diverged in 2/2 seeds (rounds 3, 9)"
    assert s.loc["SCAFFOLD", "communication / round vs FedAvg"] == "2.000x"
    assert s.loc["X", "communication / round vs FedAvg"] == "1.500x"


def test_a_diverging_arm_is_a_row_not_a_crash(tmp_path, digits):
    arms = [
        Arm("fedavg", "FedAvg", {"train.algorithm": "fedavg"}),
        Arm("fedavg_lr_1e6", "FedAvg lr 1e6", {"train.algorithm": "fedavg", "train.lr": 1e6}),
    ]
    res = compare(small_config(), [0], tmp_path, target=0.5, arms=arms)
    ok, bad = res.iloc[0], res.iloc[1]
    assert math.isnan(ok["diverged_at_round"]) and 0 < ok["final_accuracy"] <= 1
    assert bad["diverged_at_round"] == 0 and math.isnan(bad["final_accuracy"])
    with open_run(tmp_path / "fedavg_lr_1e6-seed0.h5") as run:
        assert run.status == "diverged"
        assert "round 0" in run.status_message
