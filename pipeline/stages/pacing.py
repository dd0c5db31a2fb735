"""When to send the next downlink packet: a model of the device's playback queue (sans-IO).

The device decodes packets into a queue of about 40 frames and plays them in real time; a server
that runs further ahead loses audio, and big bursts have crashed small boards. ``Pacer`` tracks
when the device will have played everything sent so far and holds each packet until the queue
would be at most ``max_lead`` seconds ahead. The first packets of a reply therefore go out as a
small burst (``max_lead`` worth), then one per frame duration. If the producer falls behind, the
modelled queue runs dry and the next packet plays at once; the pacer never bursts to catch up.
"""

from __future__ import annotations

from ..scheduling import FIRST_AUDIO, PLAYBACK, Urgency


class Pacer:
    def __init__(self, frame_seconds: float, max_lead_seconds: float) -> None:
        if frame_seconds <= 0:
            raise ValueError("frame_seconds must be positive")
        self.frame_seconds = frame_seconds
        #: At least one frame, or nothing could ever be sent.
        self.max_lead = max(max_lead_seconds, frame_seconds)
        self._played_out_at: float | None = None
        #: Packets sent so far.
        self.frames_sent = 0

    def lead(self, now: float) -> float:
        """Seconds of audio queued on the device at ``now``."""
        if self._played_out_at is None:
            return 0.0
        return max(0.0, self._played_out_at - now)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next packet may be sent."""
        return max(0.0, self.lead(now) + self.frame_seconds - self.max_lead)

    def sent(self, now: float) -> None:
        """A packet went out at ``now``."""
        start = now if self._played_out_at is None else max(self._played_out_at, now)
        self._played_out_at = start + self.frame_seconds
        self.frames_sent += 1


class Runway:
    """How far a reply's audio is ready ahead of the device's playback, and so when the next piece
    of work for it is due: a reply with no audio yet needs its first clause now; later audio is due
    when the device would run out of what it has and what is encoded but not sent yet."""

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer
        #: Packets (frames) encoded so far.
        self.frames_made = 0

    def made(self, frames: int) -> None:
        """``frames`` more packets of the reply were encoded."""
        self.frames_made += frames

    def ahead(self, now: float) -> float:
        """Seconds of the reply made but not played yet at ``now``."""
        unsent = max(0, self.frames_made - self._pacer.frames_sent) * self._pacer.frame_seconds
        return self._pacer.lead(now) + unsent

    def urgency(self, now: float) -> Urgency:
        """When the next piece of this reply's work is due."""
        if self.frames_made == 0:
            return Urgency(now, FIRST_AUDIO)
        return Urgency(now + self.ahead(now), PLAYBACK)
