"""Plugin discovery, the registries, and the hooks' documentation."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from xiaozhi_trio.pipeline import hookspecs
from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.plugins import sqlite_store

from xiaozhi_trio.plugins.testing.harness import EventLog

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_built_in_backends_are_found_through_entry_points():
    plugins = Plugins()
    assert "silero" in plugins.backends.names("vad")
    assert "sherpa-onnx" in plugins.backends.names("asr")
    assert "sherpa-onnx" in plugins.backends.names("tts")
    assert {"coze", "openai"} <= set(plugins.backends.names("agent"))
    # Each comes from a plugin with a distribution and version, as a third-party one would.
    infos = {info.name: info for info in plugins.info()}
    for entry in plugins.backends.entries():
        assert infos[entry.plugin].distribution == "xiaozhi-trio"


def test_no_entry_points_means_no_backends():
    assert Plugins(entry_points=False).backends.entries() == []


def test_a_third_party_package_is_discovered(tmp_path, monkeypatch):
    """A package installed with an entry point in our group is found with no other step."""
    (tmp_path / "acme_tts.py").write_text(
        textwrap.dedent(
            """
            from xiaozhi_trio.pipeline.hookspecs import hookimpl

            @hookimpl
            def xiaozhi_register_backends(registry):
                registry.add("tts", "acme", lambda context, options: object(), description="Acme voices")
            """
        )
    )
    dist = tmp_path / "acme_tts-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tts\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[xiaozhi_trio]\nacme = acme_tts\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins()
    assert "acme" in plugins.backends.names("tts")
    info = next(i for i in plugins.info() if i.name == "acme")
    assert (info.distribution, info.version) == ("acme-tts", "1.2.3")
    sys.modules.pop("acme_tts", None)


def test_unknown_backend_names_the_available_ones(tmp_path):
    class OneAgent:
        @hookimpl
        def xiaozhi_register_backends(self, registry):
            registry.add("agent", "only", lambda c, o: object())

    plugins = Plugins(entry_points=False, extra=[sqlite_store, OneAgent()])
    with pytest.raises(ConfigError, match=r"unknown agent backend 'nope'; available agent backends: only"):
        App.build(parse_config({"agent": {"backend": "nope"}, "server": {"data_dir": str(tmp_path)}}), plugins)


def test_duplicate_registration_names_both_plugins():
    class A:
        @hookimpl
        def xiaozhi_register_backends(self, registry):
            registry.add("asr", "same", lambda c, o: object())

    class B(A):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        Plugins(entry_points=False, extra=[A(), B()])


def test_a_failing_observer_does_not_break_the_others():
    class Broken:
        @hookimpl
        def xiaozhi_session_event(self, event):
            raise RuntimeError("observer bug")

    log = EventLog()
    plugins = Plugins(entry_points=False, extra=[Broken(), log])
    plugins.emit("an event")  # type: ignore[arg-type]
    assert log.events == ["an event"]


def test_plugins_command_lists_backends_and_versions(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\(xiaozhi-trio \d", out)
    assert "vad:silero" in out and "agent:coze" in out and "tts:sherpa-onnx" in out


@pytest.mark.parametrize("hook", [name for name in dir(hookspecs) if name.startswith("xiaozhi_")])
def test_every_hook_is_documented(hook):
    assert f"`{hook}(" in DOCS.read_text(), f"{hook} is missing from docs/plugins.md"


def test_example_config_is_valid_and_shows_the_defaults():
    import tomllib

    from xiaozhi_trio.pipeline.config import Config

    path = DOCS.parents[1] / "config.example.toml"
    example = parse_config(tomllib.loads(path.read_text()))
    defaults = Config()
    for section in ("server", "session", "audio", "workers", "turn_policy"):
        assert getattr(example, section) == getattr(defaults, section), f"[{section}] in config.example.toml drifted"
    for kind in ("vad", "asr", "agent", "tts", "turn"):
        assert example.backend(kind).backend == defaults.backend(kind).backend


class WrapsEveryHook:
    """A plugin that wraps the registration and event hooks, as a profiler or an auditor would."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def xiaozhi_register_backends(self, registry):
        self.seen.append(f"backends:{registry.plugin}")
        return (yield)

    @hookimpl(wrapper=True)
    def xiaozhi_register_stores(self, registry):
        self.seen.append(f"stores:{registry.plugin}")
        return (yield)

    @hookimpl(hookwrapper=True)
    def xiaozhi_session_event(self, event):
        self.seen.append(f"event:{event}")
        yield


def test_hooks_run_inside_wrappers_and_pluggy_tracing():
    """Registration and events go through pluggy's own calls: wrappers see each plugin's call and
    pluggy's tracing records every hook, with the plugin each registration came from."""

    class Asr:
        @hookimpl
        def xiaozhi_register_backends(self, registry):
            registry.add("asr", "wrapped", lambda c, o: object())

    wrapper, log = WrapsEveryHook(), EventLog()
    plugins = Plugins(entry_points=False, extra=[sqlite_store, Asr(), wrapper, log])
    assert wrapper.seen.count("backends:" + plugins.backends.get("asr", "wrapped").plugin) == 1
    assert "stores:" + plugins.stores.get("devices", "sqlite").plugin in wrapper.seen
    assert plugins.backends.get("asr", "wrapped").plugin != plugins.stores.get("devices", "sqlite").plugin

    traced: list[str] = []
    plugins.pm.trace.root.setwriter(traced.append)
    undo = plugins.pm.enable_tracing()
    try:
        plugins.emit("hello")  # type: ignore[arg-type]
    finally:
        undo()
    assert log.events == ["hello"]
    assert "event:hello" in wrapper.seen
    assert any("xiaozhi_session_event" in line for line in traced)


def test_a_plugin_registered_later_observes_events():
    """The metrics are registered once the HTTP side is built: through ``Plugins.register``."""
    plugins = Plugins(entry_points=False)
    log = EventLog()
    plugins.register(log, name="late")
    plugins.emit("late event")  # type: ignore[arg-type]
    assert log.events == ["late event"]
    assert "late" in {info.name for info in plugins.info()}


def test_plugins_add_cli_commands(capsys):
    """``models`` comes from the speech plugin's ``xiaozhi_cli_commands``; a plugin's own command
    runs like a built-in one."""

    class Hello:
        @hookimpl
        def xiaozhi_cli_commands(self, subparsers):
            parser = subparsers.add_parser("hello", help="say hello")
            parser.set_defaults(func=lambda args: print("hello from a plugin") or 0)

    from xiaozhi_trio.pipeline.cli import build_parser

    parser = build_parser(Plugins(entry_points=False, extra=[Hello()]))
    args = parser.parse_args(["hello"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "hello from a plugin\n"
    assert "models" in build_parser().format_help()
    assert "models" not in build_parser(Plugins(entry_points=False)).format_help()


def test_an_unhashable_plugin_object_is_refused_clearly():
    from dataclasses import dataclass

    @dataclass
    class Unhashable:
        @hookimpl
        def xiaozhi_session_event(self, event):
            pass

    with pytest.raises(TypeError, match="not hashable.*eq=False"):
        Plugins(entry_points=False, extra=[Unhashable()])
