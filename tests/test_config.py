import pytest

from driftscope.config import RunConfig
from driftscope.errors import ConfigError


def test_defaults_are_the_embedded_default():
    cfg = RunConfig()
    assert (cfg.data.dataset, cfg.model.name, cfg.train.algorithm) == (
        "digits",
        "small_cnn",
        "fedavg",
    )
    assert (cfg.train.clients, cfg.data.alpha, cfg.data.partition) == (10, 0.1, "dirichlet")


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("data.alpha", 0.0, "alpha must be > 0"),
        ("data.alpha", -1.0, "alpha must be > 0"),
        ("train.lr", 0.0, "learning rate must be > 0"),
        ("train.lr", -0.1, "learning rate must be > 0"),
        ("train.algorithm", "fedsgd", "unknown algorithm 'fedsgd': did you mean 'fedavg'?"),
        ("data.dataset", "cifar", "unknown dataset 'cifar': did you mean 'cifar10'?"),
        ("model.name", "cnn", "unknown model 'cnn'"),
        ("data.partition", "pathological", "unknown partition"),
        ("train.clients", 0, "clients must be >= 1"),
        ("train.client_fraction", 1.5, "client_fraction"),
        ("record.probe_size", 2, "probe_size"),
    ],
)
def test_invalid_values_name_the_problem(key, value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        RunConfig().replace({key: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"lrr": 0.1}}, "unknown key 'train.lrr': did you mean 'train.lr'?"),
        ({"trian": {"lr": 0.1}}, "unknown section 'trian': did you mean 'train'?"),
        ({"data": {"alfa": 0.1}}, "unknown key 'data.alfa': did you mean 'data.alpha'?"),
        ({"seeed": 1}, "unknown key 'seeed': did you mean 'seed'?"),
        ({"train": {"xyz": 1}}, "unknown key 'train.xyz': valid keys here: train.algorithm"),
        (
            {"train": {"algorithm": "fedprox", "params": {"muu": 0.1}}},
            "unknown key 'train.params.muu': did you mean 'train.params.mu'?",
        ),
        (
            {"train": {"params": {"body_momentum": 0.5}}},
            "'train.params.body_momentum' is a parameter of fedpvr, not of fedavg",
        ),
    ],
)
def test_unknown_keys_name_the_nearest_valid_one(raw, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(raw, source="c.toml")
    assert str(info.value).startswith(f"c.toml: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("train.lrr", "unknown key 'train.lrr': did you mean 'train.lr'?"),
        ("trian.lr", "unknown section 'trian': did you mean 'train'?"),
        ("train.params.mu", "'train.params.mu' is a parameter of fedprox, not of fedavg"),
    ],
)
def test_unknown_override_keys_name_the_nearest_valid_one(key, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace({key: 0.1})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.rounds", "ten", "'train.rounds' must be an integer (got 'ten')"),
        ("train.rounds", 2.5, "'train.rounds' must be an integer (got 2.5)"),
        ("train.lr", "fast", "'train.lr' must be a number (got 'fast')"),
        ("train.lr", True, "'train.lr' must be a number (got True)"),
        ("train.drop_last", 1, "'train.drop_last' must be true or false (got 1)"),
        ("data.dataset", 3, "'data.dataset' must be a string (got 3)"),
        ("train.local_steps", "x", "'train.local_steps' must be an integer (or empty)"),
        ("model.head", 3, "'model.head' must be a list of strings (got 3)"),
        ("train.params.body_momentum", "x", "'train.params.body_momentum' must be a number"),
    ],
)
def test_wrong_types_name_the_key_and_the_type(key, value, expected):
    overrides = {key: value}
    if key.startswith("train.params."):
        overrides["train.algorithm"] = "fedpvr"
    with pytest.raises(ConfigError) as info:
        RunConfig().replace(overrides)
    assert str(info.value).startswith(expected)


