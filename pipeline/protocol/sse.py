"""A sans-IO parser for Server-Sent Events (``text/event-stream``), as the WHATWG spec reads them.

Both agent backends read their answers as SSE: Coze (``event:…`` / ``data:…`` pairs) and the
OpenAI-compatible APIs (``data: {...}`` lines ending with ``data: [DONE]``). The parser takes raw
bytes in whatever pieces the network delivers and returns complete events::

    parser = SseParser()
    async for chunk in response.aiter_bytes():
        for event in parser.feed(chunk):
            ...
    for event in parser.end():   # a last event the server did not terminate with a blank line
        ...

Lines end with LF, CRLF or a lone CR, and a CRLF may be split across chunks. Lines are decoded as
UTF-8 only once complete, so a character split across chunks decodes correctly (invalid bytes become
U+FFFD rather than an exception: one bad byte must not kill a turn).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. ``data`` joins multi-line data with ``\\n``."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    """Bytes in, ``SseEvent`` out; keeps only the incomplete tail between calls."""

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._has_fields = False
        self._last_id: str | None = None
        #: The server's ``retry:`` advice in milliseconds, if it sent one.
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Take the next bytes of the stream; return the events they complete, in order."""
        buffer = self._buffer + chunk
        if not self._started:
            # The stream may start with a UTF-8 byte order mark, which is not part of the first field.
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer
                return []
            self._started = True
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        events: list[SseEvent] = []
        position = 0
        while match := _LINE_END.search(buffer, position):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF: wait for the next byte
            self._line(buffer[position : match.start()], events)
            position = match.end()
        self._buffer = buffer[position:]
        return events

    def end(self) -> list[SseEvent]:
        """The stream is over: finish a last unterminated line and event.

        The spec discards an event not followed by a blank line; servers that forget the final blank
        line are common enough that the parser hands such an event out instead.
        """
        events: list[SseEvent] = []
        if self._buffer:
            line = self._buffer[:-1] if self._buffer.endswith(b"\r") else self._buffer
            self._buffer = b""
            self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SseEvent]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return  # a comment (servers send these as keep-alives)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_fields = True
        elif name == "event":
            self._event = value
            self._has_fields = True
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        # Any other field name is ignored, as the spec says.

    def _dispatch(self, events: list[SseEvent]) -> None:
        # The spec dispatches only events with data; an ``event:`` line alone is kept too, because
        # some servers send bare named events (a terminal ``event:done`` without data).
        if self._has_fields:
            events.append(SseEvent(self._event or "message", "\n".join(self._data), self._last_id))
        self._event = ""
        self._data = []
        self._has_fields = False
