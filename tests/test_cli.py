"""The command line as a user meets it: one-line errors, exit codes, no tracebacks."""

import subprocess
import sys

import pytest

from driftscope import open_run
from driftscope.cli import COMMANDS, build_parser, main
from driftscope.cli.flags import (
    Flag,
    choose_threads,
    flag_keys,
    param_owners,
    resolve_config,
    run_flags,
)
from driftscope.config import RunConfig
from driftscope.errors import ConfigError


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
        "--momentum",
        "--drop-last",
        "--seed",
        "--out",
        "--config",
        "--no-record",
        "--updates-every",
        "--probe-size",
        "--overwrite",
        "--quiet",
        "--threads",
        "--mu",
        "--body-momentum",
    ]:
        assert flag in out.stdout, flag
    for name in ("fedavg", "fedprox", "scaffold", "fedpvr", "digits", "cifar100", "vgg11"):
        assert name in out.stdout  # choices come from the registries


def _sample(flag: Flag, default):
    """A valid value for ``flag`` that differs from the default: (argv, expected config value)."""
    if flag.kind == "bool":
        return ([flag.flag], True) if not default else (["--no-" + flag.flag[2:]], False)
    if flag.kind == "list":
        return ([flag.flag, "classifier.*"], ("classifier.*",))
    if flag.choices:
        value = next(c for c in reversed(flag.choices) if c != default)
        return [flag.flag, value], value
    special = {
        "data.dataset": "mnist",
        "data.data_dir": "somewhere",
        "model.name": "mlp",
        "train.algorithm": "scaffold",
        "train.device": "cpu",
    }
    if flag.key in special:
        return [flag.flag, special[flag.key]], special[flag.key]
    if getattr(flag.type, "__name__", None) == "int":  # int, or int | None
        value = (default or 0) + 1
        return [flag.flag, str(value)], value
    value = default / 2 if default else 0.5
    return [flag.flag, repr(value)], value


def test_every_run_flag_sets_its_config_key():
    """Behaviour, not parser internals: each flag, given alone, changes exactly its key."""
    parser = build_parser()
    defaults = RunConfig().to_dict()
    owners = param_owners()
    flags = run_flags()
    assert {f.dest for f in flags} == set(flag_keys())
    assert {f.key for f in flags if f.key.startswith("train.params.")} == {
        f"train.params.{n}" for n in owners
    }
    for flag in flags:
        algo = []
        if flag.key.startswith("train.params."):
            name = flag.key.split(".")[-1]
            algo = ["--algorithm", owners[name][0]]
            default = getattr(
                RunConfig().replace({"train.algorithm": owners[name][0]}).train.params, name
            )
        else:
            node = defaults
            for part in flag.key.split("."):
                node = node[part]
            default = node
        argv, expected = _sample(flag, default)
        cfg = resolve_config(parser.parse_args(["run", *algo, *argv]))
        node = cfg.to_dict()
        for part in flag.key.split("."):
            node = node[part]
        node = tuple(node) if isinstance(node, list) else node
        assert node == expected != default, flag.flag


def test_optional_param_accepts_none():
    args = build_parser().parse_args(["run", "--algorithm", "fedpvr", "--body-momentum", "none"])
    assert resolve_config(args).train.params.body_momentum is None


