"""The sentence stage: agent text deltas in, sentences (and the reply's emotion) out."""

from __future__ import annotations

import trio

from ..messages import AgentFailed, AgentOutput, AgentText, Emotion, Sentence
from ..text.splitter import SentenceSplitter


async def split_sentences(
    receive: trio.MemoryReceiveChannel[AgentOutput],
    send: trio.MemorySendChannel[Sentence | Emotion],
    splitter: SentenceSplitter | None = None,
) -> None:
    """Split one reply into sentences as its deltas arrive.

    When ``receive`` closes (the reply is complete) the tail is flushed; ``send`` is closed at the
    end either way, so TTS sees the end of the reply. A given ``splitter`` is reset first, so text
    left over from an interrupted reply can never leak into this one. On ``AgentFailed`` the
    unfinished sentence is abandoned (see ``SentenceSplitter.abandon``) and the apology follows.
    """
    splitter = splitter if splitter is not None else SentenceSplitter()
    splitter.reset()
    with receive, send:
        async for message in receive:
            match message:
                case AgentText(text=text):
                    items = splitter.feed(text)
                case AgentFailed(apology=apology):
                    items = splitter.abandon() + splitter.feed(apology)
            for item in items:
                await send.send(item)
        for item in splitter.flush():
            await send.send(item)
