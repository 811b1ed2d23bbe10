"""What ``make demo`` shows: progress that a log file can read, and the tables of docs/results.md."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from conftest import small_config

from driftscope.experiments import ReproduceResult
from driftscope.report import format_reproduce
from driftscope.simulator import Simulator

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
            "drift_diversity a=0.1": [0.3581, 1.2049],
            "cka a=0.1": [1.0, 0.7181],
            "relative_variance iid": [1.0, 1.811],
            "drift_diversity iid": [0.2, 0.28],
            "cka iid": [1.0, 0.845],
        }
    )
    gaps = pd.DataFrame(
        {
            "partition": ["alpha 0.1", "iid"],
            "rel. variance head/body": [2.44, 1.39],
            "diversity head/body": [2.14, 1.22],
            "CKA body - head": [0.226, 0.121],
        }
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
    return ReproduceResult(
        paths={},
        labels={"fedavg": "FedAvg", "scaffold": "SCAFFOLD"},
        layers=layers,
        head_vs_body=gaps,
        accuracy=accuracy,
        diverged={"scaffold": "diverged"},
        figures=[],
        figures_dir=Path("figures"),
    )


def test_reproduce_prints_markdown_tables_with_the_readme_columns():
    printed = tables(format_reproduce(_result()))
    readme = readme_tables(ROOT)
    assert len(printed) == len(readme) == 3
    for got, want in zip(printed, readme):
        assert got[0] == want[0]  # same header, so the demo's output can be checked against it
    layers, _, accuracy = printed
    assert layers[1:] == [
        ["conv1", "2.58", "0.358", "1.000", "1.00", "0.200", "1.000"],
        ["fc3 *", "11.05", "1.205", "0.718", "1.81", "0.280", "0.845"],
    ]
    assert accuracy[1:] == [
        ["FedAvg", "0.969", "0.981", "5.54", "1.00", "complete"],
        ["SCAFFOLD", "-", "0.758", "11.08", "2.00", "diverged at round 16"],
    ]
