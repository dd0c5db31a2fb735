"""Per-device agent memory: what an agent must remember about a device between turns and restarts.

Two kinds of memory, both keyed by (agent key, device id):

* a small state dict: for Coze the conversation id, bot id and user id, so that a device that
  reconnects (or a server that restarts) continues the same Coze conversation;
* a chat history for agents that send the whole conversation with each request (the
  OpenAI-compatible ones): a bounded list of message dicts, oldest first.

``ConversationStore`` is the interface. ``SqlConversationStore`` implements it over the shared
database (``store.database``): ``SqliteConversationStore`` in the data folder's SQLite file for one
server (the built-in ``sqlite`` store plugin), ``PostgresConversationStore`` in PostgreSQL for
several servers behind a load balancer (a device may reach any of them; the built-in ``postgres``
store plugin). Any other database: a plugin implements ``ConversationStore`` over it, registers it
with the ``xiaozhi_register_stores`` hook, and the config names it::

    [store]
    backend = "postgres"      # every other key of [store] is that plugin's option
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .database import SqlDatabase
from .sqlite import open_database

log = logging.getLogger(__name__)

#: Messages kept per (agent, device) unless ``[store] max_history_messages`` says otherwise.
DEFAULT_MAX_HISTORY = 200


@runtime_checkable
class ConversationStore(Protocol):
    """Per-(agent, device) state and chat history. Every method is safe to call concurrently."""

    async def get_state(self, agent: str, device_id: str) -> dict[str, Any] | None:
        """The state last stored for ``device_id`` by ``agent``, or None."""
        ...

    async def put_state(self, agent: str, device_id: str, state: Mapping[str, Any]) -> None:
        """Replace the stored state (a JSON-serialisable mapping)."""
        ...

    async def swap_state(
        self, agent: str, device_id: str, state: Mapping[str, Any], expected: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Store ``state`` only if the stored state is still ``expected``, or there is none; atomically.

        Returns the state stored afterwards: ``state``, or what another session or server stored
        first (then the caller uses that one: a device gets one conversation, not two).
        """
        ...

    async def load_history(self, agent: str, device_id: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` history messages, oldest first."""
        ...

    async def append_history(self, agent: str, device_id: str, messages: list[Mapping[str, Any]]) -> None:
        """Append messages (JSON-serialisable mappings) atomically; the oldest beyond the bound go."""
        ...

    async def clear(self, agent: str, device_id: str) -> None:
        """Forget both the state and the history of ``device_id`` for ``agent``."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...


#: The tables per dialect: append new steps to both lists, never edit or reorder old ones.
_MIGRATIONS = {
    "sqlite": [
        "CREATE TABLE agent_state ("
        " agent TEXT NOT NULL, device_id TEXT NOT NULL, state TEXT NOT NULL, updated_at REAL NOT NULL,"
        " PRIMARY KEY (agent, device_id))",
        "CREATE TABLE agent_history ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, device_id TEXT NOT NULL,"
        " message TEXT NOT NULL, created_at REAL NOT NULL)",
        "CREATE INDEX agent_history_by_device ON agent_history (agent, device_id, id)",
    ],
    "postgres": [
        "CREATE TABLE agent_state ("
        " agent TEXT NOT NULL, device_id TEXT NOT NULL, state TEXT NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (agent, device_id))",
        "CREATE TABLE agent_history ("
        " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, agent TEXT NOT NULL, device_id TEXT NOT NULL,"
        " message TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX agent_history_by_device ON agent_history (agent, device_id, id)",
    ],
}


def _to_json(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable: {e}") from None


_SELECT_STATE = "SELECT state FROM agent_state WHERE agent = ? AND device_id = ?"
_UPSERT_STATE = (
    "INSERT INTO agent_state (agent, device_id, state, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (agent, device_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)


def _state(rows: list[Any], agent: str, device_id: str) -> dict[str, Any] | None:
    """The state in the rows of ``_SELECT_STATE`` (None if none, or if it is damaged)."""
    if not rows:
        return None
    try:
        state = json.loads(rows[0][0])
    except json.JSONDecodeError:
        log.error("stored %s state for device %s is not valid JSON; ignoring it", agent, device_id)
        return None
    return state if isinstance(state, dict) else None


class SqlConversationStore:
    """``ConversationStore`` in the shared database (SQLite or PostgreSQL: the same SQL)."""

    def __init__(self, database: SqlDatabase, *, max_history: int = DEFAULT_MAX_HISTORY) -> None:
        if max_history < 1:
            raise ValueError("max_history must be at least 1")
        self.database = database
        self.max_history = max_history
        database.migrate("conversations", _MIGRATIONS[database.dialect])

    async def get_state(self, agent: str, device_id: str) -> dict[str, Any] | None:
        rows = await self.database.fetch(_SELECT_STATE, (agent, device_id))
        return _state(rows, agent, device_id)

    async def put_state(self, agent: str, device_id: str, state: Mapping[str, Any]) -> None:
        text = _to_json(state, f"{agent} state")
        await self.database.execute(_UPSERT_STATE, (agent, device_id, text, time.time()))

    async def swap_state(
        self, agent: str, device_id: str, state: Mapping[str, Any], expected: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        text = _to_json(state, f"{agent} state")
        wanted = dict(expected) if expected is not None else None

        def swap(connection: Any) -> dict[str, Any]:
            current = _state(connection.execute(_SELECT_STATE, (agent, device_id)).fetchall(), agent, device_id)
            if current is not None and current != wanted:
                return current
            connection.execute(_UPSERT_STATE, (agent, device_id, text, time.time()))
            return json.loads(text)

        return await self.database.transaction(swap)

    async def load_history(self, agent: str, device_id: str, limit: int) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        rows = await self.database.fetch(
            "SELECT message FROM agent_history WHERE agent = ? AND device_id = ? ORDER BY id DESC LIMIT ?",
            (agent, device_id, limit),
        )
        messages = []
        for (text,) in reversed(rows):
            try:
                message = json.loads(text)
            except json.JSONDecodeError:
                log.error("a stored %s history message for device %s is not valid JSON; skipping it", agent, device_id)
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages

    async def append_history(self, agent: str, device_id: str, messages: list[Mapping[str, Any]]) -> None:
        if not messages:
            return
        texts = [_to_json(m, f"{agent} history message") for m in messages]
        now = time.time()
        keep = self.max_history

        def write(connection: Any) -> None:
            connection.executemany(
                "INSERT INTO agent_history (agent, device_id, message, created_at) VALUES (?, ?, ?, ?)",
                [(agent, device_id, text, now) for text in texts],
            )
            # Keep the newest ``keep`` rows of this device: drop everything older than the keep-th newest.
            connection.execute(
                "DELETE FROM agent_history WHERE agent = ? AND device_id = ? AND id < ("
                " SELECT id FROM agent_history WHERE agent = ? AND device_id = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (agent, device_id, agent, device_id, keep - 1),
            )

        await self.database.transaction(write)

    async def clear(self, agent: str, device_id: str) -> None:
        def delete(connection: Any) -> None:
            connection.execute("DELETE FROM agent_state WHERE agent = ? AND device_id = ?", (agent, device_id))
            connection.execute("DELETE FROM agent_history WHERE agent = ? AND device_id = ?", (agent, device_id))

        await self.database.transaction(delete)

    async def aclose(self) -> None:
        self.database.close()


class SqliteConversationStore(SqlConversationStore):
    """``ConversationStore`` in an SQLite file (one server, or several processes on one host)."""

    @classmethod
    def open(cls, path: Path, *, max_history: int = DEFAULT_MAX_HISTORY) -> SqliteConversationStore:
        """Open (creating if needed) the store in the SQLite file at ``path``."""
        return cls(open_database(path), max_history=max_history)


class PostgresConversationStore(SqlConversationStore):
    """``ConversationStore`` in PostgreSQL, shared by every server that uses the same database."""
