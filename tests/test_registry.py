"""The generic registry: order, lookup, duplicate names, and errors that name the nearest choice."""

import pytest

from driftscope.errors import ConfigError
from driftscope.registry import Registry


def make() -> Registry[int]:
    r: Registry[int] = Registry("algorithm")
    for i, name in enumerate(["fedavg", "fedprox", "scaffold", "fedpvr"]):
        assert r.register(name, i) == i
    return r


def test_lookup_order_and_membership():
    r = make()
    assert r.names() == ("fedavg", "fedprox", "scaffold", "fedpvr")
    assert list(r) == list(r.names()) and len(r) == 4
    assert r.items() == [("fedavg", 0), ("fedprox", 1), ("scaffold", 2), ("fedpvr", 3)]
    assert r.get("scaffold") == 2
    assert "fedpvr" in r and "fedsgd" not in r and 3 not in r


def test_duplicate_name_is_a_programming_error():
    r = make()
    with pytest.raises(ValueError, match="already registered"):
        r.register("fedavg", 9)
    assert r.get("fedavg") == 0


@pytest.mark.parametrize(
    ("name", "guess"),
    [("fedavgg", "fedavg"), ("scafold", "scaffold"), ("FedPVR", "fedpvr"), ("resnet", None)],
)
def test_unknown_name_suggests_the_nearest_and_lists_choices(name, guess):
    with pytest.raises(ConfigError) as info:
        make().get(name)
    text = str(info.value)
    assert text.startswith(f"unknown algorithm '{name}':")
    assert text.endswith("choose one of fedavg, fedprox, scaffold, fedpvr")
    assert (f"did you mean '{guess}'?" in text) == (guess is not None)
    assert "\n" not in text


def test_unhashable_name_is_still_a_config_error():
    with pytest.raises(ConfigError, match="unknown algorithm"):
        make().get(["fedavg"])  # type: ignore[arg-type]


def test_unregister_removes_a_name_and_unknown_names_raise():
    from driftscope.registry import Registry

    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    assert reg.unregister("a") == 1
    assert "a" not in reg and reg.names() == ()
    with pytest.raises(KeyError):
        reg.unregister("a")
