"""Stores come from plugins through ``xiaozhi_register_stores``, the built-in SQLite ones included."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.ops.services import build_ops_services
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.store.context import StoreContext
from xiaozhi_trio.pipeline.store.conversations import ConversationStore, SqliteConversationStore
from xiaozhi_trio.pipeline.store.devices import DeviceRegistry, DevicesConfig, DeviceStore
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE
from xiaozhi_trio.plugins import sqlite_store

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends


def _store_config(tmp_path: Path, **store: object):
    return parse_config({"server": {"data_dir": str(tmp_path)}, "store": store})


def test_the_sqlite_stores_are_a_plugin_found_through_entry_points():
    plugins = Plugins()
    entries = {(e.kind, e.name): e for e in plugins.stores.entries()}
    assert set(entries) >= {("conversations", "sqlite"), ("devices", "sqlite")}
    infos = {info.name: info for info in plugins.info()}
    assert infos[entries[("devices", "sqlite")].plugin].distribution == "xiaozhi-trio"


async def test_default_stores_share_the_data_folder_file(tmp_path: Path):
    plugins = Plugins(entry_points=False, extra=[sqlite_store])
    config = _store_config(tmp_path)
    conversations = plugins.open_store("conversations", config.store, StoreContext(tmp_path))
    devices = plugins.open_store("devices", config.store, StoreContext(tmp_path, DevicesConfig(code_ttl_minutes=5)))
    assert isinstance(conversations, SqliteConversationStore) and isinstance(conversations, ConversationStore)
    assert isinstance(devices, DeviceRegistry) and isinstance(devices, DeviceStore)
    assert conversations.database.path == devices.database.path == tmp_path / DATABASE_FILE
    assert devices.config.code_ttl_minutes == 5
    await conversations.aclose()
    devices.close()


async def test_sqlite_store_options_are_checked(tmp_path: Path):
    plugins = Plugins(entry_points=False, extra=[sqlite_store])
    config = _store_config(tmp_path, path=str(tmp_path / "x.db"), max_history_messages=3)
    store = plugins.open_store("conversations", config.store, StoreContext(tmp_path))
    assert store.max_history == 3 and store.database.path == tmp_path / "x.db"
    await store.aclose()
    for options, message in (
        ({"max_history": 3}, r"\[store\] sqlite: unknown key\(s\) in \[store\]: max_history"),
        ({"max_history_messages": 0}, r"\[store\] max_history_messages must be at least 1, not 0"),
        ({"max_history_messages": True}, r"must be int, not bool"),
        ({"path": 3}, r"\[store\] path must be str"),
    ):
        with pytest.raises(ConfigError, match=message):
            plugins.open_store("conversations", _store_config(tmp_path, **options).store, StoreContext(tmp_path))
        with pytest.raises(ConfigError, match=message):
            plugins.open_store("devices", _store_config(tmp_path, **options).store, StoreContext(tmp_path))


def test_an_unknown_store_lists_the_available_ones(tmp_path: Path):
    plugins = Plugins(entry_points=False, extra=[sqlite_store])
    with pytest.raises(ConfigError, match=r"unknown conversations store 'postgres'; available conversations stores: sqlite"):
        plugins.open_store("conversations", _store_config(tmp_path, backend="postgres").store, StoreContext(tmp_path))


class SharedStores:
    """A third-party store plugin, as a shared database would provide one (here over SQLite)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, StoreContext, dict]] = []

    @hookimpl
    def xiaozhi_register_stores(self, registry):
        def conversations(context, options):
            self.calls.append(("conversations", context, dict(options)))
            return SqliteConversationStore.open(context.data_dir / "shared.db", max_history=options["keep"])

        def devices(context, options):
            self.calls.append(("devices", context, dict(options)))
            return DeviceRegistry.open(context.data_dir / "shared.db", context.devices)

        registry.add("conversations", "shared", conversations, description="shared conversations")
        registry.add("devices", "shared", devices, description="shared devices")


async def test_a_third_party_store_serves_the_app_and_the_device_registry(tmp_path: Path):
    shared = SharedStores()
    plugins = Plugins(entry_points=False, extra=[sqlite_store, shared, FakeBackends()])
    config = parse_config({
        "server": {"data_dir": str(tmp_path)},
        "store": {"backend": "shared", "keep": 4},
        "devices": {"code_ttl_minutes": 7},
        **{kind: {"backend": "fake"} for kind in ("vad", "asr", "agent", "tts")},
        "turn": {"backend": "off"},
    })
    app = App.build(config, plugins)
    ops = build_ops_services(config, plugins=plugins)
    try:
        assert app.context.conversations is not None and app.context.conversations.max_history == 4
        assert isinstance(ops.registry, DeviceRegistry) and ops.registry.database.path == tmp_path / "shared.db"
        kinds = [kind for kind, _context, _options in shared.calls]
        assert kinds == ["conversations", "devices"]
        # Factories get (context, options), as backend factories do.
        assert all(options == {"keep": 4} and context.data_dir == tmp_path for _k, context, options in shared.calls)
        assert shared.calls[1][1].devices.code_ttl_minutes == 7
        entries = {(e.kind, e.name): e.plugin for e in plugins.stores.entries()}
        assert entries[("devices", "shared")] == entries[("conversations", "shared")] != entries[("devices", "sqlite")]
    finally:
        await app.aclose()
        ops.close()


def test_a_store_factory_must_make_a_store(tmp_path: Path):
    class Wrong:
        @hookimpl
        def xiaozhi_register_stores(self, registry):
            registry.add("conversations", "wrong", lambda context, options: object())

    plugins = Plugins(entry_points=False, extra=[Wrong()])
    with pytest.raises(ConfigError, match=r"\[store\] wrong: conversations store 'wrong' made a object, not a ConversationStore"):
        plugins.open_store("conversations", _store_config(tmp_path, backend="wrong").store, StoreContext(tmp_path))
