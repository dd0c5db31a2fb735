"""The Coze open API calls a voice turn needs, on ``httpx.AsyncClient`` (which runs under trio).

Every call carries the bearer token from a ``TokenSource``; a rejected token (HTTP 401 or code
4100) is read again and the call retried once if a new one is there. Every failure becomes a
``CozeApiError`` (a ``BackendError``) whose ``kind`` names it (``coze_4016``, ``http_429``,
``timeout``, ``stream_cut``…) and whose message carries the Coze code, message and ``x-tt-logid``.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from xiaozhi_trio.pipeline.backends import BackendError

from .auth import TokenSource
from .events import (
    ChatCompleted,
    ChatFailed,
    ChatStarted,
    CozeEvent,
    CozeEventDecoder,
    Done,
    RequiresAction,
)

log = logging.getLogger(__name__)

#: Coze's "invalid access token" code.
INVALID_TOKEN = 4100
#: Coze's "a chat is already running in this conversation" code.
CONVERSATION_BUSY = 4016
#: Coze's "the chat cannot be cancelled" code (it has already finished).
CANNOT_CANCEL = 4104


class CozeApiError(BackendError):
    """A Coze call failed. ``code`` and ``msg`` are Coze's (``code`` is None when it sent none)."""

    def __init__(self, message: str, *, kind: str, code: int | None = None, msg: str = "",
                 status: int | None = None, logid: str = "") -> None:
        super().__init__(message, kind=kind)
        self.code = code
        self.msg = msg
        self.status = status
        self.logid = logid


def _error_from_response(what: str, response: httpx.Response, body: Any) -> CozeApiError:
    logid = response.headers.get("x-tt-logid", "")
    code: int | None = None
    msg = ""
    if isinstance(body, dict):
        try:
            code = int(body["code"]) if "code" in body else None
        except (TypeError, ValueError):
            code = None
        msg = str(body.get("msg") or body.get("error_message") or "")
    elif response.content:
        msg = response.text[:200]
    status = response.status_code
    kind = f"http_{status}" if status >= 400 else f"coze_{code}" if code else "coze_bad_reply"
    parts = [f"Coze {what} failed:", f"HTTP {status}" if status != 200 else ""]
    if code is not None:
        parts.append(f"code {code}")
    if msg:
        parts.append(repr(msg))
    parts.append(f"(logid {logid or 'none'})")
    return CozeApiError(" ".join(p for p in parts if p), kind=kind, code=code, msg=msg, status=status, logid=logid)


def _is_token_rejection(error: CozeApiError) -> bool:
    return error.status == 401 or error.code == INVALID_TOKEN


def _transport_error(what: str, exc: httpx.HTTPError) -> CozeApiError:
    if isinstance(exc, httpx.TimeoutException):
        return CozeApiError(f"Coze {what} timed out ({type(exc).__name__})", kind="timeout")
    if isinstance(exc, httpx.ConnectError):
        return CozeApiError(f"cannot connect to Coze for {what}: {exc}", kind="connect")
    return CozeApiError(f"Coze {what} failed on the network: {type(exc).__name__}: {exc}", kind="network")


class ChatStream:
    """The events of one streaming response, in order; ends after ``Done``.

    Raises ``CozeApiError`` with kind ``stream_cut`` if the connection ends before ``done``, and
    ``timeout`` if it goes quiet for longer than the client's read timeout.
    """

    def __init__(self, response: httpx.Response, what: str) -> None:
        self.response = response
        self.logid = response.headers.get("x-tt-logid", "")
        self._what = what
        self._decoder = CozeEventDecoder()
        self._chunks = response.aiter_bytes()
        self._pending: deque[CozeEvent] = deque()
        self._error: CozeApiError | None = None
        self._ended = False
        self._done = False

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> CozeEvent:
        while not self._pending:
            if not await self._fill():
                raise StopAsyncIteration
        event = self._pending.popleft()
        if isinstance(event, Done):
            self._done = True
        return event

    async def chat_id(self) -> str | None:
        """Read ahead to the first chat event and return its chat id (None if the stream ends
        first); the events read stay queued for iteration."""
        checked = 0
        while True:
            for event in list(self._pending)[checked:]:
                if isinstance(event, ChatStarted | ChatCompleted | ChatFailed | RequiresAction):
                    return event.chat_id
                if isinstance(event, Done):
                    return None
            checked = len(self._pending)
            if not await self._fill():
                return None

    async def _fill(self) -> bool:
        """Decode the next chunk into the queue; False at the end of the events."""
        if self._error is not None:
            raise self._error
        if self._done or self._ended:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            events = self._decoder.end()
            self._pending.extend(events)
            if not any(isinstance(event, Done) for event in self._pending):
                self._error = self._cut("the connection ended before the done event")
            # With an error pending, report progress so that the next call raises it.
            return bool(events) or self._error is not None
        except httpx.TimeoutException:
            self._error = CozeApiError(f"Coze {self._what} stream went quiet (read timeout; logid {self.logid})",
                                       kind="timeout", logid=self.logid)
            raise self._error from None
        except httpx.HTTPError as exc:
            self._error = self._cut(f"{type(exc).__name__}: {exc}")
            raise self._error from None
        self._pending.extend(self._decoder.feed(chunk))
        return True

    def _cut(self, why: str) -> CozeApiError:
        return CozeApiError(f"Coze {self._what} stream was cut: {why} (logid {self.logid})",
                            kind="stream_cut", logid=self.logid)


