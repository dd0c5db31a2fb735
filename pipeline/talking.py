"""Which sessions are in a conversation now, for the limit of talking devices (``[server]
max_talking_sessions``).

A device opens its connection when it is woken, so a new session counts as talking from its
start; it stays talking while it speaks or is answered, and stops counting ``talking_window``
seconds after the last of that (an idle device left connected costs next to nothing). Fed by
session events, like any observer plugin; the server asks ``count`` before accepting a device.
"""

from __future__ import annotations

from .events import (
    FirstAudio,
    SessionClosed,
    SessionEvent,
    SessionOpened,
    SpeechEndDetected,
    TurnEnded,
    TurnStarted,
)
from .hookspecs import hookimpl

#: Events that show a session is in a conversation.
_ACTIVITY = (SessionOpened, SpeechEndDetected, TurnStarted, FirstAudio, TurnEnded)


class TalkingSessions:
    """Last conversation activity per session (trio clock); a session-event observer."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._last: dict[str, float] = {}
        #: Connections refused because too many devices were talking.
        self.refused = 0

    @hookimpl
    def xiaozhi_session_event(self, event: SessionEvent) -> None:
        """Observe one session event (called by the plugin manager)."""
        if isinstance(event, SessionClosed):
            self._last.pop(event.session_id, None)
        elif isinstance(event, _ACTIVITY):
            self._last[event.session_id] = event.at

    def count(self, now: float) -> int:
        """Sessions with conversation activity in the last ``window`` seconds."""
        return sum(1 for at in self._last.values() if now - at <= self.window)
