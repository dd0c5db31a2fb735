"""Shared SQLite plumbing: one database file in the data folder, used by several table owners.

Each owner (the conversation store, the device registry, ...) keeps its own tables and migrates them
by name::

    db = open_database(data_dir / DATABASE_FILE)
    db.migrate("conversations", [
        "CREATE TABLE agent_state (...)",          # version 1
        "ALTER TABLE agent_state ADD COLUMN ...",   # version 2, appended later, never edited
    ])
    rows = await db.fetch("SELECT ... WHERE device_id = ?", (device_id,))

Queries run in a worker thread (``trio.to_thread.run_sync``) so that a slow disk never stalls the
event loop. The connection is in autocommit mode; ``transaction(fn)`` runs several statements
atomically. WAL journaling lets readers proceed during a write, and a busy timeout lets several
processes (or several ``Database`` objects) share the file.
"""

from __future__ import annotations

import abc
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..backends import BackendError

log = logging.getLogger(__name__)

#: The database file every table owner shares, inside the data folder.
DATABASE_FILE = "xiaozhi-trio.db"

#: How long a statement waits for another writer (another process) before failing, in ms.
BUSY_TIMEOUT_MS = 5000

T = TypeVar("T")
Params = Sequence[Any]


class DatabaseError(BackendError):
    """The database could not be opened, migrated or queried; the message names the database.

    A ``BackendError``: when it happens inside a turn (an agent reading its memory) the turn ends
    with the apology and the session goes on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="database")


class ThreadedDatabase(abc.ABC):
    """The async API both databases share: each call runs in a worker thread through ``_run``.

    Subclasses provide ``_run(fn)`` (run ``fn(connection)`` in a worker thread, translating driver
    errors into ``DatabaseError``), ``_in_transaction(fn)`` (wrap ``fn`` so that it runs in one
    transaction) and ``_limiter`` (how many worker threads may wait for the database at once).
    """

    _limiter: trio.CapacityLimiter

    @abc.abstractmethod
    def _run(self, fn: Callable[[Any], T]) -> T: ...

    @abc.abstractmethod
    def _in_transaction(self, fn: Callable[[Any], T]) -> Callable[[Any], T]: ...

    # ---- async API ---------------------------------------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement (committed at once); return the number of rows it changed."""
        return await trio.to_thread.run_sync(
            self._run, lambda c: c.execute(sql, params).rowcount, limiter=self._limiter
        )

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> int:
        """Run one statement for each parameter row, all in one transaction."""
        rows = list(rows)
        return await self.transaction(lambda c: c.executemany(sql, rows).rowcount)

    async def fetch(self, sql: str, params: Params = ()) -> list[Any]:
        """Run a query and return all its rows (indexable by position and by column name)."""
        return await trio.to_thread.run_sync(
            self._run, lambda c: c.execute(sql, params).fetchall(), limiter=self._limiter
        )

    async def transaction(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` in a worker thread inside one transaction; return its result.

        ``fn`` must be synchronous and quick; if it raises, nothing it did is kept.
        """
        return await trio.to_thread.run_sync(self._run, self._in_transaction(fn), limiter=self._limiter)

    def run_now(self, fn: Callable[[Any], T]) -> T:
        """``transaction`` for startup code that has no event loop yet (synchronous)."""
        return self._run(self._in_transaction(fn))


class Database(ThreadedDatabase):
    """One SQLite connection, serialised behind a lock and used from worker threads."""

    #: Which migrations the table owners apply (``"sqlite"`` or ``"postgres"``).
    dialect = "sqlite"

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self.where = str(path)
        self._connection: sqlite3.Connection | None = connection
        # The connection is used from whichever worker thread runs a query; one at a time.
        self._lock = threading.Lock()
        # At most one worker thread per database waits on the lock; the rest wait in trio.
        self._limiter = trio.CapacityLimiter(1)

    # ---- synchronous core, run in a worker thread -------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._connection is None:
                raise DatabaseError(f"database {self.path} is closed")
            try:
                return fn(self._connection)
            except sqlite3.Error as e:
                raise DatabaseError(f"database {self.path}: {e}") from e

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
        def run(connection: sqlite3.Connection) -> T:
            # IMMEDIATE takes the write lock up front, so two writers never deadlock on an upgrade.
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        return run

    # ---- startup-time API --------------------------------------------------------------------

    def migrate(self, name: str, statements: Sequence[str]) -> int:
        """Bring ``name``'s tables up to date; return the schema version now in place.

        ``statements[i]`` moves ``name``'s schema from version ``i`` to ``i + 1``; each runs in its
        own transaction together with the version bump. Append new statements; never edit or reorder
        old ones. Synchronous: call it once at startup, before serving.
        """

        def step(connection: sqlite3.Connection) -> int | None:
            return migration_step(connection, name, statements, f"database {self.path}")

        self._run(
            lambda c: c.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        )
        version = None
        # One step per transaction, re-reading the version inside it: another process migrating
        # the same file at the same moment cannot make a step run twice.
        while (next_version := self._run(self._in_transaction(step))) is not None:
            version = next_version
            log.info("database %s: %s tables migrated to version %d", self.path, name, version)
        return len(statements)

    def close(self) -> None:
        """Close the connection; later queries raise ``DatabaseError``."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def migration_step(connection: Any, name: str, statements: Sequence[str], where: str) -> int | None:
    """Apply ``name``'s next migration step inside the caller's transaction; None if up to date.

    Shared by both databases (``connection`` takes ``?`` placeholders); ``where`` names the database
    in the error for a schema newer than this program.
    """
    row = connection.execute("SELECT version FROM schema_versions WHERE owner = ?", (name,)).fetchone()
    version = row[0] if row else 0
    if version > len(statements):
        raise DatabaseError(
            f"{where}: the {name!r} tables are at schema version {version}, newer "
            f"than this program knows ({len(statements)}); upgrade xiaozhi-trio"
        )
    if version == len(statements):
        return None
    connection.execute(statements[version])
    connection.execute(
        "INSERT INTO schema_versions (owner, version) VALUES (?, ?) "
        "ON CONFLICT (owner) DO UPDATE SET version = excluded.version",
        (name, version + 1),
    )
    return version + 1


def open_database(path: Path) -> Database:
    """Open (creating it and its folder if needed) the SQLite file at ``path``, in WAL mode."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise DatabaseError(f"cannot open database {path}: {e}") from e
    try:
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("database %s: WAL journaling unavailable (journal mode %s)", path, mode)
        # NORMAL is durable across process crashes in WAL mode; only a power cut may lose the last commits.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as e:
        connection.close()
        raise DatabaseError(f"cannot open database {path}: {e}") from e
    return Database(path, connection)
