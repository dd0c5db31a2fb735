"""One turn: the reply to one utterance, as a nursery of stages.

    agent ─AgentText─▶ splitter ─Sentence─▶ TTS ─PCM+marks─▶ encoder ─Opus+marks─▶ paced sender

The whole turn runs inside a cancel scope owned by the session: cancelling it (abort, wake word,
barge-in, disconnect) stops the agent request, the synthesis and the queued audio at once, since
every queue belongs to the turn and dies with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..audio.opus import OpusEncoder
from ..backends import AgentRequest, BackendError, ToolBox
from ..events import AgentUsage, FirstAgentText, FirstAudio, FirstSentence, SessionError
from ..messages import AgentText, EncodedOutput, PcmChunk, Sentence, SpeechOutput, SplitterOutput
from ..stages.agent import ask_agent, speak_text
from ..stages.encoder import encode_speech
from ..stages.pacing import Pacer
from ..stages.sender import ReplyProgress, send_reply
from ..stages.sentences import split_sentences
from ..stages.tts import synthesize
from ..text.splitter import SentenceSplitter
from .context import SessionContext

#: Sentences queued for TTS; the splitter never waits on synthesis.
SENTENCE_BUFFER = 64
#: Encoded packets queued for the sender: lets TTS run seconds ahead so the next sentence is ready
#: before the current one has played (~15 s at 60 ms; a packet is a few hundred bytes).
PACKET_BUFFER = 256


@dataclass
class Turn:
    """A running or finished turn, as the session's controller sees it."""

    number: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    progress: ReplyProgress = field(default_factory=ReplyProgress)
    outcome: str = "completed"
    reply_text: list[str] = field(default_factory=list)
    #: The reply's audio at the downlink rate, kept only when recordings are on.
    reply_audio: list[PcmChunk] | None = None

    @property
    def running(self) -> bool:
        return not self.done.is_set()


async def run_turn(
    ctx: SessionContext,
    turn: Turn,
    *,
    user_text: str | None,
    fixed_reply: str | None = None,
    tools: ToolBox | None = None,
) -> None:
    """Reply to ``user_text`` through the agent, or speak ``fixed_reply`` instead."""
    audio = ctx.config.audio
    session = ctx.config.session
    agent_send, agent_receive = trio.open_memory_channel[AgentText](0)
    sentence_send, sentence_receive = trio.open_memory_channel[SplitterOutput](SENTENCE_BUFFER)
    speech_send, speech_receive = trio.open_memory_channel[SpeechOutput](0)
    packet_send, packet_receive = trio.open_memory_channel[EncodedOutput](PACKET_BUFFER)
    encoder = OpusEncoder(audio.downlink_sample_rate, audio.downlink_frame_ms, audio.opus_bitrate)
    pacer = Pacer(audio.downlink_frame_ms / 1000, audio.downlink_lead_ms / 1000)

    def on_error(stage: str) -> object:
        def report(error: BackendError) -> None:
            turn.outcome = "failed"
            ctx.log.warning("%s failed in turn %d (%s): %s", stage, turn.number, error.kind, error)
            ctx.emit(SessionError, kind=f"{stage}:{error.kind}", message=str(error))

        return report

    def on_sentence(sentence: Sentence) -> None:
        if not turn.reply_text:
            ctx.emit(FirstSentence, turn=turn.number, text=sentence.text)
        turn.reply_text.append(sentence.text)

    async with trio.open_nursery() as nursery:
        if fixed_reply is not None:
            nursery.start_soon(speak_text, fixed_reply, agent_send)
        else:
            assert user_text is not None
            request = AgentRequest(
                ctx.device_id,
                ctx.session_id,
                user_text,
                tools,
                report_usage=lambda used, made: ctx.emit(AgentUsage, input_tokens=used, output_tokens=made),
            )
            nursery.start_soon(
                lambda: ask_agent(
                    ctx.agent,
                    request,
                    agent_send,
                    apology=session.apology_text,
                    on_first_text=lambda: ctx.emit(FirstAgentText, turn=turn.number),
                    on_error=on_error("agent"),
                )
            )
        splitter = SentenceSplitter(first_clause_min_chars=session.first_clause_min_chars, max_chars=session.max_sentence_chars)
        nursery.start_soon(split_sentences, agent_receive, sentence_send, splitter)
        nursery.start_soon(
            lambda: synthesize(
                sentence_receive,
                speech_send,
                ctx.tts,
                audio.downlink_sample_rate,
                on_sentence=on_sentence,
                on_error=on_error("tts"),
            )
        )
        tap = turn.reply_audio.append if turn.reply_audio is not None else None
        nursery.start_soon(encode_speech, speech_receive, packet_send, encoder, ctx.workers, tap)
        nursery.start_soon(
            send_reply,
            packet_receive,
            ctx.outbox,
            pacer,
            ctx.session_id,
            turn.progress,
            lambda: ctx.emit(FirstAudio, turn=turn.number),
        )
