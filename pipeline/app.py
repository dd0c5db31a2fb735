"""The running server's shared state: config, plugins, the backends (built once) and stores."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .backends import (
    KINDS,
    OPTIONAL_KINDS,
    Agent,
    BackendContext,
    BackendUnavailable,
    ConfigError,
    SpeechRecognizer,
    SpeechSynthesizer,
    TurnDetector,
    VoiceActivityDetector,
)
from .config import Config
from .registry import Plugins
from .session.context import SessionServices
from .store.context import StoreContext
from .store.device_tools import DeviceToolLists
from .store.recordings import Recorder
from .talking import TalkingSessions
from .workers import CpuWorkers

log = logging.getLogger(__name__)

#: Checks a handshake (device id, client id, Authorization header) before it is accepted: returns
#: None to accept, or a reason to reject it with 401.
Authorizer = Callable[[str, str, str | None], Awaitable[str | None]]


@dataclass
class LiveSessions:
    """The sessions connected now, by device: a device that reconnects replaces its old session."""

    by_device: dict[str, trio.CancelScope] = field(default_factory=dict)
    count: int = 0
    #: Set when the server shuts down: no new sessions; open ones close as their replies end.
    draining: trio.Event = field(default_factory=trio.Event)

    def replace(self, device_id: str, scope: trio.CancelScope) -> bool:
        """Make ``scope`` the device's session, cancelling any older one. True if one was replaced."""
        old = self.by_device.get(device_id)
        self.by_device[device_id] = scope
        if old is not None:
            old.cancel()
            return True
        return False

    def remove(self, device_id: str, scope: trio.CancelScope) -> None:
        if self.by_device.get(device_id) is scope:
            del self.by_device[device_id]


@dataclass
class App:
    config: Config
    plugins: Plugins
    workers: CpuWorkers
    vad: VoiceActivityDetector
    asr: SpeechRecognizer
    agent: Agent
    tts: SpeechSynthesizer
    context: BackendContext
    #: The end-of-turn detector; None: pauses are judged by the VAD's silence window alone.
    turn: TurnDetector | None = None
    #: Why an optional backend is not in use (kind → message), for ``check`` and the log.
    unavailable: dict[str, BackendUnavailable] = field(default_factory=dict)
    sessions: LiveSessions = field(default_factory=LiveSessions)
    #: Sessions in a conversation now (for ``[server] max_talking_sessions``).
    talking: TalkingSessions = field(default_factory=lambda: TalkingSessions(60.0))
    #: Per-turn recordings, when ``[recording] enabled``.
    recorder: Recorder | None = None
    #: Checks each WebSocket handshake (the token, the device's binding); None: everyone may talk.
    #: ``OpsServices.attach`` sets it when the HTTP side runs.
    authorize: Authorizer | None = None
    #: Where sessions record each device's tool listing (``xiaozhi-trio tools``); ``OpsServices.attach`` sets it.
    tool_lists: DeviceToolLists | None = None

    @classmethod
    def build(cls, config: Config, plugins: Plugins | None = None, *, context: BackendContext | None = None) -> App:
        """Build every configured backend (loading models) once for the whole process.

        Raises ``ConfigError`` naming the backend that could not be built and why.
        """
        plugins = plugins or Plugins()
        workers = context.workers if context is not None else CpuWorkers(
            config.workers.cpu_threads or None,
            max_wait=config.workers.max_wait,
            one_run_per_model=config.workers.one_run_per_model,
        )
        if context is None:
            data_dir = config.server.data_path
            conversations = plugins.open_store("conversations", config.store, StoreContext(data_dir))
            context = BackendContext(
                data_dir=data_dir,
                workers=workers,
                models_dir=config.models.path(data_dir),
                conversations=conversations,
            )
        backends: dict[str, object] = {}
        unavailable: dict[str, BackendUnavailable] = {}
        # The agent first: missing credentials should stop the server before models load.
        for kind in sorted(KINDS, key=lambda k: k != "agent"):
            chosen = config.backend(kind)
            if kind in OPTIONAL_KINDS and chosen.backend == "off":
                log.info("%s backend: off", kind)
                continue
            try:
                backends[kind] = plugins.create_backend(kind, chosen, context)
            except BackendUnavailable as e:
                if kind not in OPTIONAL_KINDS:
                    raise ConfigError(f"[{kind}] {chosen.backend}: {e}") from None
                unavailable[kind] = e
                log.warning("[%s] %s is not available, going on without it: %s", kind, chosen.backend, e)
                continue
            log.info("%s backend: %s", kind, chosen.backend)
        recorder = None
        if config.recording.enabled:
            recorder = Recorder(context.data_dir / "recordings", int(config.recording.max_megabytes * 1024 * 1024))
        talking = TalkingSessions(config.server.talking_window)
        plugins.register(talking, name="xiaozhi_trio.talking")
        return cls(
            config=config, plugins=plugins, workers=workers, context=context, recorder=recorder,
            unavailable=unavailable, talking=talking, **backends,
        )

    def session_services(self) -> SessionServices:
        """What every device session runs on (the same for all of them)."""
        return SessionServices(
            config=self.config,
            vad=self.vad,
            asr=self.asr,
            agent=self.agent,
            tts=self.tts,
            workers=self.workers,
            server_tools=self.plugins.tools,
            observe=self.plugins.emit,
            recorder=self.recorder,
            turn=self.turn,
            tool_lists=self.tool_lists,
        )

    async def aclose(self) -> None:
        """Release what backends and stores hold (HTTP clients, database files)."""
        for backend in (self.vad, self.asr, self.agent, self.tts, self.turn):
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()
        if self.context.conversations is not None:
            await self.context.conversations.aclose()