def test_a_flag_of_another_algorithm_is_a_one_line_error(capsys, tmp_path):
    assert (
        main(["run", "--algorithm", "scaffold", "--mu", "0.1", "--out", str(tmp_path / "x.h5")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        "driftscope: error: --mu is a parameter of fedprox, not of scaffold: "
        "drop --mu or choose --algorithm fedprox"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nalgorithm = "fedprox"\n')
    args = build_parser().parse_args(["run", "--config", str(cfg), "--mu", "0.2"])
    assert resolve_config(args).train.params.mu == 0.2  # the algorithm may come from the file


LIGHT = (
    "import sys\n"
    "from driftscope.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "heavy = [m for m in ('torch', 'pandas', 'h5py', 'matplotlib') if m in sys.modules]\n"
    "print('HEAVY', heavy, file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["compare", "--help"],
        ["run", "--rounds", "x"],
        ["run", "--alpha", "inf"],
        ["run", "--algorithm", "fedsgd"],
        ["run", "--mu", "0.1"],
        ["run", "--config", "pyproject.toml"],
        ["compare", "--target", "2"],
        ["nonsense"],
    ],
)
def test_help_and_usage_errors_import_no_heavy_module(args, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\n")
    out = subprocess.run(
        [sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert "HEAVY []" in out.stderr, out.stderr


def test_choose_threads_policy():
    assert choose_threads(75_000, None, 8) == (1, choose_threads(75_000, None, 8)[1])
    assert choose_threads(75_000, None, 8)[0] == 1
    assert choose_threads(9_750_922, None, 8)[0] == 8  # VGG-11: torch's default
    assert choose_threads(999_999, None, 8)[0] == 1 and choose_threads(1_000_000, None, 8)[0] == 8
    assert choose_threads(75_000, 3, 8) == (3, "--threads")
    with pytest.raises(ConfigError, match="--threads must be between 1 and"):
        choose_threads(10, 0, 8)


def test_run_prints_threads_and_momentum_warning(tmp_path):
    out = cli(
        "run",
        "--algorithm", "scaffold", "--momentum", "0.5", "--rounds", "1", "--local-steps", "1",
        "--clients", "3", "--no-record", "--quiet", "--out", str(tmp_path / "r.h5"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "driftscope: warning: momentum 0.5 with SCAFFOLD" in out.stderr
    assert out.stdout.count("torch threads: 1 (small_cnn,") == 1


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 text file"),
        ("[train]\nlr = 0.1\n".encode("utf-16"), "not a UTF-8 text file"),
        (b"[train]\nlr = nan\n", "'train.lr' must be finite"),
        (b"[trian]\nlr = 0.1\n", "unknown section 'trian': did you mean 'train'?"),
        (b"[record]\nevery = 9223372036854775808\n", "'record.every' = 9223372036854775808 is"),
        (b"[record]\ncka_every = 9223372036854775807\n", None),  # the largest int64: valid
        (b"[train]\nweight_decay = 1e308\n", "'train.weight_decay' = 1e+308 is out of range"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    if needle is None:  # valid: the config is read as given
        assert RunConfig.from_toml(path).record.cka_every == 2**63 - 1
        return
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("target", ["0", "-0.5", "1.5", "nan"])
def test_compare_target_must_be_an_accuracy(capsys, target):
    assert main(["compare", "--target", target]) == 2
    assert "--target must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["run", "--model", "resnet"], "unknown model 'resnet'"),
        (["run", "--alpha", "0"], "alpha must be > 0"),
        (["run", "--alpha", "inf"], "'data.alpha' must be finite"),
        (["run", "--alpha", "nan"], "'data.alpha' must be finite"),
        (["run", "--algorithm", "fedpvrr"], "did you mean 'fedpvr'?"),
        (["run", "--model", "vgg"], "did you mean 'vgg11'?"),
        (["run", "--lr", "-1"], "learning rate must be > 0"),
        (["run", "--clients", "5000"], "only 1437 training samples"),
        (["run", "--head", "fc.*"], "matches no parameter"),
        (["run", "--dataset", "cifar10", "--data-dir", "nowhere"], "not found"),
        (["run", "--config", "missing.toml"], "does not exist"),
        (["analyze", "missing.h5"], "does not exist"),
        (["inspect", "pyproject.toml"], "not an HDF5 file"),
        # every number within what its float32 / int64 holds, checked before anything exists
        (["run", "--lr", "1e308"], "'train.lr' = 1e+308 is out of range"),
        (["run", "--weight-decay", "1e308"], "'train.weight_decay' = 1e+308 is out of range"),
        (["run", "--algorithm", "fedprox", "--mu", "1e308"], "'train.params.mu' = 1e+308"),
        (["run", "--algorithm", "fedprox", "--mu=-1e39"], "'train.params.mu' = -1e+39"),
        (["run", "--record-every", str(2**63)], "'record.every' = 9223372036854775808 is out"),
        (["run", "--updates-every", str(2**63)], "'record.updates_every' = 9223372036854775808"),
        (["run", "--cka-every", str(2**63)], "'record.cka_every' = 9223372036854775808"),
        (["run", "--seed", str(2**64)], "'seed' = 18446744073709551616 is out of range"),
        (["run", "--threads", str(2**63)], "--threads must be between 1 and 4096"),
        (["reproduce", "--threads", str(2**63)], "--threads must be between 1 and 4096"),
        (["compare", "--threads", "0"], "--threads must be between 1 and 4096"),
        (
            ["run", "--partition", "shards", "--classes-per-client", "11"],
            "classes_per_client 11 is more than digits's 10 classes",
        ),
        (["run", "--config", "/dev/null"], "/dev/null is not a regular file"),
        (["run", "--config", "."], ". is a folder, not a config file"),
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


@pytest.mark.parametrize("flag", ["--epochs", "--local-ep", "--round"])
def test_no_flag_is_taken_by_its_prefix(tmp_path, capsys, flag):
    """argparse's abbreviations are off: a mistyped or partial flag is refused, never read as
    whichever flag it prefixes."""
    with pytest.raises(SystemExit) as exc:
        main(["run", flag, "3", "--out", str(tmp_path / "x.h5")])
    assert exc.value.code == 2
    assert f"unrecognized arguments: {flag} 3" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--out", "afile/x.h5"], "a part of the path is a file, not a directory"),
        (["run", "--out", "a" * 300 + ".h5"], "the file name is too long"),
        (["run", "--out", "b" * 250 + ".h5"], "the file name is too long"),  # no room for .lock
        (["run", "--out", "newdir/"], "newdir/ ends in '/', so it names a folder"),
        (["run", "--out", ""], "--out is empty"),
        (["run", "--out", "adir"], "adir is a directory"),
        (["analyze", "x.h5", "--csv", ""], "--csv is empty"),
        (["analyze", "x.h5", "--csv", "adir"], "adir is a directory: give --csv a file path"),
        (["figures", "x.h5", "--out", "afile"], "afile is a file, not a folder"),
        (["figures", "x.h5", "--out", ""], "--out is empty"),
        (["compare", "--arms", "fedavg", "--out", "afile"], "afile is a file, not a folder"),
        (["compare", "--arms", "fedavg", "--out", "afile/c"], "a part of the path is a file"),
        (["compare", "--arms", "fedavg", "--out", "c", "--csv", "adir"], "adir is a directory"),
        (["reproduce", "--out", "afile"], "afile is a file, not a folder"),
        (["reproduce", "--out", ""], "--out is empty"),
    ],
)
def test_bad_outputs_are_one_line_errors(tmp_path, monkeypatch, capsys, args, needle):
    """Every output path is checked before any work: one line, exit 2, nothing created."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "adir").mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert (tmp_path / "afile").read_text() == "keep" and not any((tmp_path / "adir").iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--client-cpus", "nan"], "--client-cpus nan is not in (0, "),
        (["--client-cpus", "inf"], "--client-cpus inf is not in (0, "),
        (["--client-cpus", "1e300"], "--client-cpus 1e+300 is not in (0, "),
        (["--client-cpus", "100000"], "--client-cpus 100000.0 is not in (0, "),
        (["--client-cpus", "0"], "--client-cpus 0.0 is not in (0, "),
        (["--client-gpus", "nan"], "--client-gpus nan must be a finite number >= 0"),
        (["--client-gpus", "inf"], "--client-gpus inf must be a finite number >= 0"),
        (["--client-gpus", "1e300"], "--client-gpus 1e+300 but this machine has"),
        (["--batched", "on"], "--batched on is not available with --engine flower"),
    ],
)
def test_flower_settings_are_checked_before_flower_starts(tmp_path, capsys, args, needle):
    """Resources the machine cannot give and settings Flower cannot honour: one line before Ray
    starts (nothing written)."""
    pytest.importorskip("flwr")
    out = tmp_path / "x.h5"
    assert main(["run", "--engine", "flower", "--rounds", "1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args", [["--supernodes", "10"], ["--client-cpus", "2"], ["--client-gpus", "0"]]
)
def test_flower_flags_on_an_in_process_run_are_refused(tmp_path, capsys, args):
    out = tmp_path / "x.h5"
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{args[0]} applies to --engine flower only" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["figures", "analyze", "run"])
def test_ctrl_c_names_the_resume_hint_only_for_a_training_run(monkeypatch, capsys, command):
    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, command, stopped)
    argv = {"figures": ["figures", "x.h5"], "analyze": ["analyze", "x.h5"], "run": ["run"]}
    assert main(argv[command]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("driftscope: interrupted") and len(err.splitlines()) == 1
    assert ("--resume" in err) == (command == "run")


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
        assert run.config.train.algorithm == "fedpvr"  # from the file
        assert run.config.train.rounds == 2 == run.num_rounds  # the flag wins


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
    assert list(table.columns) == [
        *["round", "layer", "label", "group", "metric", "value"],
        *["numerator", "denominator", "numerator_name", "denominator_name"],
    ]
    assert {"relative_variance", "drift_diversity", "cosine_divergence", "cka"} <= set(table.metric)
    alignment = table[table.metric == "label_alignment_p"]["value"]
    assert len(alignment) and alignment.between(0, 1).all()  # label attribution rows too
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "records/gram" in text and "fc3" in text and "schema: driftscope-run v2" in text


def test_fedpvr_on_a_model_without_a_declared_head_is_refused():
    """FedPVR with no head would be FedAvg in disguise: refused unless the empty head is explicit
    (--head-last-k 0, which the user then asked for)."""
    from types import SimpleNamespace

    from driftscope.models.registry import check_head

    headless = SimpleNamespace(head_numel=0, layers=[SimpleNamespace(name="fc")])
    with pytest.raises(ConfigError, match="fedpvr needs the model's head"):
        check_head("fedpvr", headless, (), None)
    check_head("fedpvr", headless, (), 0)  # explicit: allowed
    check_head("fedavg", headless, (), None)  # the head does not change FedAvg
