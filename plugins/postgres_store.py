"""Built-in plugin: the PostgreSQL stores (``[store] backend = "postgres"``, implied by a
``postgresql://`` ``url``), for several servers that share devices, tokens and conversations.

Both stores (conversations and devices) are the same SQL as the SQLite ones, on a connection pool
to the database ``url`` names (see ``pipeline/store/postgres.py``); the server secret lives there
too (``pipeline/ops/services.py``). Needs ``pip install 'xiaozhi-trio[postgres]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.registry import RegistryView
from xiaozhi_trio.pipeline.store.context import StoreContext
from xiaozhi_trio.pipeline.store.conversations import DEFAULT_MAX_HISTORY, PostgresConversationStore
from xiaozhi_trio.pipeline.store.database import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_SIZE,
    database_config,
    open_shared_database,
)
from xiaozhi_trio.pipeline.store.devices import DeviceRegistry
from xiaozhi_trio.pipeline.tables import Between, parse_table

NAME = "postgres"


@dataclass(frozen=True)
class PostgresStoreOptions:
    """The ``[store]`` options of the PostgreSQL stores."""

    #: ``postgresql://user:password@host:port/dbname``.
    url: str = ""
    #: Connections per server process (each store has its pool).
    pool_size: Annotated[int, Between(1, 100)] = DEFAULT_POOL_SIZE
    #: Seconds a query waits for a connection (and a connection attempt lasts) before it fails.
    connect_timeout: Annotated[float, Between(0, 300, exclusive_low=True)] = DEFAULT_CONNECT_TIMEOUT
    #: Chat-history messages kept per (agent, device); the oldest beyond this are dropped.
    max_history_messages: Annotated[int, Between(1)] = DEFAULT_MAX_HISTORY


def _database(options: Mapping[str, Any]) -> tuple[PostgresStoreOptions, Any]:
    settings = parse_table("store", PostgresStoreOptions, options)
    if not settings.url:
        raise ConfigError('[store] backend "postgres" needs url = "postgresql://user:password@host:port/dbname"')
    where = database_config({"url": settings.url, "pool_size": settings.pool_size,
                             "connect_timeout": settings.connect_timeout})
    return settings, where


def open_conversations(context: StoreContext, options: Mapping[str, Any]) -> PostgresConversationStore:
    """The conversation store in the PostgreSQL database ``[store] url`` names."""
    settings, where = _database(options)
    return PostgresConversationStore(open_shared_database(where, context.data_dir),
                                     max_history=settings.max_history_messages)


def open_devices(context: StoreContext, options: Mapping[str, Any]) -> DeviceRegistry:
    """The device registry in the PostgreSQL database ``[store] url`` names."""
    _, where = _database(options)
    return DeviceRegistry(open_shared_database(where, context.data_dir), context.devices, clock=context.clock)


@hookimpl
def xiaozhi_register_stores(registry: RegistryView) -> None:
    registry.add("conversations", NAME, open_conversations, description="agent memory in a shared PostgreSQL database")
    registry.add("devices", NAME, open_devices, description="device registry in a shared PostgreSQL database")
