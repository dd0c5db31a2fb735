"""What every part of one device session shares: ids, config, backends, the outbox, events."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from ..backends import Agent, SpeechRecognizer, SpeechSynthesizer, VoiceActivityDetector
from ..config import Config
from ..events import SessionEvent
from ..workers import CpuWorkers
from .outbox import Outbox


@dataclass
class SessionContext:
    session_id: str
    device_id: str
    config: Config
    vad: VoiceActivityDetector
    asr: SpeechRecognizer
    agent: Agent
    tts: SpeechSynthesizer
    workers: CpuWorkers
    outbox: Outbox
    observe: Any  # Callable[[SessionEvent], None]
    log: logging.Logger

    def emit(self, event_type: type[SessionEvent], **fields: Any) -> None:
        """Report a session event, stamped with the ids and trio's clock."""
        self.observe(event_type(session_id=self.session_id, device_id=self.device_id, at=trio.current_time(), **fields))
