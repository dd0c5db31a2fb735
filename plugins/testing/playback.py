"""A simulated device's playback queue, replayed from when each reply packet arrived (sans-IO).

The firmware decodes downlink packets into a queue and plays it in real time from the first
packet of a reply. Given each packet's arrival time and the audio it holds, ``replay`` works out
what a listener heard: the queue runs dry mid-reply whenever a packet arrives after everything
before it has played (an underrun: an audible gap, as long as the packet was late), and the least
audio the queue held when a packet came (the margin that was left against a late packet).

Times are whatever clock the arrivals were taken on (the benchmark's trio clock); nothing here
reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Playback:
    """One reply as the device played it."""

    packets: int
    #: Seconds of audio received.
    audio: float
    #: Times the queue ran dry before the reply's next packet came.
    underruns: int
    #: Seconds of silence those gaps lasted in all.
    silence: float
    #: Least audio (s) queued when a packet arrived, once the opening burst was in; 0 if it ran
    #: dry; NaN when the reply had no packet after its burst.
    least_queued: float
    #: Most audio (s) queued just after a packet arrived (must stay inside the device's buffer).
    most_queued: float
    #: Indices of the packets that arrived to an empty queue (after an underrun).
    late_packets: tuple[int, ...] = field(default=())

    @property
    def started_to_finished(self) -> float:
        """First packet → the end of the last packet's audio, gaps included."""
        return self.audio + self.silence


def replay(arrivals: Sequence[tuple[float, float]], burst: int = 1) -> Playback:
    """Replay ``arrivals`` — (arrival time, seconds of audio) per packet, in arrival order —
    through a queue played in real time from the first packet.

    ``burst`` is how many packets the server sends at once to start a reply (its lead over
    playback, in packets): the queue is naturally short while they arrive, so ``least_queued``
    is taken from the packet after them on."""
    if burst < 1:
        raise ValueError("burst must be at least one packet")
    played_out: float | None = None  # when everything received so far will have been played
    underruns, silence, least, most = 0, 0.0, math.inf, 0.0
    late: list[int] = []
    previous = -math.inf
    for index, (at, seconds) in enumerate(arrivals):
        if at < previous:
            raise ValueError(f"packet {index} arrived before packet {index - 1}")
        if seconds < 0:
            raise ValueError(f"packet {index} holds a negative duration")
        previous = at
        queued = 0.0 if played_out is None else max(0.0, played_out - at)
        if played_out is not None and at > played_out:
            underruns += 1
            silence += at - played_out
            late.append(index)
        if index >= burst:
            least = min(least, queued)
        played_out = (at if played_out is None else max(played_out, at)) + seconds
        most = max(most, played_out - at)
    return Playback(
        packets=len(arrivals),
        audio=sum(seconds for _, seconds in arrivals),
        underruns=underruns,
        silence=silence,
        least_queued=least if least != math.inf else math.nan,
        most_queued=most,
        late_packets=tuple(late),
    )
