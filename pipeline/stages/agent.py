"""Stage: the user's text → the agent's streamed answer, with an apology if the agent fails."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from ..backends import Agent, AgentRequest, BackendError
from ..messages import AgentFailed, AgentOutput, AgentText

log = logging.getLogger(__name__)


async def ask_agent(
    agent: Agent,
    request: AgentRequest,
    send: trio.MemorySendChannel[AgentOutput],
    *,
    apology: str,
    on_first_text: Callable[[], None],
    on_error: Callable[[BackendError], None],
) -> None:
    """Run the agent and relay its answer into ``send``, then close it.

    On ``BackendError`` the complete sentences so far stand, and an ``AgentFailed`` carrying the
    apology follows (the splitter drops the unfinished sentence before it). The relay's buffer is unbounded so the agent's network stream is always drained at
    network speed, whatever TTS is doing (answers are small text).
    """
    answer_send, answer_receive = trio.open_memory_channel[AgentText](math.inf)
    failed = False

    async def run_agent() -> None:
        nonlocal failed
        with answer_send:
            try:
                await agent.respond(request, answer_send)
            except BackendError as e:
                on_error(e)
                failed = True

    with send:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_agent)
            first = True
            with answer_receive:
                async for delta in answer_receive:
                    if first and delta.text.strip():
                        first = False
                        on_first_text()
                    await send.send(delta)
        if failed:
            await send.send(AgentFailed(apology))


async def speak_text(text: str, send: trio.MemorySendChannel[AgentOutput]) -> None:
    """A fixed reply (goodbye, apology) in place of the agent."""
    with send:
        await send.send(AgentText(text))
