"""One turn: the reply to one utterance, as a nursery of stages.

    agent ─AgentText─▶ splitter ─Sentence─▶ TTS ─PCM+marks─▶ encoder ─Opus+marks─▶ paced sender

The whole turn runs inside a cancel scope the session holds: cancelling it (abort, wake word,
barge-in, a newer question, disconnect) stops the agent request, the synthesis and the queued
audio at once, since every queue belongs to the turn and dies with it. ``run_turn`` then returns
the turn's summary; the controller decides what follows (``tts stop``, the next turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from trio_websocket import ConnectionClosed

from ..audio.opus import OpusEncoder
from ..backends import AgentRequest, BackendError, ToolBox
from ..events import AgentUsage, FirstAgentText, FirstAudio, FirstSentence, SessionError
from ..messages import AgentOutput, EncodedOutput, PcmChunk, Sentence, SpeechOutput, SplitterOutput
from ..protocol.outbox import DeviceNotReading
from ..stages.agent import ask_agent, speak_text
from ..stages.encoder import encode_speech
from ..stages.pacing import Pacer, Runway
from ..stages.sender import Sent, send_reply
from ..stages.sentences import split_sentences
from ..stages.tts import synthesize
from ..text.splitter import SentenceSplitter
from .context import SessionContext
from .controller import StartTurn, TurnSummary

#: Sentences queued for TTS; the splitter never waits on synthesis.
SENTENCE_BUFFER = 64
#: Encoded packets queued for the sender: lets TTS run seconds ahead so the next sentence is ready
#: before the current one has played (~15 s at 60 ms; a packet is a few hundred bytes).
PACKET_BUFFER = 256


@dataclass(frozen=True)
class TurnResult:
    """What a finished turn hands back: its summary, and its reply for recordings."""

    summary: TurnSummary
    reply_text: str
    #: The reply's audio at the downlink rate, when it was kept (recordings on).
    reply_audio: PcmChunk | None
    #: The connection failed under the turn (closed, or the device stopped reading): the session
    #: must end once the turn is accounted for.
    device_error: Exception | None = None


def first_leaf(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


@dataclass
class _Tally:
    """What the turn has done so far; only ``run_turn``'s own callbacks write it."""

    tts_started: bool = False
    sentences: int = 0
    packets: int = 0
    failed: bool = False
    reply_text: list[str] = field(default_factory=list)
    reply_audio: list[PcmChunk] | None = None


async def run_turn(
    ctx: SessionContext,
    start: StartTurn,
    scope: trio.CancelScope,
    *,
    tools: ToolBox | None = None,
    keep_audio: bool = False,
) -> TurnResult:
    """Answer ``start.user_text`` through the agent, or speak ``start.fixed_reply``, inside
    ``scope``; return what happened once nothing of the turn can reach the device any more.

    This is the boundary of one reply: an unexpected exception is logged and makes the turn
    "failed"; a dead connection cuts it short and is handed back in ``device_error``.
    """
    tally = _Tally(reply_audio=[] if keep_audio else None)
    device_error: Exception | None = None
    try:
        with scope:
            await _reply(ctx, start, tally, tools)
    except* (DeviceNotReading, ConnectionClosed) as group:
        device_error = first_leaf(group)  # type: ignore[assignment]
    except* trio.BrokenResourceError:
        pass  # a stage whose downstream already failed; that failure is reported on its own
    except* Exception:  # the turn boundary: a bug in one reply must not end the session
        tally.failed = True
        ctx.log.exception("turn %d failed", start.number)
        ctx.emit(SessionError, kind="turn", message=f"turn {start.number} failed unexpectedly")
    frame_seconds = ctx.config.audio.downlink_frame_ms / 1000
    summary = TurnSummary(
        number=start.number,
        tts_started=tally.tts_started,
        interrupted=scope.cancelled_caught or device_error is not None,
        failed=tally.failed,
        sentences=tally.sentences,
        audio_seconds=tally.packets * frame_seconds,
    )
    audio = tally.reply_audio
    reply_audio = PcmChunk.join(audio, ctx.config.audio.downlink_sample_rate) if audio else None
    return TurnResult(summary, " ".join(tally.reply_text), reply_audio, device_error)


async def _reply(ctx: SessionContext, start: StartTurn, tally: _Tally, tools: ToolBox | None) -> None:
    services = ctx.services
    audio = ctx.config.audio
    session = ctx.config.session
    number = start.number
    agent_send, agent_receive = trio.open_memory_channel[AgentOutput](0)
    sentence_send, sentence_receive = trio.open_memory_channel[SplitterOutput](SENTENCE_BUFFER)
    speech_send, speech_receive = trio.open_memory_channel[SpeechOutput](0)
    packet_send, packet_receive = trio.open_memory_channel[EncodedOutput](PACKET_BUFFER)
    encoder = OpusEncoder(audio.downlink_sample_rate, audio.downlink_frame_ms, audio.opus_bitrate)
    pacer = Pacer(audio.downlink_frame_ms / 1000, audio.downlink_lead_ms / 1000)
    runway = Runway(pacer)  # when this reply's next synthesis and encoding are due

    def on_error(stage: str) -> object:
        def report(error: BackendError) -> None:
            tally.failed = True
            ctx.log.warning("%s failed in turn %d (%s): %s", stage, number, error.kind, error)
            ctx.emit(SessionError, kind=f"{stage}:{error.kind}", message=str(error))

        return report

    def on_sentence(sentence: Sentence) -> None:
        if not tally.reply_text:
            ctx.emit(FirstSentence, turn=number, text=sentence.text)
        tally.reply_text.append(sentence.text)

    def on_sent(sent: Sent) -> None:
        match sent:
            case Sent.TTS_START:
                tally.tts_started = True
            case Sent.SENTENCE_START:
                tally.sentences += 1
            case Sent.AUDIO_PACKET:
                tally.packets += 1
                if tally.packets == 1:
                    ctx.emit(FirstAudio, turn=number)

    async with trio.open_nursery() as nursery:
        if start.fixed_reply is not None:
            nursery.start_soon(speak_text, start.fixed_reply, agent_send)
        else:
            assert start.user_text is not None
            request = AgentRequest(
                ctx.device_id,
                ctx.session_id,
                start.user_text,
                tools,
                report_usage=lambda used, made: ctx.emit(AgentUsage, input_tokens=used, output_tokens=made),
            )
            nursery.start_soon(
                lambda: ask_agent(
                    services.agent,
                    request,
                    agent_send,
                    apology=session.apology_text,
                    on_first_text=lambda: ctx.emit(FirstAgentText, turn=number),
                    on_error=on_error("agent"),
                )
            )
        splitter = SentenceSplitter(
            first_clause_min_chars=session.first_clause_min_chars,
            clause_cuts_chars=session.clause_cuts_chars,
            max_chars=session.max_sentence_chars,
        )
        nursery.start_soon(split_sentences, agent_receive, sentence_send, splitter)
        nursery.start_soon(
            lambda: synthesize(
                sentence_receive,
                speech_send,
                services.tts,
                audio.downlink_sample_rate,
                runway,
                lead=audio.synthesis_lead_ms / 1000,
                on_sentence=on_sentence,
                on_error=on_error("tts"),
            )
        )
        tap = tally.reply_audio.append if tally.reply_audio is not None else None
        nursery.start_soon(encode_speech, speech_receive, packet_send, encoder, services.workers, runway, tap)
        nursery.start_soon(send_reply, packet_receive, ctx.outbox, pacer, ctx.session_id, on_sent)
