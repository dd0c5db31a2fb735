"""The sentence stage: agent text deltas in, sentences (and the reply's emotion) out."""

from __future__ import annotations

import trio

from ..messages import AgentText, Emotion, Sentence
from ..text.splitter import SentenceSplitter


async def split_sentences(
    receive: trio.MemoryReceiveChannel[AgentText],
    send: trio.MemorySendChannel[Sentence | Emotion],
    splitter: SentenceSplitter | None = None,
) -> None:
    """Split one reply into sentences as its deltas arrive.

    When ``receive`` closes (the reply is complete) the tail is flushed; ``send`` is closed at the
    end either way, so TTS sees the end of the reply. A given ``splitter`` is reset first, so text
    left over from an interrupted reply can never leak into this one.
    """
    splitter = splitter if splitter is not None else SentenceSplitter()
    splitter.reset()
    with receive, send:
        async for delta in receive:
            for item in splitter.feed(delta.text):
                await send.send(item)
        for item in splitter.flush():
            await send.send(item)
