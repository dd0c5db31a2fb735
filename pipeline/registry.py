"""Plugin discovery and the registries plugins fill: backend and store factories by kind and name,
tools, CLI commands.

Every hook is called through pluggy (``pm.hook`` or a subset of it), so hook wrappers and pluggy's
tracing see every call. Registration hooks are called once per implementing plugin, each time with a
view of the registry that records that plugin's name: a duplicate names both plugins, and
``xiaozhi-trio plugins`` shows who provides what.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .backends import KINDS, BackendUnavailable, ConfigError, ToolResult, ToolSpec
from .events import SessionEvent
from .store.context import STORE_KINDS

if TYPE_CHECKING:
    from .backends import BackendContext
    from .config import BackendConfig
    from .store.context import StoreContext

log = logging.getLogger(__name__)

#: ``factory(context, options)``: a ``BackendContext`` or ``StoreContext``, and the config table's
#: other keys.
Factory = Callable[[Any, Mapping[str, Any]], object]
BackendFactory = Factory
ToolHandler = Callable[[Mapping[str, Any]], Awaitable[ToolResult]]
#: ``add_commands(subparsers)`` adds sub-commands to the ``xiaozhi-trio`` parser.
CommandAdder = Callable[[argparse._SubParsersAction], None]


@dataclass(frozen=True)
class FactoryEntry:
    kind: str
    name: str
    factory: Factory
    description: str
    plugin: str


BackendEntry = FactoryEntry


class FactoryRegistry:
    """Factories by kind and name, as plugins registered them (backends, or stores)."""

    def __init__(self, what: str, kinds: Iterable[str], *, table: Callable[[str], str],
                 protocols: Mapping[str, type] | None = None) -> None:
        #: "backend" or "store", for messages.
        self.what = what
        self.kinds = tuple(kinds)
        self._table = table
        self._protocols = protocols or {}
        self._entries: dict[tuple[str, str], FactoryEntry] = {}

    def add(self, kind: str, name: str, factory: Factory, *, description: str = "", plugin: str) -> None:
        """Record ``factory`` as ``name`` of ``kind``, registered by ``plugin``."""
        if kind not in self.kinds:
            raise ValueError(f"unknown {self.what} kind {kind!r} (from {plugin}); kinds are {', '.join(self.kinds)}")
        key = (kind, name)
        if key in self._entries:
            other = self._entries[key].plugin
            raise ValueError(f"{kind} {self.what} {name!r} is registered twice ({other} and {plugin})")
        self._entries[key] = FactoryEntry(kind, name, factory, description, plugin)

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self._entries if k == kind)

    def entries(self) -> list[FactoryEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.kind, e.name))

    def get(self, kind: str, name: str) -> FactoryEntry:
        """The entry, or a ``ConfigError`` that lists what is available."""
        try:
            return self._entries[(kind, name)]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            table = self._table(kind)
            raise ConfigError(
                f"unknown {kind} {self.what} {name!r}; available {kind} {self.what}s: {available} "
                f"(install a plugin package that provides it, or fix [{table}] backend in the config)"
            ) from None

    def create(self, kind: str, name: str, context: Any, options: Mapping[str, Any]) -> Any:
        """Build ``name`` of ``kind`` with its config ``options``."""
        made = self.get(kind, name).factory(context, options)
        protocol = self._protocols.get(kind)
        if protocol is not None and not isinstance(made, protocol):
            raise ConfigError(f"{kind} {self.what} {name!r} made a {type(made).__name__}, not a {protocol.__name__}")
        return made

    def view(self, plugin: str) -> RegistryView:
        """What one plugin's registration hook gets: ``add`` records that plugin as the provider."""
        return RegistryView(self, plugin)


