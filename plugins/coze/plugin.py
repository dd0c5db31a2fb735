"""The Coze agent backend (``[agent] backend = "coze"``): a published Coze bot over chat API v3.

Each device (by its ``Device-Id``) has its own Coze conversation, created on its first turn and kept
in the conversation store, so the bot remembers across reconnects and restarts; a new bot id (or
API host) starts a new one. A turn streams the answer's text deltas as they arrive.

Coze allows one running chat per conversation (error 4016), so a turn that ends early (barge-in,
timeout, broken stream) closes its stream *and* cancels its chat, shielded from the turn's own
cancellation and bounded in time. The chat id is learned before anything else is read and kept in
the store; if a chat was left running anyway (a crash, a failed cancel), the next turn meets 4016,
cancels that chat and tries once more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from xiaozhi_trio.pipeline.backends import (
    AgentRequest,
    BackendContext,
    BackendError,
    ToolBox,
)
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import AgentText
from xiaozhi_trio.pipeline.protocol.tool_lookup import resolve_tool, unresolved_message
from xiaozhi_trio.pipeline.store.conversations import ConversationStore

from .client import CONVERSATION_BUSY, ChatStream, CozeApiError, CozeClient
from .events import (
    AnswerDelta,
    ChatCompleted,
    ChatFailed,
    ChatStarted,
    Done,
    Malformed,
    RequiresAction,
    StreamError,
    ToolCall,
)
from .settings import CozeSettings

log = logging.getLogger(__name__)

#: The conversation store's key for this backend's per-device state.
AGENT_KEY = "coze"
#: Coze's "conversation not found" code: the stored conversation is gone, start a new one.
CONVERSATION_NOT_FOUND = 4002
#: Tool rounds one turn may take before the bot is considered stuck in a loop.
MAX_TOOL_ROUNDS = 5


async def _unshield_after(scope: trio.CancelScope, seconds: float) -> None:
    await trio.sleep(seconds)
    scope.shield = False


def user_id_for(device_id: str) -> str:
    """The stable Coze ``user_id`` of a device (a digest: the MAC address does not leave the server)."""
    return "xiaozhi-" + hashlib.sha256(f"xiaozhi-trio:{device_id}".encode()).hexdigest()[:24]


class _ProcessMemory:
    """Conversation state kept in this process only, for a context without a conversation store."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], dict[str, Any]] = {}

    async def get_state(self, agent: str, device_id: str) -> dict[str, Any] | None:
        state = self._states.get((agent, device_id))
        return dict(state) if state is not None else None

    async def put_state(self, agent: str, device_id: str, state: Mapping[str, Any]) -> None:
        self._states[(agent, device_id)] = dict(state)

    async def swap_state(self, agent: str, device_id: str, state: Mapping[str, Any],
                         expected: Mapping[str, Any] | None) -> dict[str, Any]:
        current = self._states.get((agent, device_id))
        if current is None or current == expected:
            self._states[(agent, device_id)] = current = dict(state)
        return dict(current)


@dataclass
class _ChatInProgress:
    """What one turn knows about its chat."""

    conversation_id: str
    chat_id: str | None = None
    #: The chat ended (completed or failed), so there is nothing to cancel.
    finished: bool = False
    spoken: bool = False
    logid: str = ""
    #: The request's usage callback (the pipeline turns it into an ``AgentUsage`` event).
    report_usage: Callable[[int, int], None] | None = None


