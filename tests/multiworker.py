"""Several server processes on one pair of ports, on the test-double backends, for the scale-out tests.

``python -m tests.multiworker SPEC_JSON`` runs a ``Supervisor`` whose workers are the real server
(``serve_devices`` and the HTTP side on the shared sockets, the real store named by the spec's
``[store]`` table) with the fake VAD, recognizer and synthesizer, and ``RememberingAgent``: an
agent that keeps a conversation id in the conversation store, as the Coze agent does, and says
which conversation and which worker process answered. Each worker writes ``ready-<index>-<pid>``
into the data folder once it accepts connections; the supervisor prints the two ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import trio

from xiaozhi_trio.pipeline.backends import AgentRequest, BackendContext
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import AgentText
from xiaozhi_trio.pipeline.store.conversations import ConversationStore

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, pitch_for

#: Phrases the device says. The fake recognizer maps pitch to phrase by registration order, so the
#: workers register every phrase the test process knows, in its order (``known_phrases``).
PHRASES = ("hello there", "what did I say")
AGENT_KEY = "remembering"


def register_phrases(phrases: tuple[str, ...] | list[str] = PHRASES) -> None:
    for phrase in phrases:
        pitch_for(phrase)


def known_phrases() -> list[str]:
    """Every phrase registered in this process, in registration order."""
    from xiaozhi_trio.plugins.testing.fakes.backends import _phrases

    return list(_phrases.values())


class RememberingAgent:
    """Answers with the device's conversation id (kept in the store) and this process's id."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store

    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        state = await self.store.get_state(AGENT_KEY, request.device_id)
        if state is None:
            state = {"conversation_id": uuid.uuid4().hex[:12], "turns": 0}
        state["turns"] += 1
        await self.store.put_state(AGENT_KEY, request.device_id, state)
        await send.send(AgentText(f"Conversation {state['conversation_id']} turn {state['turns']} pid {os.getpid()}."))


class RememberingAgentPlugin:
    @hookimpl
    def xiaozhi_register_backends(self, registry: Any) -> None:
        def create(context: BackendContext, options: Mapping[str, Any]) -> RememberingAgent:
            assert context.conversations is not None
            return RememberingAgent(context.conversations)

        registry.add("agent", AGENT_KEY, create, description="conversation-id agent (tests)")


def worker_config(data_dir: Path, store: Mapping[str, Any]) -> Any:
    from xiaozhi_trio.pipeline.config import parse_config

    tables: dict[str, Any] = {name: {"backend": "fake"} for name in ("vad", "asr", "tts")}
    tables["agent"] = {"backend": AGENT_KEY}
    tables["turn"] = {"backend": "off"}
    tables["server"] = {"data_dir": str(data_dir)}
    tables["store"] = dict(store)
    tables["auth"] = {"enabled": True}
    return parse_config(tables)


def serve_test_worker(index: int, sockets: list[socket.socket], data_dir: str, store: dict[str, Any],
                      metrics_dir: str, phrases: list[str]) -> None:
    """The worker process: the real server on the fakes, on the supervisor's sockets."""
    from xiaozhi_trio.pipeline.app import App
    from xiaozhi_trio.pipeline.ops.http import build_ops_services, serve_http
    from xiaozhi_trio.pipeline.ops.worker_metrics import WorkerMetrics
    from xiaozhi_trio.pipeline.registry import Plugins
    from xiaozhi_trio.pipeline.server import serve_devices

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    register_phrases(phrases)
    config = worker_config(Path(data_dir), store)
    ops = build_ops_services(config)  # the stores from the installed plugins (entry points)
    ops.worker_metrics = WorkerMetrics.of(ops.metrics, Path(metrics_dir), index)
    from xiaozhi_trio.plugins import postgres_store, sqlite_store

    plugins = Plugins(entry_points=False, extra=[sqlite_store, postgres_store, FakeBackends(), RememberingAgentPlugin()])
    app = App.build(config, plugins)
    ops.attach(app)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_devices, app, sock=sockets[0]))
            await nursery.start(partial(serve_http, ops, "", 0, sock=sockets[1]))
            nursery.start_soon(ops.worker_metrics.run, 0.1)
            (Path(data_dir) / f"ready-{index}-{os.getpid()}").touch()

    try:
        trio.run(main)
    finally:
        ops.close()


def main() -> None:
    from xiaozhi_trio.pipeline.ops.worker_metrics import forget_worker
    from xiaozhi_trio.pipeline.supervisor import Supervisor, bind_listener

    spec = json.loads(sys.argv[1])
    sockets = [bind_listener("127.0.0.1", 0), bind_listener("127.0.0.1", 0)]
    print(json.dumps({"ws": sockets[0].getsockname()[1], "http": sockets[1].getsockname()[1]}), flush=True)
    metrics_dir = Path(spec["data_dir"]) / "metrics"
    metrics_dir.mkdir()
    supervisor = Supervisor(spec["workers"], serve_test_worker, sockets, (spec["data_dir"], spec["store"], str(metrics_dir), spec["phrases"]),
                            stop_timeout=10, on_death=partial(forget_worker, metrics_dir))
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
