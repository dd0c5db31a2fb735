"""One device session: the I/O shell around the controller.

    reader ─▶ uplink decode ─▶ utterances (VAD) ─▶ ASR ─┐
      │  (abort, typed text skip the queue)             ▼
      └──────────────────────────────────────────▶ inbox ─▶ Controller (sans-IO) ─▶ actions
                                  turns report back ──┘      (start/cancel turn, stt, tts stop…)

The shell reads and routes the device's messages (``reader.py``), runs the uplink stages and the
turns (``turn.py``), feeds the controller (``controller.py``) one input at a time and executes the
actions it returns. The controller decides; the shell only does.
"""

from __future__ import annotations

import logging
import math
import uuid

import trio
from trio_websocket import ConnectionClosed

from ..events import SessionClosed, SessionError, SessionOpened, SpeechEndDetected, TranscriptReady, TurnEnded, TurnStarted
from ..messages import (
    Abort,
    DeviceHello,
    OpusPacket,
    PcmChunk,
    RecognitionFailed,
    SpeechEnded,
    SpeechProgress,
    Transcript,
    TypedText,
    UplinkControl,
    UtteranceStarted,
)
from ..protocol import device_messages as dm
from ..protocol.handshake import Handshake
from ..protocol.mcp import McpClient
from ..protocol.outbox import DeviceNotReading, Outbox
from ..protocol.tools import SessionTools
from ..stages.asr import RecognizerOutput, recognize
from ..stages.listen import UtteranceDetector, UtteranceOutput, detect_utterances
from ..stages.turn_policy import TurnTiming
from ..stages.uplink import decode_uplink
from .bad_input import BadInput
from .context import SessionContext, SessionServices
from .controller import (
    Action,
    CancelTurn,
    Controller,
    ControllerInput,
    ControllerSettings,
    DeviceGone,
    EndSession,
    ReportTurnEnded,
    SendStt,
    SendTtsStop,
    StartTurn,
    Tick,
    TurnFinished,
    UserSpeechProgress,
    UserSpeechStarted,
)
from .device_tools import initialize_mcp, open_tools
from .hello import receive_hello, server_hello, settled_framing
from .keepalive import keep_alive
from .reader import UPLINK_BUFFER, DeviceReader, WakeWords, WebSocket
from .recordings import save_recording
from .turn import TurnResult, first_leaf, run_turn

log = logging.getLogger("xiaozhi_trio.session")

#: What reaches the control loop: the recognizer's output (with the listen controls, in order),
#: what skips the uplink queue, and each finished turn's result.
InboxItem = RecognizerOutput | Abort | TypedText | DeviceGone | TurnResult
Inbox = trio.MemorySendChannel[InboxItem]


