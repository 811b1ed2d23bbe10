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
        ("train.algorithm", "fedsgd", "unknown algorithm 'fedsgd'"),
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


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*train.lr"):
        RunConfig.from_dict({"train": {"lrr": 0.1}})


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
