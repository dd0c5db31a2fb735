"""The streamed ``/chat/completions`` answer, decoded sans-IO.

The body is SSE: ``data: {chunk}`` lines, then ``data: [DONE]``. Each chunk's
``choices[0].delta`` may carry ``content`` (spoken), ``reasoning_content`` (a reasoning model's
thoughts: never spoken) and ``tool_calls`` pieces that must be put together by ``index``: the
first piece of a call has its ``id`` and function ``name``, later pieces add to ``arguments``.

``ChatStreamDecoder.feed(bytes)`` returns the content deltas and keeps the rest as state.
``ThinkFilter`` removes ``<think>…</think>`` blocks, which some local reasoning models (served by
Ollama, say) put into ``content`` itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from xiaozhi_trio.pipeline.protocol.sse import SseEvent, SseParser

log = logging.getLogger(__name__)


class StreamFailure(Exception):
    """The stream carried an error object instead of a chunk."""


@dataclass
class ToolCall:
    """One function call the model asked for, put together from its pieces."""

    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChatStreamDecoder:
    """Bytes of one streamed completion in, content deltas out."""

    _sse: SseParser = field(default_factory=SseParser)
    _calls: dict[int, ToolCall] = field(default_factory=dict)
    #: ``data: [DONE]`` arrived.
    done: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    #: Characters of ``reasoning_content`` seen (and not spoken).
    reasoning_chars: int = 0
    malformed_chunks: int = 0

    def feed(self, data: bytes) -> list[str]:
        """The next bytes of the body; returns the content deltas they complete, in order.

        Raises ``StreamFailure`` when the stream reports an error.
        """
        return self._events(self._sse.feed(data))

    def end(self) -> list[str]:
        """The body is over; returns content from a last event the server did not terminate."""
        return self._events(self._sse.end())

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The complete tool calls, in index order (valid once the stream is over)."""
        return [self._calls[i] for i in sorted(self._calls)]

    def _events(self, events: list[SseEvent]) -> list[str]:
        texts: list[str] = []
        for event in events:
            if self.done:
                continue  # nothing after [DONE] counts
            data = event.data.strip()
            if data == "[DONE]":
                self.done = True
                continue
            if event.event == "error":
                raise StreamFailure(_error_message(data))
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                self.malformed_chunks += 1
                log.warning("skipping a stream chunk that is not JSON: %.200r", data)
                continue
            if not isinstance(chunk, dict):
                self.malformed_chunks += 1
                continue
            if "error" in chunk:
                raise StreamFailure(_error_message(chunk["error"]))
            self._chunk(chunk, texts)
        return texts

    def _chunk(self, chunk: dict[str, Any], texts: list[str]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return  # a usage-only chunk, or a keep-alive
        choice = choices[0]
        if isinstance(choice.get("finish_reason"), str):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str):
            self.reasoning_chars += len(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            texts.append(content)
        pieces = delta.get("tool_calls")
        if isinstance(pieces, list):
            for position, piece in enumerate(pieces):
                if isinstance(piece, dict):
                    self._tool_piece(position, piece)

    def _tool_piece(self, position: int, piece: dict[str, Any]) -> None:
        # Some servers (older Ollama) send whole calls without an index: use the list position.
        index = piece.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        call = self._calls.setdefault(index, ToolCall())
        if isinstance(piece.get("id"), str) and piece["id"] and not call.id:
            call.id = piece["id"]
        function = piece.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                call.name += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments += arguments
            elif isinstance(arguments, dict):  # a server that sends parsed arguments
                call.arguments += json.dumps(arguments, ensure_ascii=False)


def _error_message(error: object) -> str:
    if isinstance(error, str):
        try:
            error = json.loads(error)
        except json.JSONDecodeError:
            return error[:300]
        if isinstance(error, dict) and "error" in error:
            error = error["error"]
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg") or json.dumps(error, ensure_ascii=False)
        code = error.get("code") or error.get("type")
        return f"{message} ({code})" if code else str(message)
    return str(error)[:300]


class ThinkFilter:
    """Drops ``<think>…</think>`` from streamed text, tags split across deltas included."""

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._inside = False
        self._pending = ""  # a possible start of a tag, held back until it is decided

    def feed(self, text: str) -> str:
        """The next delta; returns what may be spoken of it now."""
        text = self._pending + text
        self._pending = ""
        out: list[str] = []
        while text:
            tag = self.CLOSE if self._inside else self.OPEN
            at = text.find(tag)
            if at >= 0:
                if not self._inside:
                    out.append(text[:at])
                text = text[at + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _partial_suffix(text, tag)
            if not self._inside:
                out.append(text[: len(text) - keep])
            self._pending = text[len(text) - keep :]
            break
        return "".join(out)

    def end(self) -> str:
        """The text is over: a held-back partial tag outside a block was text after all."""
        pending, self._pending = self._pending, ""
        return "" if self._inside else pending


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
