"""Built-in plugin: the SQLite stores (``[store] backend = "sqlite"``, the default).

Conversations (agent memory per device) and the device registry live in the data folder's SQLite
file. It is registered through ``xiaozhi_register_stores`` exactly as a third-party store (a shared
PostgreSQL, say) would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.registry import RegistryView
from xiaozhi_trio.pipeline.store.context import StoreContext
from xiaozhi_trio.pipeline.store.conversations import DEFAULT_MAX_HISTORY, SqliteConversationStore
from xiaozhi_trio.pipeline.store.devices import DeviceRegistry
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE, open_database
from xiaozhi_trio.pipeline.tables import Between, parse_table

NAME = "sqlite"


@dataclass(frozen=True)
class SqliteStoreOptions:
    """The ``[store]`` options of the SQLite stores."""

    #: The conversations' database file; empty: ``<data_dir>/xiaozhi-trio.db``. The device registry
    #: always stays in that shared file.
    path: str = ""
    #: Chat-history messages kept per (agent, device); the oldest beyond this are dropped.
    max_history_messages: Annotated[int, Between(1)] = DEFAULT_MAX_HISTORY


def _options(options: Mapping[str, Any]) -> SqliteStoreOptions:
    return parse_table("store", SqliteStoreOptions, options)


def open_conversations(context: StoreContext, options: Mapping[str, Any]) -> SqliteConversationStore:
    """The conversation store in the SQLite file ``[store] path`` names (default: the shared one)."""
    settings = _options(options)
    path = Path(settings.path).expanduser() if settings.path else context.data_dir / DATABASE_FILE
    return SqliteConversationStore.open(path, max_history=settings.max_history_messages)


def open_devices(context: StoreContext, options: Mapping[str, Any]) -> DeviceRegistry:
    """The device registry in the data folder's shared SQLite file."""
    _options(options)  # the same table as the conversations': reject what neither store knows
    return DeviceRegistry(open_database(context.data_dir / DATABASE_FILE), context.devices, clock=context.clock)


@hookimpl
def xiaozhi_register_stores(registry: RegistryView) -> None:
    registry.add("conversations", NAME, open_conversations, description="agent memory in the data folder's SQLite file")
    registry.add("devices", NAME, open_devices, description="device registry in the data folder's SQLite file")
