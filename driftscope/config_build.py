"""Config dataclasses built from nested tables (a TOML file, a run file's config, dotted overrides).

Unknown keys are one-line :class:`~driftscope.errors.ConfigError` messages naming the nearest valid
key; scalar values are coerced from the fields' type hints (:func:`driftscope.options.coerce`);
``[train.params]`` is checked against the chosen algorithm's ``Params``; schema-1 configs
(``train.mu``, ``train.body_momentum``) are migrated. Used by :mod:`driftscope.config`; torch-free.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from typing import Any

from driftscope.algorithms import ALGORITHMS
from driftscope.errors import ConfigError
from driftscope.options import coerce, field_types
from driftscope.registry import checking_names, nearest

# keys of schema-1 configs that moved to train.params
_LEGACY_TRAIN_KEYS = ("mu", "body_momentum")


def migrate_schema1(raw: Any, default_algorithm: str) -> Any:
    """Schema-1 config -> current: train.mu / train.body_momentum move to train.params (of
    ``train.algorithm``, ``default_algorithm`` when the table names none)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        return raw
    train = raw["train"]
    legacy = {k: train[k] for k in _LEGACY_TRAIN_KEYS if k in train}
    if not legacy:
        return raw
    train = {k: v for k, v in train.items() if k not in legacy}
    algorithm = train.get("algorithm", default_algorithm)
    if algorithm in ALGORITHMS and "params" not in train:
        own = {f.name for f in fields(ALGORITHMS.get(algorithm).Params)}
        train["params"] = {k: v for k, v in legacy.items() if k in own}
    return {**raw, "train": train}


def _at(source: str) -> str:
    """Message prefix naming where a value came from (a file), or nothing (overrides, flags)."""
    return f"{source}: " if source else ""


def leaves(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if not isinstance(v, dict)}


def unknown_key(key: str, valid: Any, prefix: str, section: bool = False) -> str:
    """ "unknown key 'train.lrr': did you mean 'train.lr'? valid keys here: ..."."""
    what = "section" if section else "key"
    name = key[len(prefix) :]
    names = list(valid)
    guess = nearest(name, names)
    hint = f" did you mean '{prefix}{guess}'?" if guess else ""
    listing = ", ".join(prefix + k for k in names) if names else "none"
    return f"unknown {what} '{key}':{hint} valid keys here: {listing}"


def _params_owner(name: str, current: str) -> str | None:
    """The first other algorithm whose Params has a field ``name``."""
    for other, algo in ALGORITHMS.items():
        if other != current and name in {f.name for f in fields(algo.Params)}:
            return other
    return None


def build_section(cls: type, raw: dict[str, Any], source: str, prefix: str = "") -> Any:
    """An instance of the config dataclass ``cls`` from its table ``raw``: unknown keys an error
    naming the nearest valid one, nested sections built recursively, scalar values coerced from
    the type hints; a section with ``algorithm`` and ``params`` fields (the training section)
    builds ``params`` as the chosen algorithm's ``Params``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(source)}'{prefix.rstrip('.')}' must be a table")
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kinds = field_types(cls)
    for name in raw:
        if name not in known:
            section = isinstance(raw[name], dict)
            raise ConfigError(f"{_at(source)}" + unknown_key(prefix + name, known, prefix, section))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "params" and "algorithm" in known:
            default = str(known["algorithm"].default)
            kwargs[name] = _build_params(raw, value, source, default)
            continue
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = build_section(hints[name], value, source, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, kinds[name], f"{prefix}{name}", _at(source))
    return cls(**kwargs)


def _build_params(train: dict[str, Any], value: Any, source: str, default_algorithm: str) -> Any:
    """``[train.params]`` against the Params of the algorithm chosen in the same table."""
    algorithm = train.get("algorithm", default_algorithm)
    if not isinstance(algorithm, str):
        raise ConfigError(f"{_at(source)}'train.algorithm' must be a string (got {algorithm!r})")
    if algorithm not in ALGORITHMS and not checking_names():
        return dict(value) if isinstance(value, dict) else {}  # as stored
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{_at(source)}{ALGORITHMS.unknown_message(algorithm)}")
    params_cls = ALGORITHMS.get(algorithm).Params
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{_at(source)}'train.params' must be a table")
    own = {f.name for f in fields(params_cls)}
    for name in value:
        if name not in own:
            owner = _params_owner(name, algorithm)
            if owner is not None:
                raise ConfigError(
                    f"{_at(source)}'train.params.{name}' is a parameter of {owner}, not of "
                    f"{algorithm}: remove it or choose algorithm {owner}"
                )
    return build_section(params_cls, value, source, prefix="train.params.")
