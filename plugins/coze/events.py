"""Coze chat v3 stream events, decoded sans-IO from the raw ``text/event-stream`` bytes.

A Coze stream is a sequence of SSE events, each an ``event:`` line naming it, a ``data:`` line of
JSON (a Chat or a Message object) and a blank line::

    event:conversation.message.delta
    data:{"id":"…","chat_id":"…","role":"assistant","type":"answer","content":"星期三","content_type":"text"}

``CozeEventDecoder`` turns bytes, in whatever pieces the network delivers, into the typed events
below. Only ``AnswerDelta`` is meant to be spoken; everything the listener must not hear (reasoning,
verbose packets, follow-up suggestions, function calls and tool output, audio, events this module
does not know) comes out as ``Skipped`` so that the caller can count or log it. The decoder never
raises on bad input: a known event with undecodable data becomes ``Malformed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xiaozhi_trio.pipeline.protocol.sse import SseEvent, SseParser

# Event names of the chat v3 stream.
CHAT_CREATED = "conversation.chat.created"
CHAT_IN_PROGRESS = "conversation.chat.in_progress"
CHAT_COMPLETED = "conversation.chat.completed"
CHAT_FAILED = "conversation.chat.failed"
CHAT_REQUIRES_ACTION = "conversation.chat.requires_action"
MESSAGE_DELTA = "conversation.message.delta"
MESSAGE_COMPLETED = "conversation.message.completed"
AUDIO_DELTA = "conversation.audio.delta"
ERROR = "error"
DONE = "done"

_CHAT_EVENTS = (CHAT_CREATED, CHAT_IN_PROGRESS, CHAT_COMPLETED, CHAT_FAILED, CHAT_REQUIRES_ACTION)
_MESSAGE_EVENTS = (MESSAGE_DELTA, MESSAGE_COMPLETED)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a chat consumed, as ``conversation.chat.completed`` reports them."""

    token_count: int = 0
    input_count: int = 0
    output_count: int = 0


@dataclass(frozen=True, slots=True)
class ChatStarted:
    """``conversation.chat.created`` or ``.in_progress``: the chat id to cancel on barge-in."""

    chat_id: str
    conversation_id: str
    status: str


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """A piece of the answer: the only text that is spoken."""

    text: str
    chat_id: str


@dataclass(frozen=True, slots=True)
class AnswerCompleted:
    """One answer message is complete (``text`` is all of it, already spoken as deltas)."""

    text: str
    chat_id: str


@dataclass(frozen=True, slots=True)
class ChatCompleted:
    chat_id: str
    conversation_id: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class ChatFailed:
    """``conversation.chat.failed`` with the chat's ``last_error``."""

    chat_id: str
    conversation_id: str
    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the bot wants the client to run. ``arguments`` is a JSON object as text."""

    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True, slots=True)
class RequiresAction:
    """The chat waits for ``submit_tool_outputs`` with one output per call."""

    chat_id: str
    conversation_id: str
    tool_calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class StreamError:
    """An ``error`` event. ``code`` is 0 when the server sent no code."""

    code: int
    msg: str


@dataclass(frozen=True, slots=True)
class Done:
    """``done``: the stream ended normally."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event that is not spoken. ``reason`` is the message type (``reasoning``, ``verbose``,
    ``follow_up``, ``function_call``, ``tool_output``, ``tool_response``…), ``audio``, ``empty``,
    ``non_text``, ``not_assistant`` or ``unknown_event``."""

    event: str
    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A known event whose data could not be decoded."""

    event: str
    detail: str


CozeEvent = (
    ChatStarted
    | AnswerDelta
    | AnswerCompleted
    | ChatCompleted
    | ChatFailed
    | RequiresAction
    | StreamError
    | Done
    | Skipped
    | Malformed
)


