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
    from .registry import BackendRegistry, ToolRegistry

PROJECT = "xiaozhi_trio"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def xiaozhi_register_backends(registry: BackendRegistry) -> None:
    """Register backend factories by kind and name.

    :param registry: call ``registry.add(kind, name, factory, description=...)`` for each backend;
        ``kind`` is one of ``"vad"``, ``"asr"``, ``"agent"``, ``"tts"``, and ``factory(context,
        options)`` builds the backend from a ``BackendContext`` and the options of its config table.
    """


@hookspec
def xiaozhi_register_tools(registry: ToolRegistry) -> None:
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
