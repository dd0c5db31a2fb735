"""The hooks a xiaozhi-trio plugin can implement.

A plugin is any module or object with functions marked ``@hookimpl``; a package makes one
discoverable by naming it under the ``xiaozhi_trio`` entry-point group::

    [project.entry-points.xiaozhi_trio]
    my_tts = "my_package.tts_plugin"

The built-in backends in ``plugins/`` are declared exactly that way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .events import SessionEvent
    import argparse

    from .registry import RegistryView, ToolRegistryView

PROJECT = "xiaozhi_trio"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def xiaozhi_register_backends(registry: RegistryView) -> None:
    """Register backend factories by kind and name.

    :param registry: call ``registry.add(kind, name, factory, description=...)`` for each backend;
        ``kind`` is one of ``backends.KINDS`` (``"vad"``, ``"asr"``, ``"agent"``, ``"tts"``...), and
        ``factory(context, options)`` builds the backend from a ``BackendContext`` and the options of
        its config table.
    """


@hookspec
def xiaozhi_register_stores(registry: RegistryView) -> None:
    """Register store factories: where conversations (agent memory) and devices are kept.

    :param registry: call ``registry.add(kind, name, factory, description=...)`` with ``kind``
        ``"conversations"`` (a ``ConversationStore``) or ``"devices"`` (a ``DeviceStore``);
        ``factory(context, options)`` gets a ``store.context.StoreContext`` and the other keys of the
        ``[store]`` table, whose ``backend = "name"`` picks the provider.
    """


@hookspec
def xiaozhi_register_tools(registry: ToolRegistryView) -> None:
    """Register server-side tools that agents may call, beside the device's own MCP tools.

    :param registry: call ``registry.add(spec, handler)`` with a ``ToolSpec`` and an async
        ``handler(arguments) -> ToolResult``.
    """


@hookspec
def xiaozhi_session_event(event: SessionEvent) -> None:
    """Observe what sessions do: opened and closed, turns, per-stage timings, errors.

    Called synchronously on the event loop: be quick and never raise.

    :param event: one of the dataclasses in ``xiaozhi_trio.pipeline.events``.
    """


@hookspec
def xiaozhi_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``xiaozhi-trio`` command line.

    :param subparsers: call ``subparsers.add_parser(name, help=...)``; set ``func(args) -> int`` on
        each new parser with ``set_defaults(func=...)``. Raise ``ConfigError`` for a bad config: the
        command line prints it and exits with status 2.
    """
