"""The ``openai`` agent: streamed ``/chat/completions`` with per-device history and function calling.

One turn::

    history (from the store) + the question ─▶ POST /chat/completions (stream) ─▶ content deltas
    spoken at once ─▶ tool calls? run them (device MCP or plugin tools), add the results, ask again
    (at most ``max_tool_rounds`` times) ─▶ the question and what was said go back to the store.

The history keeps what the user heard: the question and the spoken answer, not the tool traffic
(every provider accepts that, and it costs few tokens). A barge-in cancels the turn: leaving the
``httpx`` stream context closes the connection at once, and the history records what was said so
far, marked as interrupted, so the model knows the user did not hear the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from xiaozhi_trio.pipeline.backends import AgentRequest, BackendError, ToolBox
from xiaozhi_trio.pipeline.messages import AgentText
from xiaozhi_trio.pipeline.protocol.tool_lookup import resolve_tool, unresolved_message
from xiaozhi_trio.pipeline.protocol.tools import openai_tool_schema
from xiaozhi_trio.pipeline.store.conversations import ConversationStore
from xiaozhi_trio.pipeline.store.sqlite import DatabaseError

from .options import OpenAIOptions
from .stream import ChatStreamDecoder, StreamFailure, ThinkFilter, ToolCall

log = logging.getLogger(__name__)

#: The key this agent's memory has in the conversation store.
STORE_KEY = "openai"
#: Longest error body read for a message.
_ERROR_BODY_LIMIT = 4096
#: Seconds the history write may take after a barge-in.
_SAVE_TIMEOUT = 5.0
_STATUS_KINDS = {
    401: "auth",
    403: "auth",
    404: "not_found",
    408: "timeout",
    413: "bad_request",
    400: "bad_request",
    422: "bad_request",
    429: "rate_limit",
}


@dataclass
class _ReplySoFar:
    """What one turn has said so far (for the history, whatever way the turn ends)."""

    said: str = ""
    #: The request's usage callback (the pipeline turns it into an ``AgentUsage`` event).
    report_usage: Callable[[int, int], None] | None = None


class OpenAIChatAgent:
    """An ``Agent`` on any OpenAI-compatible chat completions API. Shared by all sessions."""

    def __init__(
        self,
        options: OpenAIOptions,
        api_key: str,
        store: ConversationStore,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options
        self.store = store
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(options.timeout), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- the turn ------------------------------------------------------------------------------

    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        """Stream the answer to ``request`` into ``send`` (see ``Agent``)."""
        history = await self._load_history(request.device_id)
        question = {"role": "user", "content": request.text}
        turn = _ReplySoFar(report_usage=request.report_usage)
        outcome = "interrupted"
        try:
            await self._converse([*history, question], request.tools, send, turn)
            outcome = "complete"
        except BackendError:
            outcome = "failed"
            raise
        finally:
            # Shielded, so that a barge-in still leaves the question and the partial answer behind.
            with trio.CancelScope(shield=True), trio.move_on_after(_SAVE_TIMEOUT):
                await self._save(request.device_id, question, turn.said, outcome)

    async def _converse(
        self,
        messages: list[dict[str, Any]],
        tools: ToolBox | None,
        send: trio.MemorySendChannel[AgentText],
        turn: _ReplySoFar,
    ) -> None:
        if self.options.system_prompt:
            messages = [{"role": "system", "content": self.options.system_prompt}, *messages]
        specs = await tools.list_tools() if tools is not None else []
        names = [spec.name for spec in specs]
        schemas = [openai_tool_schema(spec) for spec in specs]
        for round_number in range(self.options.max_tool_rounds + 1):
            may_call = round_number < self.options.max_tool_rounds
            calls, text = await self._complete(messages, schemas, may_call, send, turn)
            if not calls:
                return
            if not may_call or tools is None:
                raise BackendError(
                    f"the model still called tools after {self.options.max_tool_rounds} rounds", kind="tool_rounds"
                )
            messages.append(
                {
                    "role": "assistant",
                    "content": text or None,
                    "tool_calls": [
                        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                        for c in calls
                    ],
                }
            )
            for call in calls:
                output = await self._run_tool(call, names, tools)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})

    async def _run_tool(self, call: ToolCall, names: list[str], tools: ToolBox) -> str:
        lookup = resolve_tool(call.name, names)
        tool = lookup.tool
        if tool is None:
            message = unresolved_message(lookup, names, as_functions=True)
            log.warning("the model called a function this session cannot resolve: %s", message)
            return f"error: {message}"
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as e:
            return f"error: the arguments are not valid JSON ({e})"
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object"
        result = await tools.call(tool, arguments)
        log.info("tool %s(%s) -> %s%.200s", tool, call.arguments, "error: " if result.is_error else "", result.text)
        text = result.text or "(no output)"
        return f"error: {text}" if result.is_error else text

    # ---- one streamed completion ---------------------------------------------------------------

    async def _complete(
        self,
        messages: list[dict[str, Any]],
        schemas: list[dict[str, Any]],
        may_call: bool,
        send: trio.MemorySendChannel[AgentText],
        turn: _ReplySoFar,
    ) -> tuple[list[ToolCall], str]:
        """One request; speaks its content as it arrives; returns (tool calls, text of this round)."""
        body: dict[str, Any] = {
            "model": self.options.model,
            "messages": messages,
            "stream": True,
            # Without it a stream carries no token counts; with it a last chunk (no choices) does.
            "stream_options": {"include_usage": True},
        }
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        if schemas:
            body["tools"] = schemas
            if not may_call:
                body["tool_choice"] = "none"
        decoder = ChatStreamDecoder()
        think = ThinkFilter()
        spoken: list[str] = []

        async def speak(texts: list[str]) -> None:
            for text in texts:
                if text := think.feed(text):
                    spoken.append(text)
                    turn.said += text
                    await send.send(AgentText(text))

        endpoint = self.options.endpoint
        try:
            async with self._http.stream("POST", endpoint, json=body) as response:
                if response.status_code != 200:
                    raise _http_error(response, await _read_limited(response))
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    await speak(_whole_reply(response, await _read_limited(response, 1 << 20), decoder))
                else:
                    async for chunk in response.aiter_bytes():
                        await speak(decoder.feed(chunk))
                    await speak(decoder.end())
                    if not decoder.done:
                        if decoder.finish_reason is None:
                            raise BackendError(
                                f"{endpoint}: the answer stream ended before [DONE]", kind="stream_ended"
                            )
                        log.warning(
                            "%s: the stream ended without [DONE] after finish_reason %s",
                            endpoint,
                            decoder.finish_reason,
                        )
        except StreamFailure as e:
            raise BackendError(f"{endpoint}: the stream reported an error: {e}", kind="api_error") from None
        except httpx.TimeoutException:
            raise BackendError(f"{endpoint} did not answer within {self.options.timeout:g} s", kind="timeout") from None
        except httpx.RemoteProtocolError as e:
            raise BackendError(f"{endpoint}: the connection broke off mid-answer ({e})", kind="stream_ended") from None
        except httpx.TransportError as e:
            raise BackendError(f"cannot reach {endpoint}: {e or type(e).__name__}", kind="connection") from None
        if tail := think.end():
            spoken.append(tail)
            turn.said += tail
            await send.send(AgentText(tail))
        if decoder.usage:
            log.info("%s usage: %s", self.options.model, decoder.usage)
            if turn.report_usage is not None:
                turn.report_usage(int(decoder.usage.get("prompt_tokens") or 0), int(decoder.usage.get("completion_tokens") or 0))
        if decoder.reasoning_chars:
            log.debug("%s reasoned for %d characters (not spoken)", self.options.model, decoder.reasoning_chars)
        calls = decoder.tool_calls
        for number, call in enumerate(calls):
            call.id = call.id or f"call_{number}"
        return calls, "".join(spoken)

    # ---- memory --------------------------------------------------------------------------------

    async def _load_history(self, device_id: str) -> list[dict[str, Any]]:
        turns = self.options.history_turns
        if turns == 0:
            return []
        try:
            stored = await self.store.load_history(STORE_KEY, device_id, 2 * turns)
        except DatabaseError as e:
            log.error("cannot load the history of %s, answering without it: %s", device_id, e)
            return []
        return history_messages(stored)

    async def _save(self, device_id: str, question: dict[str, Any], said: str, outcome: str) -> None:
        if outcome == "failed" and not said:
            return  # nothing reached the user: as if the question had not been asked
        answer: dict[str, Any] = {"role": "assistant", "content": said}
        if outcome != "complete":
            answer["interrupted"] = True
        try:
            await self.store.append_history(STORE_KEY, device_id, [question, answer])
        except DatabaseError as e:
            log.error("cannot save the history of %s: %s", device_id, e)


def history_messages(stored: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored history as API messages: starting at a question, interruptions spelled out."""
    messages: list[dict[str, Any]] = []
    for message in stored:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant") or not isinstance(content, str):
            continue
        if not messages and role != "user":
            continue  # the bound cut a pair in half
        if role == "assistant" and message.get("interrupted"):
            content = (
                f"{content}… (the user interrupted here)" if content else "(the user interrupted before the answer)"
            )
        messages.append({"role": role, "content": content})
    return messages


