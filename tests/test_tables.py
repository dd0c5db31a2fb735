"""``parse_table``: the one parser of config tables, with the same rules for every table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.tables import Between, NonEmptyStr, OneOf, Seconds, parse_table


@dataclass(frozen=True)
class Inner:
    name: NonEmptyStr
    size: Annotated[int, Between(1, 10)] = 1


@dataclass(frozen=True)
class Example:
    flag: bool = False
    count: Annotated[int, Between(0, 100)] = 3
    ratio: float = 0.5
    timeout: Seconds = 1.0
    numbers: tuple[int, ...] = ()
    flags: tuple[bool, ...] = ()
    mode: Annotated[str, OneOf("a", "b")] = "a"
    limit: Annotated[int, Between(1)] | None = None
    either: int | str = 0
    variables: Mapping[str, str] = field(default_factory=dict)
    inner: Inner | None = None
    file: Path | None = None


def test_defaults_and_conversions():
    assert parse_table("x", Example, None) == Example()
    parsed = parse_table("x", Example, {"ratio": 2, "numbers": [1, 2], "file": "~/a", "inner": {"name": " n "}})
    assert parsed.ratio == 2.0 and isinstance(parsed.ratio, float)
    assert parsed.numbers == (1, 2)
    assert parsed.file == Path("~/a").expanduser()
    assert parsed.inner == Inner("n")
    assert parse_table("x", Example, {"either": "word"}).either == "word"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"colour": 1}, "unknown key(s) in [x]: colour; valid keys: count, either, file"),
        ({"count": True}, "[x] count must be int, not bool True"),
        ({"flag": 1}, "[x] flag must be bool, not int 1"),
        ({"numbers": [1, True]}, "[x] numbers[1] must be int, not bool True"),
        ({"flags": [True, 0]}, "[x] flags[1] must be bool, not int 0"),
        ({"numbers": 3}, "[x] numbers must be a list of int, not int 3"),
        ({"count": 101}, "[x] count must be between 0 and 100, not 101"),
        ({"timeout": 0}, "[x] timeout must be more than 0, not 0.0"),
        ({"timeout": float("inf")}, "[x] timeout must be more than 0, not inf"),
        ({"mode": "c"}, "[x] mode must be one of 'a', 'b', not 'c'"),
        ({"limit": 0}, "[x] limit must be at least 1, not 0"),
        ({"limit": "many"}, "[x] limit must be int, not str 'many'"),
        ({"either": 1.5}, "[x] either must be int or str, not float 1.5"),
        ({"variables": {"a": 1}}, "[x] variables.a must be str, not int 1"),
        ({"inner": {"size": 2}}, "[x.inner] needs name"),
        ({"inner": {"name": "n", "size": 0}}, "[x.inner] size must be between 1 and 10, not 0"),
        ({"inner": "n"}, "[x.inner] must be a table"),
        ({"file": " "}, "[x] file must be a file path (a string), not str ' '"),
    ],
)
def test_every_mistake_is_named(table, message):
    with pytest.raises(ConfigError) as caught:
        parse_table("x", Example, table)
    assert str(caught.value).startswith(message)


@given(st.booleans())
def test_a_boolean_is_never_a_number_anywhere(value):
    for key in ("count", "ratio", "timeout", "limit"):
        with pytest.raises(ConfigError, match="bool"):
            parse_table("x", Example, {key: value})
    with pytest.raises(ConfigError, match="bool"):
        parse_table("x", Example, {"numbers": [value]})


@given(st.integers(min_value=-5, max_value=5))
def test_a_number_is_never_a_boolean_anywhere(value):
    with pytest.raises(ConfigError, match="must be bool"):
        parse_table("x", Example, {"flag": value})
    with pytest.raises(ConfigError, match="must be bool"):
        parse_table("x", Example, {"flags": [value]})