class DeviceSession:
    """Runs one connected device until it goes away (``run`` returns the reason)."""

    def __init__(self, services: SessionServices, ws: WebSocket, handshake: Handshake, *, session_id: str | None = None) -> None:
        self.ws = ws
        self.handshake = handshake
        self.session_id = session_id or uuid.uuid4().hex
        self.config = services.config
        self.hello: DeviceHello | None = None
        # Device and session ids reach every log line through ``bind_session`` (see server.py).
        outbox = Outbox(ws.send_message, protocol_version=handshake.protocol_version, send_timeout=self.config.session.send_timeout)
        self.ctx = SessionContext(services, self.session_id, handshake.device_id, outbox, log)
        self.bad_input = BadInput(log, lambda kind, message: self.ctx.emit(SessionError, kind=kind, message=message))
        self._mcp: McpClient | None = None
        self._tools: SessionTools | None = None
        #: Cancel scopes of the turns started and not yet reported finished, by number.
        self._turn_scopes: dict[int, trio.CancelScope] = {}

    # ----------------------------------------------------------------------------------------
    # Lifetime
    # ----------------------------------------------------------------------------------------

    async def run(self) -> str:
        """Greet the device, then run until it disconnects, idles out or stops reading."""
        reason = "device disconnected"
        try:
            with trio.move_on_after(self.config.session.hello_timeout) as hello_scope:
                self.hello = await receive_hello(self.ws, self.bad_input)
            if hello_scope.cancelled_caught:
                log.warning("no hello within %g s; closing", self.config.session.hello_timeout)
                return "no hello"
            self.ctx.outbox.protocol_version = settled_framing(self.handshake, self.hello)
            await self._send_server_hello()
            self.ctx.emit(SessionOpened, client_id=self.handshake.client_id, protocol_version=self.protocol_version)
            log.info("session opened (protocol v%d, uplink %d ms frames)", self.protocol_version, self.hello.audio_params.frame_duration)
            reason = await self._serve(self.hello)
        except* DeviceNotReading as group:
            reason = f"device stopped reading: {first_leaf(group)}"
            log.warning("%s", reason)
        except* ConnectionClosed:
            reason = "device disconnected"
        finally:
            if self._mcp is not None:
                self._mcp.close()
            if self.hello is not None:
                self.ctx.emit(SessionClosed, reason=reason)
                log.info("session closed: %s", reason)
        return reason

    @property
    def protocol_version(self) -> int:
        """The binary framing version in use."""
        return self.ctx.outbox.protocol_version

    async def _send_server_hello(self) -> None:
        await self.ctx.outbox.send_json(server_hello(self.session_id, self.config.audio))

    async def _serve(self, hello: DeviceHello) -> str:
        services = self.ctx.services
        uplink_send, uplink_receive = trio.open_memory_channel[OpusPacket | UplinkControl](UPLINK_BUFFER)
        pcm_send, pcm_receive = trio.open_memory_channel[PcmChunk | UplinkControl](0)
        utterance_send, utterance_receive = trio.open_memory_channel[UtteranceOutput](0)
        inbox_send, inbox_receive = trio.open_memory_channel[InboxItem](64)
        self._mcp, self._tools = open_tools(self.ctx, hello)
        reader = DeviceReader(
            self.ws,
            protocol_version=lambda: self.protocol_version,
            uplink=uplink_send,
            inbox=inbox_send.clone(),
            wake_words=WakeWords(self.config.session.wake_words),
            bad_input=self.bad_input,
            repeat_hello=self._send_server_hello,
            mcp=self._mcp,
        )
        policy = self.config.turn_policy
        timing = TurnTiming.from_config(policy) if services.turn is not None else None
        detector = UtteranceDetector(services.vad.open_stream, turn=timing, turn_modes=policy.modes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(decode_uplink, uplink_receive, pcm_send, lambda e: self.bad_input.warn("bad_audio", f"undecodable audio packet dropped: {e}"))
            nursery.start_soon(detect_utterances, pcm_receive, utterance_send, detector, services.workers, services.turn)
            nursery.start_soon(recognize, utterance_receive, inbox_send.clone(), services.asr, self._on_speech_end)
            nursery.start_soon(keep_alive, self.ctx.outbox, self.session_id, self.config.session.keepalive_interval)
            if self._mcp is not None:
                nursery.start_soon(initialize_mcp, self.ctx, self._mcp)
            nursery.start_soon(self._read, reader, uplink_send, inbox_send.clone())
            with inbox_send:
                reason = await self._control(inbox_receive, inbox_send, nursery)
            nursery.cancel_scope.cancel()
        return reason

    async def _read(self, reader: DeviceReader, uplink: trio.MemorySendChannel[OpusPacket | UplinkControl], inbox: Inbox) -> None:
        with uplink, inbox:
            await reader.run()
            await inbox.send(DeviceGone())

    def _on_speech_end(self, ended: SpeechEnded) -> None:
        self.ctx.emit(SpeechEndDetected, utterance_seconds=ended.audio.duration)

    # ----------------------------------------------------------------------------------------
    # Feeding the controller, executing its actions
    # ----------------------------------------------------------------------------------------

    async def _control(self, inbox: trio.MemoryReceiveChannel[InboxItem], reports: Inbox, nursery: trio.Nursery) -> str:
        """Feed the controller until it ends the session; return why it ended."""
        controller = Controller(ControllerSettings.from_config(self.config.session), now=trio.current_time())
        with inbox:
            while True:
                deadline = controller.idle_deadline
                item: InboxItem | None = None
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    item = await inbox.receive()
                event = Tick(trio.current_time()) if item is None else self._as_input(item)
                for action in controller.handle(event):
                    if isinstance(action, EndSession):
                        return action.reason
                    await self._execute(action, reports, nursery)
                if isinstance(item, TurnResult) and item.device_error is not None:
                    raise item.device_error  # the turn is accounted for; the session ends

    def _as_input(self, item: InboxItem) -> ControllerInput:
        """A pipeline message as the controller's input (reporting what observers want to see)."""
        match item:
            case UtteranceStarted(mode=mode):
                return UserSpeechStarted(mode, trio.current_time())
            case SpeechProgress(seconds=seconds, words=words, mode=mode):
                return UserSpeechProgress(mode, seconds, words)
            case Transcript(text=text, speech_ended_at=ended_at):
                self.ctx.emit(TranscriptReady, text=text, speech_ended_at=ended_at)
            case RecognitionFailed(kind=kind, message=message):
                self.ctx.emit(SessionError, kind=f"asr:{kind}", message=message)
            case TurnResult(summary=summary):
                del self._turn_scopes[summary.number]
                return TurnFinished(summary, trio.current_time())
        return item

    async def _execute(self, action: Action, reports: Inbox, nursery: trio.Nursery) -> None:
        match action:
            case SendStt(text=text):
                await self.ctx.outbox.send_json(dm.stt(self.session_id, text))
            case StartTurn(number=number):
                scope = self._turn_scopes[number] = trio.CancelScope()
                self.ctx.emit(TurnStarted, turn=number, text=action.user_text or action.fixed_reply or "")
                nursery.start_soon(self._run_turn, action, scope, reports.clone())
            case CancelTurn(number=number, reason=reason):
                log.info("interrupting turn %d: %s", number, reason)
                self._turn_scopes[number].cancel()
            case SendTtsStop():
                await self.ctx.outbox.send_json(dm.tts(self.session_id, "stop"))
            case ReportTurnEnded(summary=summary):
                self.ctx.emit(
                    TurnEnded, turn=summary.number, outcome=summary.outcome, sentences=summary.sentences, audio_seconds=summary.audio_seconds
                )

    async def _run_turn(self, start: StartTurn, scope: trio.CancelScope, reports: Inbox) -> None:
        with reports:
            result = await run_turn(self.ctx, start, scope, tools=self._tools, keep_audio=self.ctx.services.recorder is not None)
            await reports.send(result)
        await save_recording(self.ctx, start, result)
