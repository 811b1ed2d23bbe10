"""What ``make demo`` shows: progress that a log file can read, and the tables of docs/results.md."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from conftest import small_config

from driftscope.engine.inprocess import Simulator
from driftscope.experiments.compare_report import format_reproduce
from driftscope.experiments.reproduce import ReproduceResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from demo_under_load import readme_tables, tables  # noqa: E402


def test_progress_without_a_terminal_is_a_compact_line_every_few_rounds(digits, capsys):
    rounds = 16
    cfg = small_config(
        train__rounds=rounds, train__clients=3, train__local_steps=1, record__enabled=False
    )
    Simulator(cfg, digits).run(progress=True)  # pytest's stderr is not a terminal
    out, err = capsys.readouterr()
    assert out == ""
    assert "\r" not in err  # no bar redrawn into a file
    lines = err.splitlines()
    every = max(1, rounds // 8)
    assert [line.split()[:3] for line in lines] == [
        ["fedavg", "round", f"{r}/{rounds}"] for r in range(every, rounds + 1, every)
    ]
    assert all(" acc " in line and line.endswith(" s") for line in lines)


def _result() -> ReproduceResult:
    layers = pd.DataFrame(
        {
            "label": ["conv1", "fc3"],
            "group": ["body", "head"],
            "relative_variance a=0.1": [2.581, 11.049],
            "mean_pairwise_cosine a=0.1": [0.2149, -0.0312],
            "cka a=0.1": [1.0, 0.7181],
            "relative_variance iid": [1.0, 1.811],
            "mean_pairwise_cosine iid": [0.61, 0.4449],
            "cka iid": [1.0, 0.845],
        }
    )
    ev = {
        "metric": ["relative_variance", "cka"],
        "comparison": ["head/body", "body - head"],
        "pooled": [2.414, 0.2351],
        "pooled_after_warmup": [1.71, 0.2],
        "median": [1.66, 0.21],
        "q25": [1.5, 0.19],
        "q75": [1.9, 0.25],
        "head_beyond": [38, 4],
        "rounds": [40, 4],
        "warmup": [10, 10],
    }
    gaps = pd.concat(
        [pd.DataFrame({"partition": p, **ev}) for p in ("alpha 0.1", "iid")], ignore_index=True
    )
    accuracy = pd.DataFrame(
        {
            "run": ["fedavg", "scaffold"],
            "final acc": [0.969, math.nan],
            "best acc": [0.981, 0.758],
            "MB / round": [5.5396, 11.0792],
            "x FedAvg": [1.0, 2.0],
            "status": ["complete", "diverged at round 16"],
        }
    )
    alignment = pd.DataFrame(
        {
            "run": ["FedAvg", "SCAFFOLD"],
            "rounds": [40, 16],
            "diverged": [False, True],
            **{
                f"{g} {m}": [0.5, 0.25]
                for g in ("head", "body")
                for m in ("relative_variance", "mean_pairwise_cosine", "cka")
            },
        }
    )
    depth = pd.DataFrame({"partition": ["alpha 0.1", "iid"], "all": [1.0, 0.79], "body": [1, 0.8]})
    return ReproduceResult(
        paths={},
        labels={"fedavg": "FedAvg", "scaffold": "SCAFFOLD"},
        layers=layers,
        head_vs_body=gaps,
        accuracy=accuracy,
        diverged={"scaffold": "diverged"},
        figures=[],
        figures_dir=Path("figures"),
        depth=depth,
        alignment=alignment,
    )


def test_reproduce_prints_markdown_tables_with_the_readme_columns():
    printed = tables(format_reproduce(_result()))
    readme = readme_tables(ROOT)
    assert len(printed) == len(readme) == 4
    for got, want in zip(printed, readme):
        assert got[0] == want[0]  # same header, so the demo's output can be checked against it
    layers, evidence, alignment, accuracy = printed
    assert layers[1:] == [
        ["conv1", "2.58", "0.215", "1.000", "1.00", "0.610", "1.000"],
        ["fc3 *", "11.05", "-0.031", "0.718", "1.81", "0.445", "0.845"],
    ]
    assert evidence[1] == [
        "alpha 0.1",
        "rel. variance head/body",
        "2.41",
        "1.71",
        "1.66 [1.50, 1.90]",
        "38/40",
    ]
    assert alignment[2][0] == "SCAFFOLD (rounds 0-15, then diverged)"
    assert accuracy[1:] == [
        ["FedAvg", "0.969", "0.981", "5.54", "1.00", "complete"],
        ["SCAFFOLD", "-", "0.758", "11.08", "2.00", "diverged at round 16"],
    ]
    text = format_reproduce(_result())
    assert "(1 + relative variance) / S" in text  # drift diversity: why it is not shown
    assert "Compare algorithms by alignment (pairwise cosine, CKA)" in text
    assert "α=0.1 1.00 over all layers, 1.00 through the body" in text
