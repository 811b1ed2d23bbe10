"""A setting described once: a config field that is also a ``driftscope run`` flag.

:func:`option` puts a field's help, flag name, metavar and group on the field itself
(``field(metadata=...)``); its type hint gives the rest: ``Literal[...]`` the choices, ``X | None``
that it may be empty, ``tuple[str, ...]`` a list of strings. :func:`field_types` reads the hints
with ``typing.get_type_hints`` (not annotation text), and from them :func:`coerce` checks a TOML
value and :func:`check_choices` a section's choices; :mod:`driftscope.cli.flags` derives the flags
from the same fields, as it does for every algorithm's ``Params``. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from driftscope.errors import ConfigError

#: the largest magnitude of a float setting: what float32 holds (every number is used as a float32
#: tensor or stored in the run file; 1e308 would overflow there)
FLOAT_MAX = 3.4028234663852886e38
#: the largest magnitude of an integer setting: what int64 (the run file's integer type) holds
INT_MAX = 2**63 - 1


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with a ``driftscope run`` flag.

    ``help``: the flag's help (``{names}`` becomes the names of the registry given as ``names``);
    the flag is ``--<field-name>`` unless ``flag`` names it otherwise; ``metavar`` and ``group``
    (default: the section's) shape the help. A field without ``help`` has no flag."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a field's type hint says: its scalar type (None: anything), whether it may be None,
    its choices (``Literal``), whether it is a list of strings (``tuple[str, ...]``)."""

    base: type | None
    optional: bool
    choices: tuple[str, ...] | None
    is_list: bool

    @classmethod
    def of(cls, hint: Any) -> FieldType:
        optional = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else Any
        origin = typing.get_origin(hint)
        if origin is tuple:
            return cls(str, optional, None, True)
        if origin is Literal:
            return cls(str, optional, tuple(str(a) for a in typing.get_args(hint)), False)
        return cls(hint if hint in (bool, int, float, str) else None, optional, None, False)


def field_types(cls: type) -> dict[str, FieldType]:
    """Each field of the dataclass ``cls`` (a config section, an algorithm's ``Params``) and
    what its type hint says."""
    hints = typing.get_type_hints(cls)
    return {f.name: FieldType.of(hints[f.name]) for f in dataclasses.fields(cls)}


def check_choices(obj: Any) -> None:
    """Every ``Literal`` field of the dataclass ``obj`` holds one of its choices (one line)."""
    for name, kind in field_types(type(obj)).items():
        value = getattr(obj, name)
        if kind.choices is not None and value is not None and value not in kind.choices:
            raise ConfigError(f"unknown {name} '{value}': choose one of {', '.join(kind.choices)}")


def check_number(value: Any, key: str) -> None:
    """A numeric setting must be one that float32 (a float) or int64 (an integer) can hold."""
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite (got {value})")
        if abs(value) > FLOAT_MAX:
            raise ConfigError(
                f"{key} = {value:g} is out of range: a setting must lie within +-3.4e38 "
                "(what float32 holds)"
            )
    elif isinstance(value, int) and not -INT_MAX <= value <= INT_MAX:
        raise ConfigError(
            f"{key} = {value} is out of range: an integer setting must lie within +-(2**63 - 1) "
            "(what int64 holds)"
        )


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def coerce(value: Any, kind: FieldType, key: str, at: str = "") -> Any:
    """A TOML value checked against its field's type (``at``: the message's prefix naming the
    file), so a typo gives a clear message instead of a crash later."""
    if value is None:
        if kind.optional:
            return None
        raise ConfigError(f"{at}'{key}' cannot be empty")
    if kind.is_list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{at}'{key}' must be a list of strings (got {value!r})")
        return tuple(value)
    if kind.base is None:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind.base]
    if not ok:
        none_ok = " (or empty)" if kind.optional else ""
        raise ConfigError(f"{at}'{key}' must be {_TYPE_NAMES[kind.base]}{none_ok} (got {value!r})")
    if kind.base is float:
        value = float(value)
    try:
        check_number(value, f"'{key}'")
    except ConfigError as err:
        raise ConfigError(f"{at}{err}") from None
    return value
