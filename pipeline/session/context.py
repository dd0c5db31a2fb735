"""What a device session is given, and what every part of one session shares.

``SessionServices`` is process-wide (built once by ``App``, the same for every session);
``SessionContext`` adds one session's ids, its outbox and its logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..backends import Agent, SpeechRecognizer, SpeechSynthesizer, TurnDetector, VoiceActivityDetector
from ..config import Config
from ..events import SessionEvent
from ..protocol.outbox import Outbox
from ..registry import ToolRegistry
from ..store.device_tools import DeviceToolLists
from ..store.recordings import Recorder
from ..workers import CpuWorkers

#: Receives every session event (the plugins' ``xiaozhi_session_event`` hook).
EventSink = Callable[[SessionEvent], None]


@dataclass(frozen=True)
class SessionServices:
    """Everything a session uses that outlives it: config, backends, workers, tools, stores."""

    config: Config
    vad: VoiceActivityDetector
    asr: SpeechRecognizer
    agent: Agent
    tts: SpeechSynthesizer
    workers: CpuWorkers
    #: Server-side tools from plugins (the device's own tools come over MCP).
    server_tools: ToolRegistry
    observe: EventSink
    #: Per-turn recordings, when ``[recording] enabled``.
    recorder: Recorder | None = None
    #: The end-of-turn detector (None: the VAD's silence window ends turns).
    turn: TurnDetector | None = None
    #: Where each device's tool listing is kept (``xiaozhi-trio tools``), when the ops side runs.
    tool_lists: DeviceToolLists | None = None


@dataclass(frozen=True)
class SessionContext:
    """One session's ids, outbox and logger, with the services it runs on."""

    services: SessionServices
    session_id: str
    device_id: str
    outbox: Outbox
    log: logging.Logger

    @property
    def config(self) -> Config:
        return self.services.config

    def emit(self, event_type: type[SessionEvent], **fields: Any) -> None:
        """Report a session event, stamped with the ids and trio's clock."""
        self.services.observe(event_type(session_id=self.session_id, device_id=self.device_id, at=trio.current_time(), **fields))