FLOAT_KEYS = [
    "data.alpha",
    "data.min_share",
    "data.client_test_fraction",
    "train.client_fraction",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.server_lr",
    "train.state_budget_mb",
]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_no_float_may_be_nan_or_infinite(bad):
    from dataclasses import fields

    from driftscope.config import DataConfig, RecordConfig, TrainConfig

    declared = {
        f"{section}.{f.name}"
        for section, cls in (("data", DataConfig), ("train", TrainConfig), ("record", RecordConfig))
        for f in fields(cls)
        if str(f.type).startswith("float")
    }
    assert declared == set(FLOAT_KEYS)  # every float key of the config is covered here
    for key in FLOAT_KEYS:
        with pytest.raises(ConfigError, match=f"'{key}' must be finite"):
            RunConfig().replace({key: bad})
    # constructed directly (not from a dict), the same rule holds
    with pytest.raises(ConfigError, match="must be finite"):
        TrainConfig(lr=bad)
    for algorithm, key in (("fedprox", "mu"), ("fedpvr", "body_momentum")):
        with pytest.raises(ConfigError, match="finite"):
            RunConfig().replace({"train.algorithm": algorithm, f"train.params.{key}": bad})


def test_params_in_toml_and_json(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nalgorithm = "fedprox"\n[train.params]\nmu = 0.5\n')
    cfg = RunConfig.from_toml(path)
    assert cfg.train.params.mu == 0.5
    assert '"params": {"mu": 0.5}' in cfg.to_json()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    # changing the algorithm starts from the new algorithm's defaults
    assert cfg.replace({"train.algorithm": "fedpvr"}).train.params.body_momentum == 0.9
    assert cfg.replace({"train.lr": 0.1}).train.params.mu == 0.5


def test_toml_round_trip_and_types(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'seed = 3\n[train]\nalgorithm = "fedpvr"\nlr = 1\n[model]\nhead = "classifier.4.*"\n'
    )
    cfg = RunConfig.from_toml(path)
    assert cfg.seed == 3 and cfg.train.algorithm == "fedpvr"
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.model.head == ("classifier.4.*",)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_toml_type_errors_and_missing_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nrounds = "ten"\n')
    with pytest.raises(ConfigError, match=r"'train.rounds' must be an integer"):
        RunConfig.from_toml(path)
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_toml(tmp_path / "missing.toml")


def test_overrides_apply_on_top():
    cfg = RunConfig().replace({"train.lr": 0.2, "seed": 7})
    assert cfg.train.lr == 0.2 and cfg.seed == 7 and cfg.train.rounds == RunConfig().train.rounds


def test_field_types_read_the_type_hints_not_their_text():
    from typing import Literal, Optional

    from driftscope.options import FieldType

    assert FieldType.of(float | None) == FieldType(float, True, None, False)
    assert FieldType.of(Optional[int]) == FieldType(int, True, None, False)  # noqa: UP045
    assert FieldType.of(tuple[str, ...]) == FieldType(str, False, None, True)
    assert FieldType.of(Literal["a", "b"]) == FieldType(str, False, ("a", "b"), False)
    assert FieldType.of(bool).base is bool


def test_a_field_added_to_a_config_section_is_a_flag_and_a_toml_key(monkeypatch, tmp_path, capsys):
    """The config is described once: a field with ``option(...)`` metadata added to a section
    appears in ``driftscope run --help`` (its help, default, metavar, Literal choices) and its TOML
    value is coerced from its type hint."""
    import dataclasses
    from typing import Literal

    from driftscope import cli, config
    from driftscope.options import option

    @dataclasses.dataclass(frozen=True)
    class Record(config.RecordConfig):
        smoothing: float = option(0.5, "a new recording knob", metavar="S")
        style: Literal["plain", "fancy"] = option("plain", "a new recording choice")

        def __post_init__(self) -> None:
            super().__post_init__()
            config.check_choices(self)

    monkeypatch.setattr(config, "RecordConfig", Record)  # RunConfig's type hint names it
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--smoothing S a new recording knob [0.5]" in help_text
    assert "--style {plain,fancy} a new recording choice [plain]" in help_text

    path = tmp_path / "c.toml"
    path.write_text("[record]\nsmoothing = 2\nstyle = 'fancy'\n")
    cfg = RunConfig.from_toml(path)
    assert cfg.record.smoothing == 2.0 and type(cfg.record.smoothing) is float
    assert cfg.record.style == "fancy"
    path.write_text("[record]\nsmoothing = 'x'\n")
    with pytest.raises(ConfigError, match=r"'record\.smoothing' must be a number"):
        RunConfig.from_toml(path)
    path.write_text("[record]\nstyle = 'loud'\n")
    with pytest.raises(ConfigError, match="unknown style 'loud': choose one of plain, fancy"):
        RunConfig.from_toml(path)
