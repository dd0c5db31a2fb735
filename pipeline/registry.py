"""Plugin discovery and the registries plugins fill: backend factories by kind and name, tools."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .backends import KINDS, BackendContext, ConfigError, ToolResult, ToolSpec
from .events import SessionEvent

log = logging.getLogger(__name__)

BackendFactory = Callable[[BackendContext, Mapping[str, Any]], object]
ToolHandler = Callable[[Mapping[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True)
class BackendEntry:
    kind: str
    name: str
    factory: BackendFactory
    description: str
    plugin: str


class BackendRegistry:
    """Backend factories by kind and name, as plugins registered them."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], BackendEntry] = {}
        self._current_plugin = "?"

    def add(self, kind: str, name: str, factory: BackendFactory, *, description: str = "") -> None:
        """Register ``factory`` as backend ``name`` of ``kind`` (vad, asr, agent, tts)."""
        if kind not in KINDS:
            raise ValueError(f"unknown backend kind {kind!r}; kinds are {', '.join(KINDS)}")
        key = (kind, name)
        if key in self._entries:
            other = self._entries[key].plugin
            raise ValueError(f"{kind} backend {name!r} is registered twice ({other} and {self._current_plugin})")
        self._entries[key] = BackendEntry(kind, name, factory, description, self._current_plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._entries if k == kind)

    def entries(self) -> list[BackendEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.kind, e.name))

    def get(self, kind: str, name: str) -> BackendEntry:
        """The entry, or a ``ConfigError`` that lists what is available."""
        try:
            return self._entries[(kind, name)]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            raise ConfigError(
                f"unknown {kind} backend {name!r}; available {kind} backends: {available} "
                f"(install a plugin package that provides it, or fix [{kind}] backend in the config)"
            ) from None

    def create(self, kind: str, name: str, context: BackendContext, options: Mapping[str, Any]) -> object:
        """Build backend ``name`` of ``kind`` with its config ``options``."""
        return self.get(kind, name).factory(context, options)


class ToolRegistry:
    """Server-side tools from plugins."""

    def __init__(self) -> None:
        self.tools: dict[str, tuple[ToolSpec, ToolHandler]] = {}

    def add(self, spec: ToolSpec, handler: ToolHandler) -> None:
        if spec.name in self.tools:
            raise ValueError(f"tool {spec.name!r} is registered twice")
        self.tools[spec.name] = (spec, handler)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str]


class Plugins:
    """The plugin manager with everything discovered, and the registries it filled."""

    def __init__(self, *, entry_points: bool = True, extra: Iterable[object] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        if entry_points:
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        for plugin in extra:
            self.pm.register(plugin)
        self.backends = BackendRegistry()
        self.tools = ToolRegistry()
        self._fill_registries()

    def _fill_registries(self) -> None:
        # Call each plugin's hook on its own so a duplicate or bad registration names its plugin.
        for impl in self.pm.hook.xiaozhi_register_backends.get_hookimpls():
            self.backends._current_plugin = impl.plugin_name
            impl.function(registry=self.backends)
        for impl in self.pm.hook.xiaozhi_register_tools.get_hookimpls():
            impl.function(registry=self.tools)

    def emit(self, event: SessionEvent) -> None:
        """Hand a session event to every observer; an observer that raises is logged, not fatal."""
        for impl in self.pm.hook.xiaozhi_session_event.get_hookimpls():
            try:
                impl.function(event=event)
            except Exception:  # an observer must never take a session down
                log.exception("session-event observer %s failed on %s", impl.plugin_name, type(event).__name__)

    def info(self) -> list[PluginInfo]:
        """Every plugin with its distribution, version and implemented hooks."""
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        result = []
        for plugin in self.pm.get_plugins():
            dist = dists.get(id(plugin))
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            result.append(
                PluginInfo(
                    name=self.pm.get_name(plugin) or repr(plugin),
                    distribution=dist.project_name if dist else "(registered in code)",
                    version=dist.version if dist else "",
                    hooks=hooks,
                )
            )
        return sorted(result, key=lambda p: p.name)
