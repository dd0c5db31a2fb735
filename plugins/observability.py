"""Built-in plugin: one log line per turn with its per-stage latencies (end of speech → transcript →
first agent text → first sentence → first audio), written through ``logging``, so in logfmt or JSON
with the device and session ids. Sessions log their own opening, closing and errors.

It observes ``xiaozhi_session_event`` exactly as a third-party exporter would; block it like any
plugin to silence it. What users say and token counts go to DEBUG only.
"""

from __future__ import annotations

import logging

from xiaozhi_trio.pipeline.events import AgentUsage, SessionEvent, TranscriptReady
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.ops.turns import RESPONSE, STAGES, TurnSummary, TurnTimer

log = logging.getLogger("xiaozhi_trio.sessions")

_SHORT = {
    "speech_end_to_transcript": "transcript",
    "transcript_to_first_text": "first text",
    "first_text_to_first_sentence": "first sentence",
    "first_sentence_to_first_audio": "first audio",
}


class SessionLogger:
    """Turns session events into log lines."""

    def __init__(self) -> None:
        self._timer = TurnTimer()

    def observe(self, event: SessionEvent) -> None:
        ids = {"device": event.device_id, "session": event.session_id}
        match event:
            case TranscriptReady():
                log.debug("heard %r", event.text, extra=ids)
            case AgentUsage():
                log.debug("agent tokens: %d in, %d out", event.input_tokens, event.output_tokens, extra=ids)
            case _:
                pass
        for result in self._timer.feed(event):
            if isinstance(result, TurnSummary):
                self._turn(result, ids)

    @staticmethod
    def _turn(summary: TurnSummary, ids: dict[str, str]) -> None:
        parts = [f"{_SHORT[stage]} {summary.stages[stage]:.2f} s" for stage in STAGES if stage in summary.stages]
        if RESPONSE in summary.stages:
            parts.append(f"response {summary.stages[RESPONSE]:.2f} s")
        timings = {f"{stage}_s": round(seconds, 4) for stage, seconds in summary.stages.items()}
        log.info(
            "turn %d %s%s", summary.turn, summary.outcome, f": {', '.join(parts)}" if parts else "",
            extra={**ids, "turn": summary.turn, "outcome": summary.outcome, **timings},
        )


_logger = SessionLogger()


@hookimpl
def xiaozhi_session_event(event: SessionEvent) -> None:
    _logger.observe(event)
