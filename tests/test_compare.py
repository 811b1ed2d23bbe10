"""experiments.compare: rounds to target, summaries over seeds, and divergence reported as a result."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import small_config

from driftscope.errors import ConfigError
from driftscope.experiments.compare import (
    ARMS,
    COMPARE_ARMS,
    Arm,
    compare,
    compare_arms,
    rounds_to,
    summarize,
)
from driftscope.experiments.compare_report import format_compare
from driftscope.runfile.reader import open_run


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
    log: list[str] = []
    res = compare(
        small_config(), [0], tmp_path, target=0.5, arms=arms, progress=True, log=log.append
    )
    # a header per arm and seed, then one line for the divergence
    assert log == [
        "== FedAvg [fedavg], seed 0 (run 1/2) ==",
        "== FedAvg lr 1e6 [fedavg_lr_1e6], seed 0 (run 2/2) ==",
        "FedAvg lr 1e6 [fedavg_lr_1e6], seed 0: diverged at round 0",
    ]
    ok, bad = res.iloc[0], res.iloc[1]
    with open_run(tmp_path / "fedavg-seed0.h5") as run:  # 3 rounds: the last 5 are all of them
        assert ok["last_rounds_accuracy"] == pytest.approx(run.metrics["test_accuracy"].mean())
    assert ok["arm"] == "fedavg"
    assert math.isnan(ok["diverged_at_round"]) and 0 < ok["final_accuracy"] <= 1
    assert bad["diverged_at_round"] == 0 and math.isnan(bad["final_accuracy"])
    # it diverged in round 0: a run with no committed round leaves no file
    assert not (tmp_path / "fedavg_lr_1e6-seed0.h5").exists()
    with open_run(tmp_path / "fedavg-seed0.h5") as run:
        assert run.status == "complete"


def test_paired_differences_interval_and_test_against_scipy():
    """Per-seed differences of paired arms; the interval and p-value are scipy's paired t (a
    diverged seed leaves its pair out)."""
    from scipy import stats

    from driftscope.experiments.compare import Contrast, paired
    from driftscope.experiments.compare_report import format_paired

    a = [0.90, 0.95, 0.93, 0.97, np.nan]
    b = [0.88, 0.94, 0.94, 0.95, 0.90]
    rows = [("A", "a", k, v) for k, v in enumerate(a)] + [("B", "b", k, v) for k, v in enumerate(b)]
    df = pd.DataFrame(rows, columns=["algorithm", "arm", "seed", "final_accuracy"])
    out = paired(df, [Contrast("a", "b", "what a adds"), Contrast("a", "zz", "absent")])
    assert len(out) == 1  # a contrast with an arm that did not run is left out
    r = out.iloc[0]
    d = np.array(a[:4]) - np.array(b[:4])
    assert r["differences"] == pytest.approx(list(d)) and r["pairs"] == 4 and r["seeds"] == 5
    assert r["p"] == pytest.approx(stats.ttest_rel(a[:4], b[:4]).pvalue, rel=1e-12)
    ci = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (r["low"], r["high"]) == pytest.approx(ci, rel=1e-12)
    assert r["wins"] == 3
    printed = format_paired(out, labels={"a": "A", "b": "B"}).iloc[0]
    assert printed["comparison"] == "A - B"
    assert printed["per-seed difference (points)"] == "+2.0 +1.0 -1.0 +2.0 (1 seeds diverged)"
    assert printed["higher in"] == "3/4"


def test_arms_by_name_default_and_one_line_errors():
    from driftscope.cli import COMPARE_ARM_NAMES

    assert ARMS.names() == COMPARE_ARM_NAMES  # the CLI's help lists what the registry holds
    assert compare_arms() == COMPARE_ARMS == tuple(ARMS.get(n) for n in COMPARE_ARM_NAMES[:6])
    # the ablation arms: FedPVR's momentum without control variates, SCAFFOLD where it trains
    assert ARMS.get("fedavg_body_momentum_09").overrides["train.algorithm"] == (
        "fedavg_body_momentum"
    )
    assert ARMS.get("scaffold_lr_001").overrides == {
        "train.algorithm": "scaffold",
        "train.lr": 0.01,
    }
    arms = compare_arms(["fedpvr_auto", "fedavg"])
    assert [a.label for a in arms] == ["FedPVR (auto head)", "FedAvg"]
    assert arms[0].overrides == {"train.algorithm": "fedpvr_auto"}
    with pytest.raises(ConfigError, match="did you mean 'fedpvr_auto'") as err:
        compare_arms(["fedpvr-auto"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="names fedavg twice"):
        compare_arms(["fedavg", "scaffold", "fedavg"])


def test_cli_compare_with_the_auto_head_arm(tmp_path, capsys):
    """``--arms fedavg fedpvr_auto``: two rows; the auto head costs more than FedAvg once its
    layers are chosen (after the 5 warm-up rounds of FedAvg)."""
    from driftscope.cli import main

    config = tmp_path / "small.toml"
    config.write_text("[train]\nrounds = 7\nlocal_steps = 1\nclients = 4\n")
    argv = ["compare", "--config", str(config), "--seeds", "0", "--target", "0.2", "--quiet"]
    argv += ["--out", str(tmp_path / "runs"), "--csv", str(tmp_path / "c.csv")]
    assert main([*argv, "--arms", "fedavg", "fedpvr_auto"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| FedPVR (auto head)")]
    assert len(rows) == 1 and "| FedAvg |" in out and "SCAFFOLD" not in out
    ratio = float(rows[0].rstrip(" |").rsplit("|", 1)[1].strip().rstrip("x"))
    assert 1.0 < ratio < 2.0
    assert (tmp_path / "runs" / "fedpvr_auto-seed0.h5").exists()
    assert main([*argv, "--arms", "fedpvr_auto"]) == 0  # no FedAvg arm: no ratio to it
    assert "- (no FedAvg arm)" in capsys.readouterr().out
    assert main([*argv, "--arms", "fedpvr"]) == 2
    assert "unknown compare arm 'fedpvr'" in capsys.readouterr().err


def test_reproduce_with_an_arm_that_completes_no_round(tmp_path):
    """An arm that diverges in round 0 leaves no file: reproduce reports it and goes on, and an
    earlier reproduce's file of that arm never stands in for it."""
    from driftscope.experiments.compare import REPRODUCE_ARMS
    from driftscope.experiments.reproduce import reproduce

    arms = [a for a in REPRODUCE_ARMS if a.name in ("fedavg", "fedavg-iid")]
    arms.append(Arm("scaffold", "SCAFFOLD", {"train.algorithm": "scaffold", "train.lr": 1e6}))
    (tmp_path / "scaffold.h5").write_text("an earlier reproduce's file")
    log: list[str] = []
    res = reproduce(tmp_path, rounds=1, progress=False, figures=False, arms=arms, log=log.append)
    assert not (tmp_path / "scaffold.h5").exists()
    assert set(res.paths) == {"fedavg", "fedavg-iid"}
    assert "diverged" in res.diverged["scaffold"]
    assert log == [f"[scaffold] {res.diverged['scaffold']}; no round completed"]
    assert list(res.accuracy["run"]) == ["fedavg", "fedavg-iid"]
