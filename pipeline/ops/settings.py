"""Typed parsing of the operations config tables (``[ota]``, ``[auth]``, ``[devices]``, ``[metrics]``).

``pipeline.config`` keeps these tables as plain dicts in ``Config.extra``; each owner turns its table
into a frozen dataclass with ``parse_table``, which names any unknown or mistyped key precisely.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from ..backends import ConfigError

T = TypeVar("T")


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return f"a list of {typing.get_args(annotation)[0].__name__}"
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(annotation):
            if option is type(None):
                continue
            try:
                return _coerce(where, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {_type_name(annotation)}, not {type(value).__name__} {value!r}")
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list) or not all(isinstance(v, item_type) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of {item_type.__name__}, not {value!r}")
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: never accept true for a number or 1 for a flag.
    if not isinstance(value, annotation) or isinstance(value, bool) != (annotation is bool):
        raise ConfigError(f"{where} must be {_type_name(annotation)}, not {type(value).__name__} {value!r}")
    return value


def parse_table(name: str, cls: type[T], table: Mapping[str, Any] | None) -> T:
    """Build dataclass ``cls`` from config table ``[name]`` (None or missing: all defaults).

    Raises ``ConfigError`` naming the table and key for unknown keys and wrong types; the dataclass's
    own ``__post_init__`` may raise ``ConfigError`` for out-of-range values.
    """
    if table is None:
        return cls()
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    values = {key: _coerce(f"[{name}] {key}", value, hints[key]) for key, value in table.items()}
    return cls(**values)


def require(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition`` holds (for ``__post_init__`` checks)."""
    if not condition:
        raise ConfigError(message)
