"""Both shared databases for the store tests: SQLite in a temporary folder, and a fresh PostgreSQL
database per test in the server ``$XIAOZHI_TEST_POSTGRES_URL`` names.

``scripts/postgres-test-cluster run CMD`` starts a throw-away PostgreSQL and sets the variable (CI
does so); without it the PostgreSQL variants are skipped, and the run's summary says so loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from xiaozhi_trio.pipeline.store.database import SqlDatabase, database_config, open_shared_database
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE

POSTGRES_URL_ENV = "XIAOZHI_TEST_POSTGRES_URL"
SKIP_REASON = "PostgreSQL NOT TESTED"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    base = os.environ.get(POSTGRES_URL_ENV)
    if not base:
        pytest.skip(f"{SKIP_REASON}: ${POSTGRES_URL_ENV} is not set (run under scripts/postgres-test-cluster run)")
    import psycopg

    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        pytest.skip(f"{SKIP_REASON}: cannot connect to ${POSTGRES_URL_ENV}: {e}")
    name = f"xz_test_{uuid.uuid4().hex[:16]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(base, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OpenDatabase = Callable[[], SqlDatabase]


@pytest.fixture(params=["sqlite", "postgres"])
def store_table(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A ``[store]`` table naming a fresh database of each kind."""
    if request.param == "sqlite":
        # The data folder's file: the SQLite device store always lives there.
        return {"path": str(tmp_path / "data" / DATABASE_FILE)}
    return {"url": request.getfixturevalue("postgres_url")}


@pytest.fixture
def open_db(store_table: dict[str, str], tmp_path: Path) -> Iterator[OpenDatabase]:
    """Opens another connection (SQLite) or pool (PostgreSQL) to the test's database; all closed after."""
    opened: list[SqlDatabase] = []

    def open_one() -> SqlDatabase:
        database = open_shared_database(database_config(store_table), tmp_path)
        opened.append(database)
        return database

    yield open_one
    for database in opened:
        database.close()
