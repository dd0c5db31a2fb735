"""Which database the built-in stores share (the ``sqlite`` and ``postgres`` store plugins).

``[store]`` empty (the default): the SQLite file ``xiaozhi-trio.db`` in the data folder, for one
server (several processes on one host may share it). ``[store] url = "postgresql://..."``: a
PostgreSQL database that several servers on several machines share::

    [store]
    url = "postgresql://xiaozhi:secret@db.example.lan:5432/xiaozhi"
    pool_size = 4          # connections per server process
    connect_timeout = 5    # seconds to wait for a connection before a query fails

Both give an object with the same API (``sqlite.Database`` and ``postgres.PostgresDatabase``); the
table owners (conversations, devices, the server secret) pick their migrations by its ``dialect``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..backends import ConfigError
from .sqlite import DATABASE_FILE, open_database

T = TypeVar("T")

#: Default connections per server process to PostgreSQL.
DEFAULT_POOL_SIZE = 4
#: Default seconds a query waits for a PostgreSQL connection (and a connection attempt lasts).
DEFAULT_CONNECT_TIMEOUT = 5.0


class SqlDatabase(Protocol):
    """What ``sqlite.Database`` and ``postgres.PostgresDatabase`` both offer the table owners."""

    dialect: str
    #: Where the data lives, for messages (a file path, or a URL without its password).
    where: str

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    async def transaction(self, fn: Callable[[Any], T]) -> T: ...

    def run_now(self, fn: Callable[[Any], T]) -> T: ...

    def migrate(self, name: str, statements: Sequence[str]) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the shared database is: ``url`` (PostgreSQL) or ``path`` (SQLite; empty: the data folder)."""

    url: str = ""
    path: str = ""
    pool_size: int = DEFAULT_POOL_SIZE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def is_postgres(self) -> bool:
        return bool(self.url)


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def database_config(table: Mapping[str, Any]) -> DatabaseConfig:
    """The database keys of ``[store]`` (``url``, ``path``, ``pool_size``, ``connect_timeout``), checked.

    Other keys are left to the table's other readers.
    """
    url = table.get("url", "")
    if not isinstance(url, str):
        raise ConfigError("[store] url must be a string (postgresql://user:password@host:port/dbname)")
    if url and not url.startswith(_POSTGRES_SCHEMES):
        raise ConfigError(f"[store] url must start with postgresql:// (SQLite is the default: leave url out), not {url.split(':')[0]!r}")
    path = table.get("path", "")
    if not isinstance(path, str):
        raise ConfigError("[store] path must be a string (a file path)")
    if url and path:
        raise ConfigError("[store] has both url (PostgreSQL) and path (SQLite); keep one")
    pool_size = table.get("pool_size", DEFAULT_POOL_SIZE)
    if not isinstance(pool_size, int) or isinstance(pool_size, bool) or not 1 <= pool_size <= 100:
        raise ConfigError(f"[store] pool_size must be an integer from 1 to 100, not {pool_size!r}")
    timeout = table.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 300:
        raise ConfigError(f"[store] connect_timeout must be a number of seconds from 0 to 300, not {timeout!r}")
    if not url and ("pool_size" in table or "connect_timeout" in table):
        raise ConfigError("[store] pool_size and connect_timeout are for PostgreSQL (url); SQLite has no pool")
    return DatabaseConfig(url, path, pool_size, float(timeout))


def open_shared_database(config: DatabaseConfig, data_dir: Path) -> SqlDatabase:
    """Open the database ``config`` names; ``DatabaseError`` (with the reason) if it cannot be reached."""
    if config.is_postgres:
        from .postgres import open_postgres  # the driver is an optional extra

        return open_postgres(config.url, pool_size=config.pool_size, timeout=config.connect_timeout)
    path = Path(config.path).expanduser() if config.path else data_dir / DATABASE_FILE
    return open_database(path)
