"""The command line as a user meets it: one-line errors, exit codes, no tracebacks."""

import subprocess
import sys

import pytest

from driftscope import open_run
from driftscope.cli import FLAG_KEYS, build_parser, main


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "driftscope", *args], capture_output=True, text=True, cwd=cwd
    )


def test_run_help_lists_every_flag():
    out = cli("run", "--help")
    assert out.returncode == 0
    for flag in [
        "--algorithm",
        "--dataset",
        "--model",
        "--clients",
        "--alpha",
        "--rounds",
        "--local-epochs",
        "--lr",
        "--seed",
        "--out",
        "--config",
        "--no-record",
        "--updates-every",
        "--probe-size",
        "--overwrite",
        "--quiet",
    ]:
        assert flag in out.stdout, flag
    # every config flag the parser defines maps to a config key
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    dests = {a.dest for a in run_parser._actions} - {"help", "config", "out", "overwrite", "quiet"}
    assert dests == set(FLAG_KEYS)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["run", "--model", "resnet"], "unknown model 'resnet'"),
        (["run", "--alpha", "0"], "alpha must be > 0"),
        (["run", "--lr", "-1"], "learning rate must be > 0"),
        (["run", "--clients", "5000"], "only 1437 training samples"),
        (["run", "--head", "fc.*"], "matches no parameter"),
        (["run", "--dataset", "cifar10", "--data-dir", "nowhere"], "not found"),
        (["run", "--config", "missing.toml"], "does not exist"),
        (["analyze", "missing.h5"], "does not exist"),
        (["inspect", "pyproject.toml"], "not an HDF5 file"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("x")
    extra = ["--out", str(tmp_path / "x.h5")] if args[0] == "run" else []
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()  # nothing written on bad input


def test_errors_from_the_real_command_have_no_traceback(tmp_path):
    out = cli("run", "--alpha", "-1", "--out", str(tmp_path / "x.h5"))
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "driftscope: error: alpha must be > 0 (got -1.0): use e.g. --alpha 0.1 for strong label skew"
    )


def test_unknown_algorithm_is_a_usage_error():
    out = cli("run", "--algorithm", "fedsgd")
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_existing_output_needs_overwrite(make_run, capsys):
    path = make_run()
    before = path.read_bytes()
    assert main(["run", "--out", str(path), "--rounds", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_config_file_then_flags(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[train]\nalgorithm = "fedpvr"\nrounds = 5\nlocal_epochs = 1\n[record]\nprobe_size = 16\n'
    )
    out = tmp_path / "r.h5"
    assert main(["run", "--config", str(cfg), "--rounds", "2", "--quiet", "--out", str(out)]) == 0
    assert "final test accuracy" in capsys.readouterr().out
    with open_run(out) as run:
        assert run.config["train"]["algorithm"] == "fedpvr"  # from the file
        assert run.config["train"]["rounds"] == 2 == run.num_rounds  # the flag wins


def test_analyze_and_inspect(make_run, tmp_path, capsys):
    path = make_run()
    csv = tmp_path / "t.csv"
    assert main(["analyze", str(path), "--csv", str(csv)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if f" {label} " in line)
        for label in ["conv1", "conv4", "fc1", "fc3"]
    ]
    assert order == sorted(order)
    assert any(line.lstrip().startswith("*") and "fc3" in line for line in lines)
    import pandas as pd

    table = pd.read_csv(csv)
    assert list(table.columns) == ["round", "layer", "label", "group", "metric", "value"]
    assert {"relative_variance", "drift_diversity", "cosine_divergence", "cka"} <= set(table.metric)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "records/gram" in text and "fc3" in text and "schema: driftscope-run v1" in text