class RegistryView:
    """A registry as one plugin sees it while registering."""

    def __init__(self, registry: FactoryRegistry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin

    def add(self, kind: str, name: str, factory: Factory, *, description: str = "") -> None:
        """Register ``factory(context, options)`` as ``name`` of ``kind``."""
        self._registry.add(kind, name, factory, description=description, plugin=self.plugin)


def backend_registry() -> FactoryRegistry:
    """An empty registry of backend factories (vad, asr, agent, tts...)."""
    return FactoryRegistry("backend", KINDS, table=lambda kind: kind)


def store_registry() -> FactoryRegistry:
    """An empty registry of store factories (conversations, devices)."""
    return FactoryRegistry("store", STORE_KINDS, table=lambda kind: "store", protocols=STORE_KINDS)


class ToolRegistry:
    """Server-side tools from plugins."""

    def __init__(self) -> None:
        self.tools: dict[str, tuple[ToolSpec, ToolHandler]] = {}
        self._owners: dict[str, str] = {}

    def add(self, spec: ToolSpec, handler: ToolHandler, *, plugin: str = "?") -> None:
        if spec.name in self.tools:
            raise ValueError(f"tool {spec.name!r} is registered twice ({self._owners[spec.name]} and {plugin})")
        self.tools[spec.name] = (spec, handler)
        self._owners[spec.name] = plugin

    def view(self, plugin: str) -> ToolRegistryView:
        return ToolRegistryView(self, plugin)


class ToolRegistryView:
    """The tool registry as one plugin sees it while registering."""

    def __init__(self, registry: ToolRegistry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin

    def add(self, spec: ToolSpec, handler: ToolHandler) -> None:
        """Register a tool ``spec`` with its async ``handler(arguments) -> ToolResult``."""
        self._registry.add(spec, handler, plugin=self.plugin)


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
            self.register(plugin)
        self.backends = backend_registry()
        self.stores = store_registry()
        self.tools = ToolRegistry()
        for plugin_name, call in self._each_plugin("xiaozhi_register_backends"):
            call(registry=self.backends.view(plugin_name))
        for plugin_name, call in self._each_plugin("xiaozhi_register_stores"):
            call(registry=self.stores.view(plugin_name))
        for plugin_name, call in self._each_plugin("xiaozhi_register_tools"):
            call(registry=self.tools.view(plugin_name))

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin object after discovery (an observer built at startup, such as the metrics).

        Only its ``xiaozhi_session_event`` and ``xiaozhi_cli_commands`` hooks take effect: the
        registries were filled when this object was made. The object must be hashable (modules and
        plain objects are; a dataclass needs ``eq=False``): pluggy keeps plugins in sets when it
        calls one plugin's hook.
        """
        try:
            hash(plugin)
        except TypeError:
            raise TypeError(
                f"plugin {plugin!r} is not hashable; pluggy needs hashable plugin objects "
                "(give a dataclass eq=False)"
            ) from None
        self.pm.register(plugin, name=name)

    def _each_plugin(self, hook_name: str) -> Iterator[tuple[str, pluggy.HookCaller]]:
        """For each plugin implementing ``hook_name``: its name and a hook caller that runs its
        implementation only, inside every wrapper of the hook (pluggy's ``subset_hook_caller``)."""
        implementations = getattr(self.pm.hook, hook_name).get_hookimpls()
        plain = [impl for impl in implementations if not (impl.hookwrapper or impl.wrapper)]
        for impl in plain:
            others = [other.plugin for other in plain if other.plugin is not impl.plugin]
            yield impl.plugin_name, self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def emit(self, event: SessionEvent) -> None:
        """Hand a session event to every observer; an observer that raises is logged, not fatal."""
        for plugin_name, call in self._each_plugin("xiaozhi_session_event"):
            try:
                call(event=event)
            except Exception:  # an observer must never take a session down
                log.exception("session-event observer %s failed on %s", plugin_name, type(event).__name__)

    def create_backend(self, kind: str, chosen: BackendConfig, context: BackendContext) -> Any:
        """Build the ``[kind]`` backend the config chose; ``ConfigError`` names the table and backend.
        ``BackendUnavailable`` is raised as it is: the caller decides whether the server can go on
        without that kind."""
        try:
            return self.backends.create(kind, chosen.backend, context, chosen.options)
        except BackendUnavailable:
            raise
        except ConfigError as e:
            raise ConfigError(f"[{kind}] {chosen.backend}: {e}") from None

    def open_store(self, kind: str, chosen: BackendConfig, context: StoreContext) -> Any:
        """Open the ``kind`` store (``"conversations"`` or ``"devices"``) of the plugin ``[store]
        backend`` names; ``ConfigError`` says which store failed and why."""
        try:
            return self.stores.create(kind, chosen.backend, context, chosen.options)
        except ConfigError as e:
            raise ConfigError(f"[store] {chosen.backend}: {e}") from None

    def add_cli_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Let every plugin add its ``xiaozhi-trio`` sub-commands."""
        self.pm.hook.xiaozhi_cli_commands(subparsers=subparsers)

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