class CozeClient:
    """The calls of one Coze API host (``base_url``) with one set of credentials."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, auth: TokenSource) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.auth = auth

    async def create_conversation(self, *, bot_id: str, meta_data: Mapping[str, str] | None = None) -> str:
        """Create an empty conversation with ``bot_id``; return its id."""
        body: dict[str, Any] = {"bot_id": bot_id}
        if meta_data:
            body["meta_data"] = dict(meta_data)
        data = await self._call_json("conversation create", "/v1/conversation/create", body=body)
        conversation_id = data.get("id") if isinstance(data, dict) else None
        if not conversation_id:
            raise CozeApiError(f"Coze conversation create returned no id: {data!r}", kind="coze_bad_reply")
        return str(conversation_id)

    @asynccontextmanager
    async def chat(self, *, conversation_id: str, bot_id: str, user_id: str, text: str,
                   custom_variables: Mapping[str, str] | None = None) -> AsyncIterator[ChatStream]:
        """Start a streaming chat: ``text`` as the user's message in ``conversation_id``."""
        body: dict[str, Any] = {
            "bot_id": bot_id,
            "user_id": user_id,
            "stream": True,
            "auto_save_history": True,
            "additional_messages": [{"role": "user", "content": text, "content_type": "text"}],
        }
        if custom_variables:
            body["custom_variables"] = dict(custom_variables)
        async with self._stream("chat", "/v3/chat", {"conversation_id": conversation_id}, body) as stream:
            yield stream

    @asynccontextmanager
    async def submit_tool_outputs(self, *, conversation_id: str, chat_id: str,
                                  outputs: Sequence[tuple[str, str]]) -> AsyncIterator[ChatStream]:
        """Answer a ``requires_action`` with ``(tool_call_id, output)`` pairs; stream the rest."""
        body = {
            "tool_outputs": [{"tool_call_id": call_id, "output": output} for call_id, output in outputs],
            "stream": True,
        }
        params = {"conversation_id": conversation_id, "chat_id": chat_id}
        async with self._stream("submit_tool_outputs", "/v3/chat/submit_tool_outputs", params, body) as stream:
            yield stream

    async def cancel(self, *, conversation_id: str, chat_id: str) -> str:
        """Cancel a running chat; return its status (``"finished"`` if it had already ended)."""
        try:
            data = await self._call_json("chat cancel", "/v3/chat/cancel",
                                         body={"conversation_id": conversation_id, "chat_id": chat_id})
        except CozeApiError as error:
            if error.code == CANNOT_CANCEL:
                return "finished"
            raise
        return str(data.get("status") or "") if isinstance(data, dict) else ""

    # ---- plumbing ----------------------------------------------------------------------------

    async def _headers(self) -> tuple[str, dict[str, str]]:
        token = await self.auth.token()
        return token, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def _call_json(self, what: str, path: str, *, body: Mapping[str, Any]) -> Any:
        """POST ``body``; return the reply's ``data``."""
        for attempt in (1, 2):
            token, headers = await self._headers()
            try:
                response = await self.http.post(self.base_url + path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise _transport_error(what, exc) from None
            try:
                reply = response.json()
            except ValueError:
                reply = None
            logid = response.headers.get("x-tt-logid", "")
            if response.status_code == 200 and isinstance(reply, dict) and not reply.get("code"):
                log.debug("coze %s ok (logid %s)", what, logid)
                return reply.get("data")
            error = _error_from_response(what, response, reply)
            if attempt == 1 and _is_token_rejection(error) and await self.auth.rejected(token):
                continue
            raise error
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _stream(self, what: str, path: str, params: Mapping[str, str],
                      body: Mapping[str, Any]) -> AsyncIterator[ChatStream]:
        for attempt in (1, 2):
            token, headers = await self._headers()
            headers["Accept"] = "text/event-stream"
            request = self.http.build_request("POST", self.base_url + path, params=params, json=body, headers=headers)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(what, exc) from None
            try:
                content_type = response.headers.get("content-type", "").lower()
                if response.status_code == 200 and "event-stream" in content_type:
                    stream = ChatStream(response, what)
                    log.debug("coze %s streaming (logid %s)", what, stream.logid)
                    yield stream
                    return
                # An error comes as a JSON {code, msg}, with HTTP 200 as often as not.
                try:
                    await response.aread()
                    reply = json.loads(response.content) if response.content else None
                except httpx.HTTPError as exc:
                    raise _transport_error(what, exc) from None
                except ValueError:
                    reply = None
                error = _error_from_response(what, response, reply)
            finally:
                await response.aclose()
            if attempt == 1 and _is_token_rejection(error) and await self.auth.rejected(token):
                continue
            raise error
