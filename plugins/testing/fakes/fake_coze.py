"""A faithful fake of the Coze open API v3 on 127.0.0.1, for tests and benchmarks.

It speaks HTTP/1.1 (``h11`` over trio sockets, see ``fake_coze_http``) and serves what a voice turn uses:
``/v1/conversation/create``, ``/v3/chat`` (SSE, byte for byte in the format of Coze's recorded
streams: ``event:NAME\\ndata:{compact JSON}\\n\\n``), ``/v3/chat/cancel``,
``/v3/chat/submit_tool_outputs`` and ``/api/permission/oauth2/token`` (JWT apps).

It keeps Coze's rules for real: one running chat per conversation (a second one gets 4016 until
the first completes or is cancelled; a client that just hangs up leaves its chat running until
the chat's own schedule ends), unknown bots get 4015, bad tokens HTTP 401 / 4100. Faults are queued
with ``inject()`` and consumed by the next matching request. Every request is recorded.

    fake = FakeCoze(answer="今天是星期三。", first_token_delay=2.0)
    url = await nursery.start(fake.serve)
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import trio

from .fake_coze_http import Abort, Exchange, serve_http

FAKE_BOT_ID = "7400000000000000001"
FAKE_TOKEN = "pat_fake_coze_token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float


# ---- faults, consumed in order by the next request to ``endpoint`` ----------------------------


@dataclass(frozen=True)
class HttpError:
    """Answer with HTTP ``status`` and a JSON ``{code, msg}`` body."""

    status: int
    code: int
    msg: str
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class JsonError:
    """Answer HTTP 200 with a JSON ``{code, msg}`` body instead of a stream."""

    code: int
    msg: str
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class ErrorEvent:
    """Send an ``error`` event after ``after_deltas`` answer deltas, and end the stream."""

    after_deltas: int
    code: int = 5000
    msg: str = "internal server error"
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class ChatFailure:
    """Send ``conversation.chat.failed`` after ``after_deltas`` deltas, then ``done``."""

    after_deltas: int
    code: int = 4013
    msg: str = "model error"
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class Drop:
    """Close the connection abruptly after ``after_deltas`` deltas (no ``done``, no last chunk)."""

    after_deltas: int
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class Stall:
    """Go silent after ``after_deltas`` deltas; the chat keeps running until cancelled."""

    after_deltas: int
    endpoint: str = "/v3/chat"


@dataclass(frozen=True)
class Hang:
    """Never answer the request: the client's own time limit has to end it."""

    endpoint: str


Fault = HttpError | JsonError | Hang | ErrorEvent | ChatFailure | Drop | Stall


@dataclass(frozen=True)
class ToolRule:
    """When the user's text contains ``trigger``, ask the client to run ``function`` first;
    the answer after ``submit_tool_outputs`` is ``answer.format(output=<the tool's output>)``."""

    trigger: str
    function: str
    arguments: Mapping[str, Any]
    answer: str


Answer = str | Callable[[str, list[dict[str, str]]], str]


@dataclass(eq=False)
class FakeChat:
    id: str
    conversation_id: str
    bot_id: str
    user_id: str
    question: str
    created_at: int
    status: str = "created"
    cancelled: trio.Event = field(default_factory=trio.Event)
    rule: ToolRule | None = None
    tool_call_id: str = ""
    tool_output: str | None = None
    #: trio time at which each answer delta was handed to the socket (for latency benchmarks).
    answer_sent_at: list[float] = field(default_factory=list)


@dataclass(eq=False)
class FakeConversation:
    id: str
    bot_id: str
    messages: list[dict[str, str]] = field(default_factory=list)
    running: FakeChat | None = None


class _Stop(Exception):
    """The chat ended early (cancelled, failed); stop its script."""