async def _read_limited(response: httpx.Response, limit: int = _ERROR_BODY_LIMIT) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _http_error(response: httpx.Response, body: bytes) -> BackendError:
    status = response.status_code
    kind = _STATUS_KINDS.get(status, "server" if status >= 500 else "http")
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        error = parsed["error"]
        detail = error.get("message", json.dumps(error, ensure_ascii=False)) if isinstance(error, dict) else str(error)
    else:
        detail = text[:300] or "(empty body)"
    request_id = response.headers.get("x-request-id")
    suffix = f" [request id {request_id}]" if request_id else ""
    return BackendError(f"{response.request.url} answered HTTP {status}: {detail}{suffix}", kind=kind)


def _whole_reply(response: httpx.Response, body: bytes, decoder: ChatStreamDecoder) -> list[str]:
    """A JSON body where a stream was asked for: an error, or a server that ignored ``stream``."""
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        raise BackendError(
            f"{response.request.url} answered {response.headers.get('content-type', 'no content type')} that is not JSON: "
            f"{body[:200].decode('utf-8', errors='replace')}",
            kind="bad_response",
        ) from None
    if isinstance(parsed, dict) and "error" in parsed:
        raise BackendError(
            f"{response.request.url} answered an error: {_error_detail(parsed['error'])}", kind="api_error"
        )
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(f"{response.request.url} answered JSON without choices: {body[:200]!r}", kind="bad_response")
    # Re-use the stream decoder: a whole message is one big delta.
    message = choices[0].get("message") or {}
    tool_calls = message.get("tool_calls") if isinstance(message, dict) else None
    delta = {"content": message.get("content"), "tool_calls": tool_calls} if isinstance(message, dict) else {}
    chunk = {
        "choices": [{"delta": delta, "finish_reason": choices[0].get("finish_reason")}],
        "usage": parsed.get("usage"),
    }
    texts = decoder.feed(b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n")
    return texts


def _error_detail(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error, ensure_ascii=False)
        code = error.get("code") or error.get("type")
        return f"{message} ({code})" if code else str(message)
    return str(error)[:300]
