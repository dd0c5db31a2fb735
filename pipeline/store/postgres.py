"""Shared PostgreSQL plumbing: the same API as ``sqlite.Database``, for several servers at once.

``PostgresDatabase`` is what the table owners (the conversation store, the device registry, the
server secret) use when ``[store] url = "postgresql://..."``. Their SQL is written once with ``?``
placeholders and runs on both databases; only the table definitions (migrations) differ per
dialect.

Driver: psycopg 3 with its connection pool, used from trio worker threads (psycopg's async API
needs asyncio). Every transaction runs at SERIALIZABLE isolation, so a read-then-write done by two
servers at once (two owners binding the same activation code, two servers creating a device's
row) behaves as if they ran one after the other: the loser gets a serialization failure and is
retried from the start, where it sees the winner's result. Connections are checked when taken
from the pool, so a database that restarts costs the queries made while it is down (each raises
``DatabaseError``, a ``BackendError``: a turn apologises) and the pool reconnects by itself.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import trio

from .sqlite import DatabaseError, ThreadedDatabase, migration_step

log = logging.getLogger(__name__)

T = TypeVar("T")
Params = Sequence[Any]

#: A transaction that loses a race (serialization failure, deadlock) is retried this many times.
MAX_ATTEMPTS = 8

#: A fixed key for the advisory lock that serialises migrations across servers.
_MIGRATION_LOCK = 0x78696F7A  # "xioz"


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # still useful without the driver
        return url.rpartition("@")[2]
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable PostgreSQL URL>"
    user, host, port, name = (str(parts.get(k) or "") for k in ("user", "host", "port", "dbname"))
    where = f"{host or 'localhost'}:{port}" if port else host or "localhost"
    return f"postgresql://{user + '@' if user else ''}{where}/{name}"


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    # The owners write SQLite's "?"; psycopg wants "%s" (and a literal "%" doubled).
    return sql.replace("%", "%%").replace("?", "%s")


class Row(tuple):
    """A result row indexable by position (like a tuple) and by column name (like ``sqlite3.Row``)."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


class Connection:
    """What a ``transaction`` function receives: the subset of ``sqlite3.Connection`` the owners use."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement; return the cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        cursor = self._connection.cursor(row_factory=_row_factory)
        cursor.execute(_placeholders(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Iterable[Params]) -> Any:
        """Run one statement for each parameter row."""
        cursor = self._connection.cursor(row_factory=_row_factory)
        cursor.executemany(_placeholders(sql), [tuple(r) for r in rows])
        return cursor


class PostgresDatabase(ThreadedDatabase):
    """A pool of PostgreSQL connections used from worker threads. Open it with ``open_postgres``.

    Its ``transaction(fn)`` is serializable: ``fn`` must be free of side effects outside the
    database, because when it loses a race with another server it runs again from the start.
    """

    dialect = "postgres"

    def __init__(self, url: str, pool: Any, *, timeout: float, pool_size: int) -> None:
        self.url = url
        self.where = redact(url)
        self.timeout = timeout
        self._pool = pool
        # No more threads than pooled connections: the others wait in trio, not in a thread.
        self._limiter = trio.CapacityLimiter(pool_size)

    # ---- synchronous core, run in a worker thread -------------------------------------------

    def _run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction (committed if it returns), retrying lost races."""
        import psycopg
        from psycopg import errors
        from psycopg_pool import PoolClosed, PoolTimeout

        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._pool.connection(timeout=self.timeout) as connection:
                    return fn(Connection(connection))
            except (errors.SerializationFailure, errors.DeadlockDetected) as e:
                if attempt == MAX_ATTEMPTS:
                    raise DatabaseError(f"{self.where}: gave up after {attempt} conflicting attempts: {e}") from e
                # Another server won this round; a short random pause keeps the two from colliding again.
                time.sleep(random.uniform(0.001, 0.005 * attempt))
            except PoolTimeout as e:
                raise DatabaseError(f"{self.where}: no database connection within {self.timeout:g} s "
                                    f"(the database is down or every pooled connection is busy)") from e
            except PoolClosed as e:
                raise DatabaseError(f"{self.where} is closed") from e
            except psycopg.Error as e:
                raise DatabaseError(f"{self.where}: {e}".strip()) from e
        raise AssertionError("unreachable")

    def _in_transaction(self, fn: Callable[[Connection], T]) -> Callable[[Connection], T]:
        # Every ``_run`` is a transaction already (committed when the pooled connection is returned).
        return fn

    # ---- startup-time API --------------------------------------------------------------------

    def migrate(self, name: str, statements: Sequence[str]) -> int:
        """Bring ``name``'s tables up to date (see ``sqlite.Database.migrate``). Synchronous.

        Each step takes an advisory lock first, so servers starting together migrate one at a time.
        """
        import psycopg

        def step(c: Connection) -> int | None:
            c.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            return migration_step(c, name, statements, self.where)

        try:
            # Its own READ COMMITTED connection: after waiting for the lock, each statement sees
            # what the previous holder committed (a serializable snapshot would not).
            with psycopg.connect(self.url, connect_timeout=max(1, round(self.timeout))) as connection:
                while True:
                    with connection.transaction():
                        version = step(Connection(connection))
                    if version is None:
                        break
                    log.info("database %s: %s tables migrated to version %d", self.where, name, version)
        except psycopg.Error as e:
            raise DatabaseError(f"{self.where}: migrating the {name!r} tables failed: {e}") from e
        return len(statements)

    def close(self) -> None:
        """Close every pooled connection; later queries raise ``DatabaseError``."""
        self._pool.close()


def open_postgres(url: str, *, pool_size: int = 4, timeout: float = 5.0) -> PostgresDatabase:
    """Connect to ``url`` (``postgresql://user:password@host:port/dbname``) and open a pool.

    Raises ``DatabaseError`` saying why (driver missing, host unreachable, password wrong, no such
    database) when a first connection cannot be made within ``timeout`` seconds.
    """
    where = redact(url)
    try:
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout
    except ImportError as e:
        raise DatabaseError(
            f"[store] url names PostgreSQL but its driver is not installed ({e}); "
            "pip install 'xiaozhi-trio[postgres]'"
        ) from None
    connect_timeout = max(1, round(timeout))
    try:
        # One plain connection first: its error says what is wrong, where a pool would only time out.
        psycopg.connect(url, connect_timeout=connect_timeout).close()
    except psycopg.Error as e:
        raise DatabaseError(f"cannot connect to PostgreSQL at {where}: {str(e).strip()}") from None

    def configure(connection: Any) -> None:
        connection.isolation_level = psycopg.IsolationLevel.SERIALIZABLE

    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=pool_size,
        open=False,
        configure=configure,
        # A connection broken by a database restart is replaced before use, not handed to a query.
        check=ConnectionPool.check_connection,
        timeout=timeout,
        kwargs={"connect_timeout": connect_timeout},
        name=f"xiaozhi-trio {where}",
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except (PoolTimeout, psycopg.Error) as e:  # not ready in time, or the first connection failed
        pool.close()
        raise DatabaseError(f"cannot open a connection pool to PostgreSQL at {where}: {e}") from None
    return PostgresDatabase(url, pool, timeout=timeout, pool_size=pool_size)
