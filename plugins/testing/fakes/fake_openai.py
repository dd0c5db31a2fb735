"""A fake OpenAI-compatible ``/v1/chat/completions`` server on loopback (trio + h11).

It speaks real HTTP/1.1 with chunked streaming, keep-alive and the SSE byte format of the real APIs
(``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n``), so the client under test runs its real code.
Replies are scripted per request, in order::

    server = FakeOpenAI()
    base_url = await nursery.start(server.serve)
    server.script(text_reply("Hello", " there."), lambda body: text_reply(f"echo {last_user(body)}"))

Fault injection: ``Stream(gate=..., gate_at=k)`` holds back the events from index ``k`` until the
test sets the gate (a slow first token, or a barge-in mid-answer), ``delay`` sleeps before each
event (for timeouts under the autojump clock), ``done=False`` ends the body without ``[DONE]``,
``drop=True`` closes the connection mid-body, ``HttpReply`` sends any status and body (401, 429,
500, a JSON error with HTTP 200). The server records each request and notices a client that hangs
up mid-stream (``client_gone``). As the real APIs do, a stream ends with a usage chunk (no
``choices``) only when the request asks for it with ``stream_options.include_usage``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class Stream:
    """A streamed 200 answer: SSE events (dict: a ``data:`` chunk; bytes: sent verbatim)."""

    events: list[dict[str, Any] | bytes]
    done: bool = True
    drop: bool = False
    gate: trio.Event | None = None
    gate_at: int = 0
    delay: float = 0.0
    newline: bytes = b"\n"


@dataclass
class HttpReply:
    """Any non-streamed answer."""

    status: int
    body: dict[str, Any] | str | bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Reply = Stream | HttpReply
Script = Reply | Callable[[dict[str, Any]], Reply]


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


# ---- reply builders -------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish_reason: str | None = None, *, model: str = "deepseek-chat") -> dict[str, Any]:
    """One ``chat.completion.chunk`` as the APIs send it."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_reply(*pieces: str, reasoning: tuple[str, ...] = (), **stream_options: Any) -> Stream:
    """A streamed text answer: a role chunk, reasoning deltas, content deltas, a stop chunk."""
    events: list[dict[str, Any] | bytes] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": None, "reasoning_content": r}) for r in reasoning]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({"content": ""}, "stop"))
    events.append(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 20, "completion_tokens": len(pieces), "total_tokens": 20 + len(pieces)},
        }
    )
    return Stream(events, **stream_options)


def tool_call_reply(
    calls: list[tuple[str, str, str]], *, pieces: int = 3, text: str = "", **stream_options: Any
) -> Stream:
    """A streamed answer that calls functions: ``calls`` = (call id, function name, arguments JSON).

    Each call's first piece carries its id and name; its arguments follow in ``pieces`` parts.
    """
    events: list[dict[str, Any] | bytes] = [chunk({"role": "assistant", "content": text or None})]
    for index, (call_id, name, arguments) in enumerate(calls):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                    ]
                }
            )
        )
        size = max(1, -(-len(arguments) // pieces))
        for start in range(0, len(arguments), size):
            events.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start : start + size]}}]})
            )
    events.append(chunk({}, "tool_calls"))
    return Stream(events, **stream_options)


def last_message(body: dict[str, Any], role: str) -> str:
    """Content of the last message with ``role`` in a request body."""
    for message in reversed(body["messages"]):
        if message["role"] == role:
            return message["content"]
    raise AssertionError(f"no {role} message in {body['messages']}")


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _is_usage_chunk(event: dict[str, Any] | bytes) -> bool:
    return isinstance(event, dict) and "usage" in event and not event.get("choices")


# ---- the server -------------------------------------------------------------------------------------


class FakeOpenAI:
    def __init__(self, route: str = "/chat/completions") -> None:
        #: The endpoint it answers (``/audio/speech`` for the speech API); others get 404.
        self.route = route
        self.requests: list[Recorded] = []
        self._script: deque[Script] = deque()
        #: Set when a client hangs up before a streamed answer is complete.
        self.client_gone = trio.Event()
        self.streams_cut_by_client = 0
        self.port = 0

    def script(self, *replies: Script) -> None:
        """Queue the answers to the next requests (a callable gets the request body)."""
        self._script.extend(replies)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.base_url)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                request = await self._read_request(conn, stream)
                if request is None:
                    return
                if not await self._answer(conn, stream, request):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, stream: trio.SocketStream) -> Recorded | None:
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(await stream.receive_some(65536))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
        assert head is not None
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        recorded = Recorded(head.method.decode(), head.target.decode(), headers, json.loads(body) if body else {})
        self.requests.append(recorded)
        return recorded

    def _next_reply(self, request: Recorded) -> Reply:
        if request.method != "POST" or not request.path.endswith(self.route):
            return HttpReply(
                404,
                {"error": {"message": f"no route {request.method} {request.path}", "type": "invalid_request_error"}},
            )
        if not self._script:
            return HttpReply(
                500, {"error": {"message": "the fake server has no scripted reply left", "type": "server_error"}}
            )
        item = self._script.popleft()
        return item(request.body) if callable(item) else item

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, request: Recorded) -> bool:
        """Send the reply; False when the connection must close."""
        reply = self._next_reply(request)
        try:
            if isinstance(reply, HttpReply):
                await self._send_http(conn, stream, reply)
                return True
            return await self._send_stream(conn, stream, reply, usage=_wants_usage(request.body))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._client_hung_up()
            return False

    async def _send_http(self, conn: h11.Connection, stream: trio.SocketStream, reply: HttpReply) -> None:
        if isinstance(reply.body, dict):
            data = json.dumps(reply.body).encode()
        else:
            data = reply.body.encode() if isinstance(reply.body, str) else reply.body
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(data))),
            ("x-request-id", "req-fake"),
            *reply.headers,
        ]
        await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _send_stream(self, conn: h11.Connection, stream: trio.SocketStream, reply: Stream, *, usage: bool) -> bool:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("x-request-id", "req-fake"),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        # As the real APIs: the usage chunk only for requests that ask for it.
        events = [event for event in reply.events if usage or not _is_usage_chunk(event)]
        if reply.done:
            events.append(b"data: [DONE]" + reply.newline + reply.newline)
        finished = False

        async def send_events() -> None:
            nonlocal finished
            for index, event in enumerate(events):
                if reply.gate is not None and index == reply.gate_at:
                    await reply.gate.wait()
                if reply.delay:
                    await trio.sleep(reply.delay)
                data = (
                    event
                    if isinstance(event, bytes)
                    else b"data: " + json.dumps(event, ensure_ascii=False).encode() + reply.newline + reply.newline
                )
                await stream.send_all(conn.send(h11.Data(data=data)))
            if not reply.drop:
                await stream.send_all(conn.send(h11.EndOfMessage()))
            finished = True

        async with trio.open_nursery() as nursery:
            # While streaming, the client sends nothing: EOF on the socket means it hung up.
            nursery.start_soon(self._watch_for_hang_up, conn, stream, nursery.cancel_scope)
            try:
                await send_events()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client hung up (reset) while we were sending
            nursery.cancel_scope.cancel()
        if not finished:
            self._client_hung_up()
        return finished and not reply.drop

    async def _watch_for_hang_up(
        self, conn: h11.Connection, stream: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                scope.cancel()
                return
            conn.receive_data(data)  # the next request, early: h11 keeps it for the next cycle

    def _client_hung_up(self) -> None:
        self.streams_cut_by_client += 1
        self.client_gone.set()
