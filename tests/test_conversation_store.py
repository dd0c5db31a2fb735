"""The conversation store (on SQLite and on PostgreSQL: the same contract) and the shared database
helpers under it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from xiaozhi_trio.pipeline.store.conversations import (
    SqlConversationStore,
    SqliteConversationStore,
)
from xiaozhi_trio.pipeline.store.sqlite import (
    DATABASE_FILE,
    DatabaseError,
    open_database,
)


from tests.databases import OpenDatabase


@pytest.fixture
def store(open_db: OpenDatabase) -> SqlConversationStore:
    return SqlConversationStore(open_db(), max_history=6)


# ---- state -----------------------------------------------------------------------------------


async def test_state_round_trips_and_is_per_agent_and_device(store: SqlConversationStore) -> None:
    assert await store.get_state("coze", "aa:bb") is None
    await store.put_state("coze", "aa:bb", {"conversation_id": "c1", "bot_id": "b", "user_id": "u-1"})
    await store.put_state("coze", "cc:dd", {"conversation_id": "c2"})
    await store.put_state("other", "aa:bb", {"x": 1})
    assert await store.get_state("coze", "aa:bb") == {"conversation_id": "c1", "bot_id": "b", "user_id": "u-1"}
    assert await store.get_state("coze", "cc:dd") == {"conversation_id": "c2"}
    await store.put_state("coze", "aa:bb", {"conversation_id": "c3"})
    assert await store.get_state("coze", "aa:bb") == {"conversation_id": "c3"}
    assert await store.get_state("other", "aa:bb") == {"x": 1}


async def test_swap_stores_only_over_the_expected_state(store: SqlConversationStore) -> None:
    assert await store.swap_state("coze", "d", {"conversation_id": "c1"}, None) == {"conversation_id": "c1"}
    # Someone else's state is there: it stays, and is what the caller gets.
    assert await store.swap_state("coze", "d", {"conversation_id": "c2"}, None) == {"conversation_id": "c1"}
    assert await store.swap_state("coze", "d", {"conversation_id": "c3"}, {"conversation_id": "old"}) == {"conversation_id": "c1"}
    # Replacing the state the caller saw (a stale conversation) works.
    assert await store.swap_state("coze", "d", {"conversation_id": "c4"}, {"conversation_id": "c1"}) == {"conversation_id": "c4"}
    assert await store.get_state("coze", "d") == {"conversation_id": "c4"}


async def test_two_servers_creating_a_conversation_at_once_agree_on_one(open_db: OpenDatabase) -> None:
    servers = [SqlConversationStore(open_db()), SqlConversationStore(open_db())]
    results: dict[str, list[dict]] = {}

    async def create(server: int, device: str) -> None:
        mine = {"conversation_id": f"{device}-from-{server}"}
        results.setdefault(device, []).append(await servers[server].swap_state("coze", device, mine, None))

    async with trio.open_nursery() as nursery:
        for n in range(10):
            for server in (0, 1, 0, 1):
                nursery.start_soon(create, server, f"dev{n}")
    for device, seen in results.items():
        assert len({s["conversation_id"] for s in seen}) == 1, seen  # every caller got the winner's
        assert await servers[1].get_state("coze", device) == seen[0]
    for server in servers:
        await server.aclose()


async def test_state_that_is_not_json_is_refused(store: SqlConversationStore) -> None:
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        await store.put_state("coze", "d", {"when": object()})


# ---- history ---------------------------------------------------------------------------------


async def test_history_is_oldest_first_limited_and_pruned(store: SqlConversationStore) -> None:
    for i in range(5):
        await store.append_history(
            "openai", "d", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        )
    everything = await store.load_history("openai", "d", 100)
    # Bound of 6: the two oldest turns are gone, the newest three remain in order.
    assert [m["content"] for m in everything] == ["q2", "a2", "q3", "a3", "q4", "a4"]
    assert [m["content"] for m in await store.load_history("openai", "d", 3)] == ["a3", "q4", "a4"]
    assert await store.load_history("openai", "d", 0) == []
    assert await store.load_history("openai", "other-device", 10) == []
    rows = await store.database.fetch("SELECT COUNT(*) FROM agent_history")
    assert rows[0][0] == 6


async def test_pruning_keeps_other_devices(store: SqlConversationStore) -> None:
    await store.append_history("openai", "a", [{"role": "user", "content": "keep me"}])
    await store.append_history("openai", "b", [{"role": "user", "content": str(i)} for i in range(20)])
    assert await store.load_history("openai", "a", 10) == [{"role": "user", "content": "keep me"}]
    assert len(await store.load_history("openai", "b", 100)) == 6


async def test_messages_keep_structure_and_unicode(store: SqlConversationStore) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "self__x", "arguments": '{"v": 5}'}}],
    }
    await store.append_history(
        "openai", "d", [message, {"role": "tool", "tool_call_id": "call_1", "content": "今天星期三"}]
    )
    assert await store.load_history("openai", "d", 2) == [
        message,
        {"role": "tool", "tool_call_id": "call_1", "content": "今天星期三"},
    ]


async def test_clear_forgets_state_and_history_of_one_device(store: SqlConversationStore) -> None:
    await store.put_state("coze", "d", {"conversation_id": "c"})
    await store.append_history("coze", "d", [{"role": "user", "content": "x"}])
    await store.append_history("coze", "e", [{"role": "user", "content": "y"}])
    await store.clear("coze", "d")
    assert await store.get_state("coze", "d") is None
    assert await store.load_history("coze", "d", 10) == []
    assert len(await store.load_history("coze", "e", 10)) == 1


async def test_survives_close_and_reopen(open_db: OpenDatabase) -> None:
    store = SqlConversationStore(open_db())
    await store.put_state("coze", "d", {"conversation_id": "c9"})
    await store.append_history("openai", "d", [{"role": "user", "content": "hello"}])
    await store.aclose()
    reopened = SqlConversationStore(open_db())
    assert await reopened.get_state("coze", "d") == {"conversation_id": "c9"}
    assert await reopened.load_history("openai", "d", 5) == [{"role": "user", "content": "hello"}]
    await reopened.aclose()


async def test_concurrent_sessions_and_two_connections_do_not_corrupt(open_db: OpenDatabase) -> None:
    # Two connections (SQLite) or two pools (PostgreSQL: two servers) writing at once.
    first = SqlConversationStore(open_db(), max_history=1000)
    second = SqlConversationStore(open_db(), max_history=1000)

    async def session(store: SqlConversationStore, device: str) -> None:
        for turn in range(15):
            await store.append_history(
                "openai",
                device,
                [
                    {"role": "user", "content": f"{device}-{turn}"},
                    {"role": "assistant", "content": f"{device}-{turn}!"},
                ],
            )
            await store.put_state("coze", device, {"turn": turn})

    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(session, first if n % 2 else second, f"dev{n}")
    for n in range(8):
        history = await first.load_history("openai", f"dev{n}", 1000)
        assert [m["content"] for m in history] == [c for t in range(15) for c in (f"dev{n}-{t}", f"dev{n}-{t}!")]
        assert await second.get_state("coze", f"dev{n}") == {"turn": 14}
    if first.database.dialect == "sqlite":
        rows = await first.database.fetch("PRAGMA integrity_check")
        assert rows[0][0] == "ok"
    await first.aclose()
    await second.aclose()


async def test_pruning_is_exact_when_two_servers_append_to_one_device(open_db: OpenDatabase) -> None:
    first = SqlConversationStore(open_db(), max_history=10)
    second = SqlConversationStore(open_db(), max_history=10)

    async def append(store: SqlConversationStore, tag: str) -> None:
        for i in range(12):
            await store.append_history("openai", "d", [{"role": "user", "content": f"{tag}{i}"}])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append, first, "a")
        nursery.start_soon(append, second, "b")
    kept = await first.load_history("openai", "d", 100)
    assert len(kept) == 10
    # Whatever the interleaving, each writer's messages stay in its own order.
    for tag in "ab":
        mine = [int(m["content"][1:]) for m in kept if m["content"][0] == tag]
        assert mine == sorted(mine)
    await first.aclose()
    await second.aclose()


async def test_a_damaged_row_is_skipped_not_fatal(store: SqlConversationStore) -> None:
    await store.append_history("openai", "d", [{"role": "user", "content": "ok"}])
    await store.database.execute(
        "INSERT INTO agent_history (agent, device_id, message, created_at) VALUES ('openai', 'd', '{broken', 0)"
    )
    await store.database.execute("INSERT INTO agent_state VALUES ('coze', 'd', 'nope', 0)")
    assert await store.load_history("openai", "d", 10) == [{"role": "user", "content": "ok"}]
    assert await store.get_state("coze", "d") is None


# ---- the shared SQLite helpers -------------------------------------------------------------------


async def test_migrations_are_per_owner_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    db = open_database(path)
    assert db.migrate("devices", ["CREATE TABLE devices (id TEXT PRIMARY KEY)"]) == 1
    assert db.migrate("devices", ["CREATE TABLE devices (id TEXT PRIMARY KEY)"]) == 1  # no second CREATE
    assert (
        db.migrate(
            "devices", ["CREATE TABLE devices (id TEXT PRIMARY KEY)", "ALTER TABLE devices ADD COLUMN name TEXT"]
        )
        == 2
    )
    await db.execute("INSERT INTO devices (id, name) VALUES (?, ?)", ("a", "kitchen"))
    db.close()
    db = open_database(path)
    SqliteConversationStore(db)  # another owner beside "devices" in the same file
    rows = await db.fetch("SELECT owner, version FROM schema_versions ORDER BY owner")
    assert [tuple(r) for r in rows] == [("conversations", 3), ("devices", 2)]
    rows = await db.fetch("SELECT name FROM devices WHERE id = ?", ("a",))
    assert rows[0]["name"] == "kitchen"
    assert (await db.fetch("PRAGMA journal_mode"))[0][0] == "wal"
    with pytest.raises(DatabaseError, match="newer than this program knows"):
        db.migrate("devices", ["CREATE TABLE devices (id TEXT PRIMARY KEY)"])
    db.close()


async def test_a_failing_migration_step_leaves_the_version_alone(tmp_path: Path) -> None:
    db = open_database(tmp_path / DATABASE_FILE)
    with pytest.raises(DatabaseError, match="syntax error"):
        db.migrate("x", ["CREATE TABLE t (a INTEGER)", "THIS IS NOT SQL"])
    rows = await db.fetch("SELECT version FROM schema_versions WHERE owner = 'x'")
    assert rows[0][0] == 1
    db.close()


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = open_database(tmp_path / DATABASE_FILE)
    db.migrate("t", ["CREATE TABLE t (a INTEGER)"])

    def half_then_fail(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await db.transaction(half_then_fail)
    assert await db.fetch("SELECT * FROM t") == []
    assert await db.execute_many("INSERT INTO t VALUES (?)", [(1,), (2,)]) == 2
    assert [r[0] for r in await db.fetch("SELECT a FROM t ORDER BY a")] == [1, 2]
    db.close()
    with pytest.raises(DatabaseError, match="is closed"):
        await db.fetch("SELECT 1")


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="cannot open database"):
        open_database(path)
