"""Typed config tables: one parser for every table of the TOML file, the core's and the plugins'.

A table is described by a frozen dataclass; ``parse_table`` builds it from the parsed TOML and names
the table and key of anything wrong::

    @dataclass(frozen=True)
    class MyTtsOptions:
        voice: NonEmptyStr = "default"
        speed: Annotated[float, Between(0.5, 2.0)] = 1.0
        extra_voices: tuple[str, ...] = ()

    options = parse_table("tts", MyTtsOptions, options_mapping)

What the annotations mean, the same for every table:

* ``bool``, ``int``, ``float``, ``str``: the TOML type; ``Path``: a non-blank string, ``~`` expanded. A boolean is never a number and a number
  never a boolean (``true`` is not 1); an integer is accepted where a float is expected.
* ``tuple[T, ...]``: a TOML array whose every item is a ``T`` by the same rules (so ``[true]`` is
  not a list of integers).
* ``Mapping[str, T]``: a TOML table of ``T`` values (e.g. prompt variables).
* A nested frozen dataclass: a sub-table (``[agent.oauth]``), parsed by the same rules.
* ``A | B`` (and ``T | None``): the first of ``A``, ``B`` that fits; ``None`` is only a default, as
  TOML has no null.
* ``Annotated[T, Between(low, high)]`` / ``Annotated[T, OneOf(...)]`` / ``NonEmptyStr``: bounds,
  choices and non-blank strings (stripped).

Unknown keys are an error that lists the valid ones; a field without a default is a required key. Checks that need several keys at once belong in
the dataclass's ``__post_init__`` (raise with ``require``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from .backends import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Between:
    """A number from ``low`` to ``high`` (inclusive; None: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    #: True: ``low`` itself is not allowed (e.g. a timeout must be more than 0).
    exclusive_low: bool = False

    def check(self, where: str, value: Any) -> None:
        too_low = self.low is not None and (value <= self.low if self.exclusive_low else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high or not math.isfinite(value):
            raise ConfigError(f"{where} must be {self.describe()}, not {value!r}")

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            if self.exclusive_low:
                return f"more than {self.low:g} and at most {self.high:g}"
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"more than {self.low:g}" if self.exclusive_low else f"at least {self.low:g}"
        return f"at most {self.high:g}" if self.high is not None else "a number"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", choices)

    def check(self, where: str, value: Any) -> None:
        if value not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(repr(c) for c in self.choices)}, not {value!r}")


@dataclass(frozen=True)
class NonBlank:
    """A string with something besides white space; the value is stripped."""

    def check(self, where: str, value: Any) -> None:
        if not value.strip():
            raise ConfigError(f"{where} must be a non-empty string, not {value!r}")


#: A string that must not be empty or blank (stored stripped).
NonEmptyStr = Annotated[str, NonBlank()]
#: A positive number of seconds.
Seconds = Annotated[float, Between(0, None, exclusive_low=True)]

_Check = Between | OneOf | NonBlank


def type_name(annotation: Any) -> str:
    """How a config message names what ``annotation`` accepts ("a list of int", "int or str")."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(annotation)[0])}"
    if origin in (Mapping, dict, typing.Mapping):
        return f"a table of {type_name(typing.get_args(annotation)[1])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if dataclasses.is_dataclass(annotation):
        return "a table"
    return getattr(annotation, "__name__", str(annotation))


def parse_value(where: str, value: Any, annotation: Any) -> Any:
    """Check one config ``value`` against ``annotation`` (the rules in this module's docstring) and
    return it converted (ints to floats where a float is meant, lists to tuples, strings stripped
    by ``NonBlank``). ``where`` names it in the error, e.g. ``"[tts] speed"``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *checks = typing.get_args(annotation)
        value = parse_value(where, value, inner)
        for check in checks:
            if isinstance(check, _Check):
                check.check(where, value)
                if isinstance(check, NonBlank):
                    value = value.strip()
        return value
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(annotation):
            if option is type(None):
                continue
            try:
                return parse_value(where, value, option)
            except ConfigError as e:
                last = e
        if sum(a is not type(None) for a in typing.get_args(annotation)) == 1:
            raise last
        raise ConfigError(f"{where} must be {type_name(annotation)}, not {_shown(value)}")
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {type_name(annotation)}, not {_shown(value)}")
        return tuple(parse_value(f"{where}[{i}]", item, item_type) for i, item in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping):
        _key_type, item_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be {type_name(annotation)}, not {_shown(value)}")
        return {str(k): parse_value(f"{where}.{k}", v, item_type) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return parse_table(where.strip("[]").replace("] ", "."), annotation, value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is Path:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} must be a file path (a string), not {_shown(value)}")
        return Path(value.strip()).expanduser()
    if annotation is Any:
        return value
    # bool is an int subclass: never accept true for a number or 1 for a flag.
    if not isinstance(value, annotation) or isinstance(value, bool) != (annotation is bool):
        raise ConfigError(f"{where} must be {type_name(annotation)}, not {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def parse_table(name: str, cls: type[T], table: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from config table ``[name]`` (None: all defaults).

    Raises ``ConfigError`` naming the table and key for unknown keys, wrong types and values out of
    bounds; the dataclass's own ``__post_init__`` may raise ``ConfigError`` for checks that involve
    several keys.
    """
    if table is None:
        return cls()
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    known = [f.name for f in fields]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    missing = [f.name for f in fields if f.name not in table
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"[{name}] needs {', '.join(missing)}")
    values = {key: parse_value(f"[{name}] {key}", value, hints[key]) for key, value in table.items()}
    return cls(**values)


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds (for ``__post_init__`` checks)."""
    if not condition:
        raise ConfigError(message)
