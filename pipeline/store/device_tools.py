"""Each device's last tool listing, kept so a bot owner can see it without the device at hand.

When a session's MCP client has listed a device's tools, the listing is written here (one row per
device, replaced by the next listing). ``xiaozhi-trio tools`` reads it, from another process, to
show the names to enter in Coze. The table lives in the shared database file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends import ToolSpec
from ..protocol.identity import normalise_device_id
from .sqlite import Database

_MIGRATIONS = [
    "CREATE TABLE device_tools (device_id TEXT PRIMARY KEY, listed_at REAL NOT NULL, tools TEXT NOT NULL)",
]


@dataclass(frozen=True)
class KnownTools:
    """One device's tools as it last listed them."""

    device_id: str
    #: Unix time of the listing.
    listed_at: float
    tools: tuple[ToolSpec, ...]


def _to_json(specs: Sequence[ToolSpec]) -> str:
    return json.dumps(
        [{"name": s.name, "description": s.description, "input_schema": dict(s.input_schema)} for s in specs],
        ensure_ascii=False,
    )


def _from_json(text: str) -> tuple[ToolSpec, ...]:
    entries: list[dict[str, Any]] = json.loads(text)
    return tuple(ToolSpec(e["name"], e.get("description", ""), e.get("input_schema") or {}) for e in entries)


class DeviceToolLists:
    """The ``device_tools`` table. Safe to use from many sessions at once."""

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        """Use ``database`` (migrating the table now, synchronously); ``clock`` gives Unix time."""
        self.database = database
        self._clock = clock
        database.migrate("device_tools", _MIGRATIONS)

    async def save(self, device_id: str, specs: Sequence[ToolSpec]) -> None:
        """Record ``specs`` as the device's current tools."""
        await self.database.execute(
            "INSERT INTO device_tools (device_id, listed_at, tools) VALUES (?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET listed_at = excluded.listed_at, tools = excluded.tools",
            (normalise_device_id(device_id), self._clock(), _to_json(specs)),
        )

    async def get(self, device_id: str) -> KnownTools | None:
        """The device's last listing, or None if it never listed its tools here."""
        rows = await self.database.fetch(
            "SELECT device_id, listed_at, tools FROM device_tools WHERE device_id = ?", (normalise_device_id(device_id),)
        )
        return KnownTools(rows[0][0], rows[0][1], _from_json(rows[0][2])) if rows else None

    async def all(self) -> list[KnownTools]:
        """Every device's last listing, the most recent first."""
        rows = await self.database.fetch("SELECT device_id, listed_at, tools FROM device_tools ORDER BY listed_at DESC")
        return [KnownTools(row[0], row[1], _from_json(row[2])) for row in rows]