class CozeAgent:
    """An ``Agent`` answering through a Coze bot."""

    def __init__(self, client: CozeClient, settings: CozeSettings,
                 store: ConversationStore | _ProcessMemory) -> None:
        self.client = client
        self.settings = settings
        self.store = store
        self._locks: dict[str, trio.Lock] = {}

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self.client.http.aclose()

    async def respond(self, request: AgentRequest, send: trio.MemorySendChannel[AgentText]) -> None:
        """Stream the bot's answer to ``request.text`` into ``send`` (see ``Agent``)."""
        state = await self._conversation(request.device_id)
        turn = _ChatInProgress(state["conversation_id"], report_usage=request.report_usage)
        for attempt in (1, 2):
            try:
                await self._chat(request, state, turn, send)
                return
            except CozeApiError as error:
                if attempt == 2 or turn.spoken or turn.chat_id is not None:
                    raise
                if error.code == CONVERSATION_BUSY:
                    log.warning("device %s: conversation %s is busy (%s); cancelling its running chat and "
                                "retrying", request.device_id, turn.conversation_id, error)
                    if not await self._cancel_stale(state):
                        raise
                elif error.code == CONVERSATION_NOT_FOUND:
                    log.warning("device %s: conversation %s is gone; starting a new one",
                                request.device_id, turn.conversation_id)
                    state = await self._conversation(request.device_id, replace=state["conversation_id"])
                else:
                    raise
                turn = _ChatInProgress(state["conversation_id"], report_usage=request.report_usage)

    # ---- conversations -----------------------------------------------------------------------

    async def _conversation(self, device_id: str, *, replace: str = "") -> dict[str, Any]:
        """The device's conversation state, creating the conversation if it has none (or a stale one)."""
        lock = self._locks.setdefault(device_id, trio.Lock())
        try:
            async with lock:  # a device reconnecting mid-turn must not get two conversations
                previous = await self.store.get_state(AGENT_KEY, device_id)
                state = previous or {}
                if (state.get("conversation_id") and state["conversation_id"] != replace
                        and state.get("bot_id") == self.settings.bot_id
                        and state.get("base_url") == self.settings.base_url):
                    return state
                user_id = user_id_for(device_id)
                conversation_id = await self.client.create_conversation(
                    bot_id=self.settings.bot_id, meta_data={"user_id": user_id})
                state = {"conversation_id": conversation_id, "bot_id": self.settings.bot_id,
                         "base_url": self.settings.base_url, "user_id": user_id}
                # Another server (the device reconnected elsewhere) may have stored one meanwhile:
                # keep whichever was stored first, so the device has one conversation, not two.
                stored = await self.store.swap_state(AGENT_KEY, device_id, state, previous)
                if stored.get("conversation_id") != conversation_id:
                    log.info("device %s: another server started Coze conversation %s first; using it",
                             device_id, stored.get("conversation_id"))
                    return stored
                log.info("device %s: new Coze conversation %s with bot %s", device_id, conversation_id,
                         self.settings.bot_id)
                return state
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(device_id, None)

    async def _remember_chat(self, device_id: str, state: dict[str, Any], chat_id: str) -> None:
        # Kept so that a chat left running (a crash mid-turn) can be cancelled after a restart.
        state["chat_id"] = chat_id
        await self.store.put_state(AGENT_KEY, device_id, state)

    async def _cancel_stale(self, state: Mapping[str, Any]) -> bool:
        """Cancel the conversation's last known chat; False if none is known (no point retrying)."""
        chat_id = state.get("chat_id")
        if not chat_id:
            return False
        with trio.move_on_after(self.settings.cancel_timeout) as scope:
            try:
                status = await self.client.cancel(conversation_id=state["conversation_id"], chat_id=chat_id)
                log.info("cancelled the stale Coze chat %s (%s)", chat_id, status)
            except BackendError as error:
                # It may have ended meanwhile; the retry tells.
                log.warning("cancelling the stale Coze chat %s failed: %s", chat_id, error)
        if scope.cancelled_caught:
            log.warning("cancelling the stale Coze chat %s timed out", chat_id)
        return True

    # ---- one turn ----------------------------------------------------------------------------

    async def _chat(self, request: AgentRequest, state: dict[str, Any], turn: _ChatInProgress,
                    send: trio.MemorySendChannel[AgentText]) -> None:
        wait = self.settings.first_token_timeout
        try:
            async with AsyncExitStack() as stack:
                # Until the chat id is known a barge-in waits, for at most cancel_timeout: without
                # the id the chat cannot be cancelled, and the conversation would stay busy for the
                # next turn. The scope's deadline is the first-token limit; the first delta lifts it.
                with trio.CancelScope(shield=True, deadline=trio.current_time() + wait) as waiting:
                    try:
                        async with trio.open_nursery() as opening:
                            opening.start_soon(_unshield_after, waiting, self.settings.cancel_timeout)
                            stream = await stack.enter_async_context(self.client.chat(
                                conversation_id=turn.conversation_id, bot_id=self.settings.bot_id,
                                user_id=state.get("user_id") or user_id_for(request.device_id), text=request.text,
                                custom_variables=self.settings.custom_variables))
                            turn.logid = stream.logid
                            turn.chat_id = await stream.chat_id()
                            opening.cancel_scope.cancel()
                    except* BackendError as group:
                        raise group.exceptions[0] from None  # the opening is the only task that raises
                    if turn.chat_id and turn.chat_id != state.get("chat_id"):
                        await self._remember_chat(request.device_id, state, turn.chat_id)
                    waiting.shield = False  # from here on a barge-in cancels at once
                    action = await self._read(stream, turn, send, waiting)
            self._check_waited(waiting, turn, "")
            rounds = 0
            while action is not None:
                rounds += 1
                if rounds > MAX_TOOL_ROUNDS:
                    raise BackendError(f"the Coze bot asked for tools {rounds} times in one turn", kind="coze_tool_loop")
                outputs = await self._run_tools(action, request.tools)
                with trio.CancelScope(deadline=trio.current_time() + wait) as waiting:
                    async with self.client.submit_tool_outputs(conversation_id=turn.conversation_id,
                                                               chat_id=action.chat_id, outputs=outputs) as stream:
                        turn.logid = stream.logid
                        action = await self._read(stream, turn, send, waiting)
                self._check_waited(waiting, turn, " after the tool outputs")
        finally:
            if turn.chat_id and not turn.finished:
                await self._cancel_turn(turn)

    def _check_waited(self, waiting: trio.CancelScope, turn: _ChatInProgress, when: str) -> None:
        if waiting.cancelled_caught:
            raise CozeApiError(f"no answer from Coze within {self.settings.first_token_timeout:g} s{when} "
                               f"(logid {turn.logid or 'none'})", kind="timeout", logid=turn.logid)

    async def _read(self, stream: ChatStream, turn: _ChatInProgress, send: trio.MemorySendChannel[AgentText],
                    waiting: trio.CancelScope) -> RequiresAction | None:
        """Speak the stream's answer; return the tool calls the chat waits for, if any.

        The first answer delta lifts ``waiting``'s deadline (the first-token limit)."""
        first = True
        async for event in stream:
            match event:
                case AnswerDelta(text=text):
                    if first:
                        first = False
                        turn.spoken = True
                        waiting.deadline = math.inf
                    await send.send(AgentText(text))
                case ChatStarted(chat_id=chat_id):
                    turn.chat_id = chat_id
                case ChatCompleted(usage=usage):
                    turn.finished = True
                    log.info("coze chat %s completed: %d input + %d output tokens (logid %s)",
                             turn.chat_id, usage.input_count, usage.output_count, turn.logid)
                    if turn.report_usage is not None:
                        turn.report_usage(usage.input_count, usage.output_count)
                case ChatFailed(code=code, msg=msg):
                    turn.finished = True
                    raise CozeApiError(f"Coze chat {turn.chat_id} failed: code {code} {msg!r} (logid {turn.logid})",
                                       kind=f"coze_{code}", code=code, msg=msg, logid=turn.logid)
                case StreamError(code=code, msg=msg):
                    raise CozeApiError(f"Coze stream error: code {code} {msg!r} (logid {turn.logid})",
                                       kind=f"coze_{code}" if code else "coze_error", code=code or None,
                                       msg=msg, logid=turn.logid)
                case Malformed(event=name, detail=detail):
                    raise CozeApiError(f"Coze sent a malformed {name} event: {detail} (logid {turn.logid})",
                                       kind="coze_bad_event", logid=turn.logid)
                case RequiresAction():
                    # The chat waits for the outputs; its stream ends with done.
                    return await self._finish_stream(stream, event)
                case Done():
                    turn.finished = True
                    return None
                case _:
                    pass  # reasoning, verbose, follow-ups, tool messages, audio, unknown events
        turn.finished = True  # the events ended at done
        return None

    async def _finish_stream(self, stream: ChatStream, action: RequiresAction) -> RequiresAction:
        async for event in stream:
            if isinstance(event, Done):
                break
        return action

    async def _cancel_turn(self, turn: _ChatInProgress) -> None:
        """Cancel the turn's chat, whatever is cancelling the turn itself, within ``cancel_timeout``."""
        assert turn.chat_id is not None
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.settings.cancel_timeout) as scope:
            try:
                status = await self.client.cancel(conversation_id=turn.conversation_id, chat_id=turn.chat_id)
                log.info("cancelled Coze chat %s (%s)", turn.chat_id, status)
            except BackendError as error:
                log.warning("cancelling Coze chat %s failed: %s", turn.chat_id, error)
        if scope.cancelled_caught:
            log.warning("cancelling Coze chat %s timed out after %g s", turn.chat_id, self.settings.cancel_timeout)

    # ---- tools -------------------------------------------------------------------------------

    async def _run_tools(self, action: RequiresAction, tools: ToolBox | None) -> list[tuple[str, str]]:
        names = [spec.name for spec in await tools.list_tools()] if tools is not None else None
        outputs = []
        for call in action.tool_calls:
            output = await self._run_tool(call, tools, names)
            log.info("coze tool call %s(%s) -> %s", call.name, call.arguments, output[:200])
            outputs.append((call.id, output))
        return outputs

    async def _run_tool(self, call: ToolCall, tools: ToolBox | None, names: list[str] | None) -> str:
        if call.type != "function":
            return f"error: tool calls of type {call.type!r} are not supported"
        if tools is None or names is None:
            return "error: this device offers no tools"
        # The bot owner typed this name in Coze: accept the spellings people use.
        lookup = resolve_tool(call.name, names)
        name = lookup.tool
        if name is None:
            message = unresolved_message(lookup, names)
            log.warning("the Coze bot called a tool this session cannot resolve: %s", message)
            return f"error: {message}"
        if lookup.rule not in ("name", "function"):
            log.debug("Coze tool name %r taken as %s (%s)", call.name, name, lookup.rule)
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            return f"error: the arguments are not JSON: {call.arguments[:200]!r}"
        if not isinstance(arguments, dict):
            return "error: the arguments must be a JSON object"
        with trio.move_on_after(self.settings.tool_timeout):
            result = await tools.call(name, arguments)
            return f"error: {result.text}" if result.is_error else result.text
        return f"error: the tool {name} did not answer within {self.settings.tool_timeout:g} s"


def create_agent(context: BackendContext, options: Mapping[str, Any]) -> CozeAgent:
    """The backend factory: check the options and credentials (``ConfigError`` if they are wrong)."""
    settings = CozeSettings.from_options(options, os.environ)
    timeout = httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0))
    # Many sessions share one pool; each streaming turn holds a connection for its length.
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    http = httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": "xiaozhi-trio"})
    auth = settings.token_source(http, os.environ)
    store: ConversationStore | _ProcessMemory
    if context.conversations is not None:
        store = context.conversations
    else:
        log.warning("no conversation store: Coze conversations will not survive a restart")
        store = _ProcessMemory()
    return CozeAgent(CozeClient(http, settings.base_url, auth), settings, store)


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add("agent", "coze", create_agent,
                 description="a Coze (扣子) bot over the streaming chat API v3 (api.coze.cn, api.coze.com)")