class CozeEventDecoder:
    """Raw stream bytes in, ``CozeEvent`` out."""

    def __init__(self) -> None:
        self._sse = SseParser()

    def feed(self, chunk: bytes) -> list[CozeEvent]:
        """Take the next bytes of the stream; return the events they complete, in order."""
        return [decode_event(event) for event in self._sse.feed(chunk)]

    def end(self) -> list[CozeEvent]:
        """The stream is over: decode a last event the server did not end with a blank line."""
        return [decode_event(event) for event in self._sse.end()]


def decode_event(event: SseEvent) -> CozeEvent:
    """Decode one SSE event of a Coze chat stream."""
    name = event.event
    if name == DONE:
        return Done()
    if name not in _CHAT_EVENTS and name not in _MESSAGE_EVENTS and name != ERROR:
        # conversation.audio.delta is known but never spoken: the server makes the audio itself.
        return Skipped(name, "audio" if name == AUDIO_DELTA else "unknown_event")
    try:
        data = json.loads(event.data)
    except ValueError as exc:
        return Malformed(name, f"data is not JSON ({exc}): {event.data[:200]!r}")
    if not isinstance(data, dict):
        return Malformed(name, f"data is not a JSON object: {event.data[:200]!r}")
    try:
        if name == ERROR:
            return _error(data)
        if name in _MESSAGE_EVENTS:
            return _message(name, data)
        return _chat(name, data)
    except (KeyError, TypeError, ValueError) as exc:
        return Malformed(name, f"{type(exc).__name__}: {exc}: {event.data[:200]!r}")


def _error(data: dict[str, Any]) -> StreamError:
    # An error event carries {code, msg}; the recorded streams also show an empty object.
    error = data.get("error") if isinstance(data.get("error"), dict) else data
    return StreamError(int(error.get("code") or 0), str(error.get("msg") or error.get("message") or ""))


def _message(name: str, data: dict[str, Any]) -> AnswerDelta | AnswerCompleted | Skipped:
    kind = data.get("type") or ""
    if data.get("role", "assistant") != "assistant":
        return Skipped(name, "not_assistant")
    if kind != "answer":
        return Skipped(name, kind or "untyped")
    content = data.get("content") or ""
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not a string")
    if data.get("content_type", "text") != "text":
        return Skipped(name, "non_text")  # cards and multimodal objects are not speech
    if not content:
        # Reasoning models stream their thinking in answer deltas with empty content.
        return Skipped(name, "reasoning" if data.get("reasoning_content") else "empty")
    chat_id = str(data.get("chat_id") or "")
    if name == MESSAGE_DELTA:
        return AnswerDelta(content, chat_id)
    return AnswerCompleted(content, chat_id)


def _chat(name: str, data: dict[str, Any]) -> ChatStarted | ChatCompleted | ChatFailed | RequiresAction:
    chat_id = str(data["id"])
    conversation_id = str(data.get("conversation_id") or "")
    if name in (CHAT_CREATED, CHAT_IN_PROGRESS):
        return ChatStarted(chat_id, conversation_id, str(data.get("status") or ""))
    if name == CHAT_COMPLETED:
        usage = data.get("usage") or {}
        return ChatCompleted(
            chat_id,
            conversation_id,
            Usage(
                token_count=int(usage.get("token_count") or 0),
                input_count=int(usage.get("input_count") or 0),
                output_count=int(usage.get("output_count") or 0),
            ),
        )
    if name == CHAT_FAILED:
        error = data.get("last_error") or {}
        return ChatFailed(chat_id, conversation_id, int(error.get("code") or 0), str(error.get("msg") or ""))
    action = data.get("required_action") or {}
    calls = (action.get("submit_tool_outputs") or {}).get("tool_calls") or []
    return RequiresAction(chat_id, conversation_id, tuple(_tool_call(call) for call in calls))


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        # The API sends arguments as a JSON string; accept an object as well.
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return ToolCall(
        id=str(call["id"]),
        name=str(function.get("name") or ""),
        arguments=arguments,
        type=str(call.get("type") or "function"),
    )
