"""When to send the next downlink packet: a model of the device's playback queue (sans-IO).

The device decodes packets into a queue of about 40 frames and plays them in real time; a server
that runs further ahead loses audio, and big bursts have crashed small boards. ``Pacer`` tracks
when the device will have played everything sent so far and holds each packet until the queue
would be at most ``max_lead`` seconds ahead. The first packets of a reply therefore go out as a
small burst (``max_lead`` worth), then one per frame duration. If the producer falls behind, the
modelled queue runs dry and the next packet plays at once; the pacer never bursts to catch up.
"""

from __future__ import annotations


class Pacer:
    def __init__(self, frame_seconds: float, max_lead_seconds: float) -> None:
        if frame_seconds <= 0:
            raise ValueError("frame_seconds must be positive")
        self.frame_seconds = frame_seconds
        #: At least one frame, or nothing could ever be sent.
        self.max_lead = max(max_lead_seconds, frame_seconds)
        self._played_out_at: float | None = None

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