class FakeCoze:
    """The fake's state and settings; tests change the settings between turns as they like."""

    def __init__(self, *, bot_ids: Sequence[str] = (FAKE_BOT_ID,), tokens: Sequence[str] = (FAKE_TOKEN,),
                 answer: Answer = "好的，今天是星期三。我们去公园散步吧！", first_token_delay: float = 0.0,
                 delta_interval: float = 0.0, delta_chars: int = 3, reasoning: str = "",
                 follow_ups: Sequence[str] = (), tool_rules: Sequence[ToolRule] = (),
                 jwt_apps: Mapping[str, tuple[str, bytes]] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.bot_ids = set(bot_ids)
        self.tokens: dict[str, float] = {token: float("inf") for token in tokens}
        self.answer = answer
        self.first_token_delay = first_token_delay
        self.delta_interval = delta_interval
        self.delta_chars = delta_chars
        self.reasoning = reasoning
        self.follow_ups = list(follow_ups)
        self.tool_rules = list(tool_rules)
        #: client_id -> (public_key_id, public key PEM) of OAuth JWT apps.
        self.jwt_apps = dict(jwt_apps or {})
        self.wall_clock = wall_clock
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        self.conversations: dict[str, FakeConversation] = {}
        self.chats: dict[str, FakeChat] = {}
        self.url = ""
        self._ids = itertools.count(7_400_000_000_000_000_100)
        self._jtis: set[str] = set()

    # ---- test API ----------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the next request to its endpoint."""
        self.faults.extend(faults)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def running_chats(self) -> list[FakeChat]:
        return [c.running for c in self.conversations.values() if c.running is not None]

    async def serve(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED, *, port: int = 0) -> None:
        """Serve on 127.0.0.1:``port`` (0: any free port) until cancelled; start with the base URL."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, self._connection, port)
            self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            task_status.started(self.url)

    # ---- HTTP --------------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        await serve_http(stream, self._route)

    async def _route(self, ex: Exchange) -> None:
        target = urlsplit(ex.target)
        try:
            body = json.loads(ex.body) if ex.body else None
        except ValueError:
            body = ex.body
        headers = ex.headers
        ex.logid = self._logid()
        record = RecordedRequest(ex.method, target.path, dict(parse_qsl(target.query)), headers, body,
                                 trio.current_time())
        self.requests.append(record)
        if record.path == "/api/permission/oauth2/token":
            await ex.json(*self._oauth_token(record))
            return
        if (rejection := self._check_token(headers)) is not None:
            await ex.json(401, rejection)
            return
        fault = self._take_fault(record.path, (HttpError, JsonError, Hang))
        if isinstance(fault, Hang):
            await trio.sleep_forever()
        if isinstance(fault, HttpError):
            await ex.json(fault.status, {"code": fault.code, "msg": fault.msg})
            return
        if isinstance(fault, JsonError):
            await ex.json(200, {"code": fault.code, "msg": fault.msg})
            return
        handler = {
            "/v1/conversation/create": self._create_conversation,
            "/v3/chat": self._chat,
            "/v3/chat/cancel": self._cancel,
            "/v3/chat/submit_tool_outputs": self._submit_tool_outputs,
        }.get(record.path)
        if handler is None or record.method != "POST":
            await ex.json(404, {"code": 4000, "msg": f"no such API: {record.method} {record.path}"})
            return
        await handler(ex, record)

    def _logid(self) -> str:
        return time.strftime("%Y%m%d%H%M%S", time.gmtime(self.wall_clock())) + secrets.token_hex(10).upper()

    def _take_fault(self, path: str, kinds: tuple[type, ...]) -> Fault | None:
        for index, fault in enumerate(self.faults):
            if fault.endpoint == path and isinstance(fault, kinds):
                return self.faults.pop(index)
        return None

    def _check_token(self, headers: Mapping[str, str]) -> dict[str, Any] | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or self.tokens.get(token, 0.0) <= self.wall_clock():
            return {"code": 4100, "msg": "authentication is invalid: the access token is missing, expired or revoked"}
        return None

    # ---- conversations and chats -------------------------------------------------------------

    def _new_id(self) -> str:
        return str(next(self._ids))

    async def _create_conversation(self, ex: Exchange, record: RecordedRequest) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        conversation = FakeConversation(self._new_id(), str(body.get("bot_id") or ""))
        self.conversations[conversation.id] = conversation
        data = {"id": conversation.id, "created_at": int(self.wall_clock()), "meta_data": body.get("meta_data") or {},
                "last_section_id": conversation.id}
        await ex.json(200, {"code": 0, "msg": "", "data": data})

    async def _chat(self, ex: Exchange, record: RecordedRequest) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        messages = body.get("additional_messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        question = last.get("content") if isinstance(last, dict) else None
        if not (isinstance(body.get("bot_id"), str) and body.get("user_id") and body.get("stream") is True
                and isinstance(question, str) and question):
            await ex.json(200, {"code": 4000, "msg": "invalid parameter: bot_id, user_id, stream "
                                                 "and a user message are required"})
            return
        if body["bot_id"] not in self.bot_ids:
            await ex.json(200, {"code": 4015, "msg": f"the bot {body['bot_id']} has not been "
                                                 "published to the Agent as API channel"})
            return
        conversation = self.conversations.get(record.query.get("conversation_id", ""))
        if conversation is None:
            if record.query.get("conversation_id"):
                await ex.json(200, {"code": 4002, "msg": "conversation not found"})
                return
            conversation = FakeConversation(self._new_id(), body["bot_id"])
            self.conversations[conversation.id] = conversation
        if conversation.running is not None:
            await ex.json(200, {"code": 4016, "msg": "conversation occupied: another chat is "
                                                 "in progress in this conversation, try again later"})
            return
        chat = FakeChat(self._new_id(), conversation.id, body["bot_id"], str(body["user_id"]), question,
                        int(self.wall_clock()))
        chat.rule = next((r for r in self.tool_rules if r.trigger in question), None)
        conversation.running = chat
        self.chats[chat.id] = chat
        await ex.open_sse()
        await self._play(chat, ex, self._take_fault(record.path, (ErrorEvent, ChatFailure, Drop, Stall)))

    async def _cancel(self, ex: Exchange, record: RecordedRequest) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        chat = self.chats.get(str(body.get("chat_id")))
        if chat is None or chat.conversation_id != body.get("conversation_id"):
            await ex.json(200, {"code": 4001, "msg": "chat not found in this conversation"})
            return
        if chat.status in ("completed", "failed", "canceled"):
            await ex.json(200, {"code": 4104, "msg": f"the chat is {chat.status} and cannot be cancelled"})
            return
        self._finish(chat, "canceled")
        chat.cancelled.set()
        await ex.json(200, {"code": 0, "msg": "", "data": self._chat_object(chat)})

    async def _submit_tool_outputs(self, ex: Exchange, record: RecordedRequest) -> None:
        body = record.body if isinstance(record.body, dict) else {}
        chat = self.chats.get(record.query.get("chat_id", ""))
        outputs = body.get("tool_outputs")
        if chat is None or chat.conversation_id != record.query.get("conversation_id") or chat.status != "requires_action":
            await ex.json(200, {"code": 4001, "msg": "no chat waiting for tool outputs"})
            return
        answered = [o.get("tool_call_id") for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else []
        if not (isinstance(outputs, list) and answered == [chat.tool_call_id]
                and isinstance(outputs[0].get("output"), str) and body.get("stream") is True):
            await ex.json(200, {"code": 4000, "msg": "invalid parameter: tool_outputs must answer "
                                                 "every tool call, with stream true"})
            return
        chat.tool_output = outputs[0]["output"]
        chat.status = "in_progress"
        await ex.open_sse()
        await self._play(chat, ex, self._take_fault(record.path, (ErrorEvent, ChatFailure, Drop, Stall)))

    def _finish(self, chat: FakeChat, status: str, answer: str | None = None) -> None:
        chat.status = status
        conversation = self.conversations[chat.conversation_id]
        if conversation.running is chat:
            conversation.running = None
        if answer is not None:
            conversation.messages += [{"role": "user", "content": chat.question}, {"role": "assistant", "content": answer}]

    # ---- the chat's script -------------------------------------------------------------------

    async def _play(self, chat: FakeChat, out: Exchange, fault: Fault | None) -> None:
        try:
            await self._script(chat, out, fault)
        except _Stop:
            pass
        except Abort:
            self._finish(chat, "failed")
            raise
        await out.raw(b'event:done\ndata:"[DONE]"\n\n')
        await out.end()

    async def _pause(self, chat: FakeChat, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await chat.cancelled.wait()
        if chat.cancelled.is_set():
            raise _Stop

    async def _script(self, chat: FakeChat, out: Exchange, fault: Fault | None) -> None:
        conversation = self.conversations[chat.conversation_id]
        if chat.tool_output is None:
            await out.event("conversation.chat.created", self._chat_object(chat))
            chat.status = "in_progress"
            await out.event("conversation.chat.in_progress", self._chat_object(chat))
        else:
            await out.event("conversation.chat.in_progress", self._chat_object(chat))
        await self._pause(chat, self.first_token_delay)
        for piece in self._pieces(self.reasoning):
            await out.event("conversation.message.delta", self._message(chat, "answer", "", reasoning_content=piece))
        rule = chat.rule
        if rule is not None and chat.tool_output is None:
            chat.tool_call_id = self._new_id()
            call = {"id": chat.tool_call_id, "type": "function",
                    "function": {"name": rule.function, "arguments": json.dumps(rule.arguments, ensure_ascii=False)}}
            function = json.dumps(call["function"], ensure_ascii=False)
            await out.event("conversation.message.delta", self._message(chat, "function_call", function))
            await out.event("conversation.message.completed", self._message(chat, "function_call", function))
            chat.status = "requires_action"
            action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": [call]}}
            await out.event("conversation.chat.requires_action", self._chat_object(chat, required_action=action))
            return  # the conversation stays occupied until the outputs come (or a cancel)
        if rule is not None:
            await out.event("conversation.message.completed", self._message(chat, "tool_response", chat.tool_output or ""))
            answer = rule.answer.format(output=chat.tool_output)
        else:
            answer = self.answer if isinstance(self.answer, str) else self.answer(chat.question, list(conversation.messages))
        message_id = self._new_id()
        pieces = self._pieces(answer)
        for index in range(len(pieces) + 1):
            if fault is not None and index == min(fault.after_deltas, len(pieces)):
                await self._fault(chat, out, fault)
            if index == len(pieces):
                break
            if index:
                await self._pause(chat, self.delta_interval)
            await out.event("conversation.message.delta", self._message(chat, "answer", pieces[index], message_id))
            chat.answer_sent_at.append(trio.current_time())
        await out.event("conversation.message.completed", self._message(chat, "answer", answer, message_id))
        finish = {"msg_type": "generate_answer_finish", "data": '{"finish_reason":0,"FinData":""}',
                  "from_module": None, "from_unit": None}
        verbose = json.dumps(finish, separators=(",", ":"))
        await out.event("conversation.message.completed", self._message(chat, "verbose", verbose))
        for question in self.follow_ups:
            await out.event("conversation.message.completed", self._message(chat, "follow_up", question))
        self._finish(chat, "completed", answer)
        usage = {"token_count": 600 + len(answer), "output_count": len(answer), "input_count": 600}
        await out.event("conversation.chat.completed", self._chat_object(chat, usage=usage))

    async def _fault(self, chat: FakeChat, out: Exchange, fault: Fault) -> None:
        if isinstance(fault, Drop):
            raise Abort
        if isinstance(fault, Stall):
            await chat.cancelled.wait()
            raise _Stop
        if isinstance(fault, ErrorEvent):
            self._finish(chat, "failed")
            await out.event("error", {"code": fault.code, "msg": fault.msg})
            await out.end()  # an error event ends the stream: no done
            raise _Stop
        if isinstance(fault, ChatFailure):
            self._finish(chat, "failed")
            error = {"code": fault.code, "msg": fault.msg}
            await out.event("conversation.chat.failed", self._chat_object(chat, last_error=error))
            raise _Stop

    def _pieces(self, text: str) -> list[str]:
        return [text[i:i + self.delta_chars] for i in range(0, len(text), self.delta_chars)]

    def _chat_object(self, chat: FakeChat, *, usage: dict[str, int] | None = None,
                     last_error: dict[str, Any] | None = None, required_action: dict[str, Any] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": chat.id, "conversation_id": chat.conversation_id, "bot_id": chat.bot_id,
                               "created_at": chat.created_at}
        if chat.status in ("completed", "canceled"):
            obj["completed_at"] = int(self.wall_clock())
        if chat.status == "failed":
            obj["failed_at"] = int(self.wall_clock())
        obj["last_error"] = last_error or {"code": 0, "msg": ""}
        obj["status"] = chat.status
        obj["usage"] = usage or {"token_count": 0, "output_count": 0, "input_count": 0}
        obj["required_action"] = required_action or {"type": "", "submit_tool_outputs": {"tool_calls": []}}
        obj["section_id"] = chat.conversation_id
        return obj

    def _message(self, chat: FakeChat, kind: str, content: str, message_id: str | None = None, **extra: str) -> dict[str, Any]:
        return {"id": message_id or self._new_id(), "conversation_id": chat.conversation_id, "bot_id": chat.bot_id,
                "role": "assistant", "type": kind, "content": content, "content_type": "text", **extra,
                "chat_id": chat.id, "section_id": chat.conversation_id}

    # ---- OAuth JWT apps ----------------------------------------------------------------------

    def _oauth_token(self, record: RecordedRequest) -> tuple[int, dict[str, Any]]:
        scheme, _, assertion = record.headers.get("authorization", "").partition(" ")
        body = record.body if isinstance(record.body, dict) else {}
        if scheme != "Bearer" or body.get("grant_type") != JWT_GRANT:
            return 400, {"error_code": "invalid_request", "error_message": "a JWT bearer grant is required"}
        try:
            header = jwt.get_unverified_header(assertion)
            client_id = jwt.decode(assertion, options={"verify_signature": False}).get("iss", "")
            key_id, public_key = self.jwt_apps[client_id]
            claims = jwt.decode(assertion, public_key, algorithms=["RS256"], audience=urlsplit(self.url).netloc,
                                options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "jti"]})
        except (KeyError, jwt.PyJWTError) as exc:
            return 401, {"error_code": "invalid_client", "error_message": f"JWT rejected: {type(exc).__name__} {exc}"}
        now = self.wall_clock()
        if header.get("kid") != key_id or not claims["iat"] - 60 <= now < claims["exp"] or claims["jti"] in self._jtis:
            return 401, {"error_code": "invalid_client", "error_message": "JWT kid, time window or jti is wrong"}
        self._jtis.add(claims["jti"])
        duration = body.get("duration_seconds", 900)
        if not isinstance(duration, int) or not 1 <= duration <= 86399:
            return 400, {"error_code": "invalid_request", "error_message": "duration_seconds must be 1..86399"}
        token = "czs_" + secrets.token_hex(16)
        self.tokens[token] = now + duration
        return 200, {"access_token": token, "expires_in": int(now + duration), "token_type": "Bearer"}


async def serve_fake_coze(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED, *, port: int = 0,
                          fake: FakeCoze | None = None, **settings: Any) -> None:
    """Run a ``FakeCoze`` (``fake``, or one built from ``settings``: ``answer``, ``first_token_delay``,
    ``delta_interval``, ``delta_chars``, ``tool_rules``…) until cancelled; start with its base URL.
    It accepts the bot ``FAKE_BOT_ID`` and the token ``FAKE_TOKEN``."""
    await (fake or FakeCoze(**settings)).serve(task_status, port=port)
