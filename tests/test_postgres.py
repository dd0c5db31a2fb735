"""PostgreSQL specifics: clear errors for a wrong or unreachable database, the ``[store]`` keys,
concurrent migrations, the shared server secret, and a database that goes away and comes back
(the turn that needed it apologises, the session and the process go on, the pool reconnects)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from xiaozhi_trio.pipeline.backends import BackendError, ConfigError
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.store.context import StoreContext
from xiaozhi_trio.pipeline.store.conversations import PostgresConversationStore
from xiaozhi_trio.pipeline.store.database import database_config, open_shared_database
from xiaozhi_trio.pipeline.store.postgres import open_postgres, redact
from xiaozhi_trio.pipeline.store.secret import shared_secret
from xiaozhi_trio.pipeline.store.sqlite import DatabaseError

from xiaozhi_trio.plugins import postgres_store

from tests.databases import SKIP_REASON, _with_database
from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.harness import make_app, open_device
from tests.multiworker import RememberingAgentPlugin, worker_config

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres-test-cluster"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- configuration and connection errors ---------------------------------------------------------


def test_store_keys_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must start with postgresql://"):
        database_config({"url": "mysql://x@h/db"})
    with pytest.raises(ConfigError, match="both url"):
        database_config({"url": "postgresql://h/db", "path": "x.db"})
    with pytest.raises(ConfigError, match="SQLite has no pool"):
        database_config({"pool_size": 3})
    with pytest.raises(ConfigError, match="pool_size"):
        database_config({"url": "postgresql://h/db", "pool_size": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        postgres_store.open_conversations(StoreContext(tmp_path), {"url": "postgresql://h/db", "pool": 3})
    with pytest.raises(ConfigError, match="needs url"):
        postgres_store.open_devices(StoreContext(tmp_path), {})
    assert parse_config({"store": {"url": "postgresql://h/db"}}).store.backend == "postgres"
    assert parse_config({"store": {}}).store.backend == "sqlite"


def test_passwords_never_appear_in_messages() -> None:
    assert redact("postgresql://me:s3cret@db.lan:5433/xz") == "postgresql://me@db.lan:5433/xz"
    port = closed_port()
    with pytest.raises(DatabaseError) as caught:
        open_postgres(f"postgresql://me:s3cret@127.0.0.1:{port}/xz", timeout=2)
    message = str(caught.value)
    assert f"cannot connect to PostgreSQL at postgresql://me@127.0.0.1:{port}/xz" in message
    assert "s3cret" not in message and "refused" in message.lower()
    assert isinstance(caught.value, BackendError)  # inside a turn: an apology, not a crash


def test_a_database_that_does_not_exist_is_named(postgres_url: str) -> None:
    with pytest.raises(DatabaseError, match='database "no_such_db" does not exist'):
        open_postgres(_with_database(postgres_url, "no_such_db"), timeout=5)


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n[store]\nurl = "{url}"\nconnect_timeout = 2\n')
    return path


def test_check_and_serve_name_an_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"postgresql://xz:pw@127.0.0.1:{closed_port()}/xz")
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "store: cannot connect to PostgreSQL at postgresql://xz@127.0.0.1" in err and "pw@" not in err
    assert main(["serve", "--config", str(config)]) == 2
    assert "database error: cannot connect to PostgreSQL" in capsys.readouterr().err


def test_check_reports_a_reachable_database(tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    database = open_shared_database(database_config({"url": postgres_url}), tmp_path)
    assert database.dialect == "postgres"
    database.close()
    config = write_config(tmp_path, postgres_url)
    path = tmp_path / "config.toml"
    path.write_text(path.read_text() + '[vad]\nbackend = "no-such-vad"\n')
    main(["check", "--config", str(config)])  # the backends fail later; the store line comes first
    assert f"store: postgres {redact(postgres_url)}: ok" in capsys.readouterr().out


# ---- migrations and the secret -------------------------------------------------------------------


async def test_servers_starting_together_migrate_once(postgres_url: str, tmp_path: Path) -> None:
    databases = [open_postgres(postgres_url) for _ in range(4)]
    steps = ["CREATE TABLE t (a INTEGER)", "ALTER TABLE t ADD COLUMN b TEXT", "CREATE INDEX t_a ON t (a)"]
    async with trio.open_nursery() as nursery:
        for database in databases:
            nursery.start_soon(trio.to_thread.run_sync, database.migrate, "t", steps)
    rows = await databases[0].fetch("SELECT version FROM schema_versions WHERE owner = 't'")
    assert rows[0][0] == 3
    with pytest.raises(DatabaseError, match="newer than this program knows"):
        databases[1].migrate("t", steps[:1])
    stores = [PostgresConversationStore(database) for database in databases]  # another owner beside
    await stores[0].put_state("a", "d", {"x": 1})
    assert await stores[3].get_state("a", "d") == {"x": 1}
    for database in databases:
        database.close()


def test_every_server_on_one_database_shares_one_secret(postgres_url: str) -> None:
    first, second = open_postgres(postgres_url), open_postgres(postgres_url)
    secret = shared_secret(first)
    assert len(secret) == 64 and shared_secret(second) == secret
    first.close()
    second.close()


# ---- a database that goes away and comes back ----------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of this test's own, which the test may stop and start."""
    if not any(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("bash") is None:
        pytest.skip(f"{SKIP_REASON}: no PostgreSQL server binaries (apt-get install postgresql)")
    folder = Path(f"/tmp/xz-own-{os.getpid()}-{tmp_path.name}")
    started = subprocess.run([str(SCRIPT), "start", str(folder)], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"{SKIP_REASON}: a cluster could not start: {started.stderr.strip()[-300:]}")
    url = started.stdout.strip().split("=", 1)[1]
    try:
        yield url, folder
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def cluster(command: str, folder: Path) -> None:
    subprocess.run([str(SCRIPT), command, str(folder)], check=True, capture_output=True)


async def test_the_pool_reconnects_when_the_database_comes_back(own_cluster: tuple[str, Path]) -> None:
    url, folder = own_cluster
    store = PostgresConversationStore(open_postgres(url, timeout=2))
    await store.put_state("a", "d", {"n": 1})
    await trio.to_thread.run_sync(cluster, "stop", folder)
    with pytest.raises(DatabaseError):
        await store.get_state("a", "d")
    await trio.to_thread.run_sync(cluster, "start", folder)
    assert await store.get_state("a", "d") == {"n": 1}
    await store.aclose()


async def test_a_database_outage_costs_the_turn_an_apology_not_the_session(
    own_cluster: tuple[str, Path], tmp_path: Path
) -> None:
    url, folder = own_cluster
    config = worker_config(tmp_path, {"url": url, "connect_timeout": 2})
    app, _, _ = make_app(tmp_path, FakeBackends(), config=config, plugins=(postgres_store, RememberingAgentPlugin()))
    try:
        async with open_device(app) as device:
            await device.listen_start("auto")
            await device.speak(speech("hello there"))
            first = " ".join((await device.receive_reply()).sentences)
            assert first.startswith("Conversation ")

            await trio.to_thread.run_sync(cluster, "stop", folder)
            await device.listen_start("auto")
            await device.speak(speech("hello there"))
            assert " ".join((await device.receive_reply()).sentences) == app.config.session.apology_text

            await trio.to_thread.run_sync(cluster, "start", folder)
            await device.listen_start("auto")
            await device.speak(speech("hello there"))
            third = " ".join((await device.receive_reply()).sentences)
            assert third.split()[1] == first.split()[1]  # the same conversation, kept across the outage
    finally:
        await app.aclose()
