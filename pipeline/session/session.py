"""One device session: the nursery that wires the stages and the controller that runs turns.

    websocket reader ─▶ uplink decode ─▶ utterances (VAD) ─▶ ASR ─┐
          │  (abort, goes straight to the controller)             ▼
          └──────────────────────────────────────────────▶ controller ─▶ turn (see turn.py)

Controls that must stay in order with the audio (``listen start/stop/detect``) travel down the
uplink with it; ``abort`` skips the queue. The controller owns the one running turn and its
cancel scope; ``tts stop`` is sent after a turn's nursery has exited, so no packet of an old turn
can follow it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed

from ..audio.framing import SUPPORTED_VERSIONS, FramingError, JsonFrame, unpack
from ..audio.opus import BadAudio
from ..backends import ToolBox
from ..events import SessionClosed, SessionError, SessionOpened, SpeechEndDetected, TranscriptReady, TurnEnded, TurnStarted
from ..messages import (
    Abort,
    DeviceHello,
    ListenStart,
    McpMessage,
    OpusPacket,
    PartialTranscript,
    PcmChunk,
    RecognitionFailed,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    UplinkControl,
    WakeWordDetected,
)
from ..protocol import device_messages as dm
from ..protocol.device_messages import ProtocolError
from ..protocol.handshake import Handshake
from ..protocol.mcp import McpError
from ..stages.asr import RecognizerOutput, recognize
from ..stages.listen import UtteranceDetector, UtteranceOutput, detect_utterances
from ..stages.uplink import decode_uplink
from .context import SessionContext
from .outbox import DeviceNotReading, Outbox
from .turn import Turn, run_turn

log = logging.getLogger("xiaozhi_trio.session")

#: Uplink packets queued before the oldest are dropped (~15 s at 60 ms): audio is real time, and
#: a reader that blocked on a busy recognizer could not see ``abort``.
UPLINK_BUFFER = 256
#: Log the first few of a flood of bad packets, then every Nth.
WARN_EVERY = 100


class WebSocket(Protocol):
    """What a session needs of a trio-websocket connection."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...


@dataclass(frozen=True)
class IdleTimeout:
    """No user speech for ``idle_timeout`` seconds."""


ControllerInput = RecognizerOutput | Abort | IdleTimeout


class SessionEnded(Exception):
    """Ends the session from inside (idle goodbye said)."""


def _leaf(error: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class DeviceSession:
    """Runs one connected device until it goes away (``run`` returns the reason)."""

    def __init__(self, app: Any, ws: WebSocket, handshake: Handshake, *, session_id: str | None = None) -> None:
        self.app = app
        self.ws = ws
        self.handshake = handshake
        self.session_id = session_id or uuid.uuid4().hex
        self.config = app.config
        self.hello: DeviceHello | None = None
        self.mode: str | None = None
        self._turn: Turn | None = None
        self._turns = 0
        self._warnings: dict[str, int] = {}
        self._last_activity = trio.current_time()
        self._nursery: trio.Nursery | None = None
        self.tools: ToolBox | None = None
        self.mcp: Any = None
        # Device and session ids reach every log line through ``bind_session`` (see server.py).
        self.log = log
        self.ctx = SessionContext(
            session_id=self.session_id,
            device_id=handshake.device_id,
            config=app.config,
            vad=app.vad,
            asr=app.asr,
            agent=app.agent,
            tts=app.tts,
            workers=app.workers,
            outbox=Outbox(ws.send_message, protocol_version=handshake.protocol_version, send_timeout=app.config.session.send_timeout),
            observe=app.plugins.emit,
            log=self.log,
        )

    # ----------------------------------------------------------------------------------------
    # Lifetime
    # ----------------------------------------------------------------------------------------

    async def run(self) -> str:
        """Greet the device, then run until it disconnects, idles out or stops reading."""
        reason = "device disconnected"
        try:
            with trio.move_on_after(self.config.session.hello_timeout) as hello_scope:
                self.hello = await self._receive_hello()
            if hello_scope.cancelled_caught:
                self.log.warning("no hello within %g s; closing", self.config.session.hello_timeout)
                return "no hello"
            self._settle_framing(self.hello)
            await self.ctx.outbox.send_json(self._server_hello())
            self.ctx.emit(SessionOpened, client_id=self.handshake.client_id, protocol_version=self.protocol_version)
            self.log.info("session opened (protocol v%d, uplink %d ms frames)", self.protocol_version, self.hello.audio_params.frame_duration)
            reason = await self._serve()
        except* DeviceNotReading as group:
            reason = f"device stopped reading: {_leaf(group)}"
            self.log.warning("%s", reason)
        except* ConnectionClosed:
            reason = "device disconnected"
        except* SessionEnded as group:
            reason = str(_leaf(group))
        finally:
            if self.mcp is not None:
                self.mcp.close()
            if self.hello is not None:
                self.ctx.emit(SessionClosed, reason=reason)
                self.log.info("session closed: %s", reason)
        return reason

    async def _receive_hello(self) -> DeviceHello:
        while True:
            message = await self.ws.get_message()
            if isinstance(message, bytes):
                self._warn("audio_before_hello", "binary message before hello ignored")
                continue
            try:
                return dm.parse_hello(message)
            except ProtocolError as e:
                self._warn("bad_hello", f"waiting for hello: {e}")

    @property
    def protocol_version(self) -> int:
        """The binary framing version in use."""
        return self.ctx.outbox.protocol_version

    def _settle_framing(self, hello: DeviceHello) -> None:
        """A client that sent no ``Protocol-Version`` (a browser) may name it in its hello."""
        if not self.handshake.version_given and hello.version in SUPPORTED_VERSIONS:
            self.ctx.outbox.protocol_version = hello.version

    def _server_hello(self) -> dict[str, Any]:
        audio = self.config.audio
        return dm.server_hello(self.session_id, audio.downlink_sample_rate, audio.downlink_frame_ms)

    async def _serve(self) -> str:
        uplink_send, uplink_receive = trio.open_memory_channel[OpusPacket | UplinkControl](UPLINK_BUFFER)
        pcm_send, pcm_receive = trio.open_memory_channel[Any](0)
        utterance_send, utterance_receive = trio.open_memory_channel[UtteranceOutput](0)
        inbox_send, inbox_receive = trio.open_memory_channel[ControllerInput](64)
        detector = UtteranceDetector(self.app.vad.open_stream)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(decode_uplink, uplink_receive, pcm_send, self._on_bad_packet)
            nursery.start_soon(detect_utterances, pcm_receive, utterance_send, detector, self.app.workers)
            nursery.start_soon(recognize, utterance_receive, inbox_send.clone(), self.app.asr, self._on_speech_end)
            nursery.start_soon(self._control, inbox_receive)
            nursery.start_soon(self._keep_alive)
            if self.config.session.idle_timeout > 0:
                nursery.start_soon(self._watch_idle, inbox_send.clone())
            self._start_tools(nursery)
            with uplink_send, inbox_send:
                await self._read(uplink_send, inbox_send)
            await self._cancel_turn("disconnected")
            nursery.cancel_scope.cancel()
        return "device disconnected"

    def _start_tools(self, nursery: trio.Nursery) -> None:
        """Open the MCP client to the device (when it has one) and the session's tool box."""
        make_tools = getattr(self.app, "make_tools", None)
        if make_tools is None:
            return
        self.mcp, self.tools = make_tools(self)
        if self.mcp is not None:
            nursery.start_soon(self._initialize_mcp)

    async def _initialize_mcp(self) -> None:
        try:
            await self.mcp.initialize()
            await self.mcp.list_tools()
        except McpError as e:
            self.log.warning("MCP setup with the device failed: %s", e)

    async def send_mcp(self, frame: dict[str, Any]) -> None:
        """Send an ``mcp`` frame (a JSON-RPC message to the device's MCP server)."""
        await self.ctx.outbox.send_json({**frame, "session_id": self.session_id})

    # ----------------------------------------------------------------------------------------
    # Reading the device
    # ----------------------------------------------------------------------------------------

    async def _read(self, uplink: trio.MemorySendChannel[Any], inbox: trio.MemorySendChannel[ControllerInput]) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            if isinstance(message, bytes):
                try:
                    frame = unpack(self.protocol_version, message)
                except FramingError as e:
                    self._warn("bad_frame", f"binary message ignored: {e}")
                    continue
                if isinstance(frame, JsonFrame):
                    await self._on_text(frame.text, uplink, inbox)
                    continue
                try:
                    uplink.send_nowait(frame)
                except trio.WouldBlock:
                    self._warn("uplink_overflow", "uplink queue full; audio packet dropped")
            else:
                await self._on_text(message, uplink, inbox)

    async def _on_text(self, text: str, uplink: trio.MemorySendChannel[Any], inbox: trio.MemorySendChannel[ControllerInput]) -> None:
        try:
            control = dm.parse_control(text)
        except ProtocolError as e:
            self._warn("bad_message", f"text message ignored: {e}: {text[:200]!r}")
            return
        match control:
            case DeviceHello():
                self._warn("second_hello", "second hello on one connection; repeating the server hello")
                await self.ctx.outbox.send_json(self._server_hello())
            case Abort():
                await inbox.send(control)
            case McpMessage(payload=payload):
                if self.mcp is None:
                    self._warn("mcp_unexpected", "mcp message but no MCP client for this device; ignored")
                else:
                    self.mcp.feed(payload)
            case _:
                await uplink.send(control)

    def _on_bad_packet(self, error: BadAudio) -> None:
        self._warn("bad_audio", f"undecodable audio packet dropped: {error}")

    def _warn(self, kind: str, message: str) -> None:
        """Log a bad-input warning (a flood is logged sparsely) and report it to observers."""
        count = self._warnings.get(kind, 0) + 1
        self._warnings[kind] = count
        if count <= 3 or count % WARN_EVERY == 0:
            self.log.warning("%s (%s #%d)", message, kind, count)
        self.ctx.emit(SessionError, kind=kind, message=message)

    def _on_speech_end(self, ended: SpeechEnded) -> None:
        self._last_activity = trio.current_time()
        self.ctx.emit(SpeechEndDetected, utterance_seconds=ended.audio.duration)

    # ----------------------------------------------------------------------------------------
    # The controller: listen state, turns, barge-in
    # ----------------------------------------------------------------------------------------

    async def _control(self, inbox: trio.MemoryReceiveChannel[ControllerInput]) -> None:
        barge_in_modes = self.config.session.barge_in_modes
        with inbox:
            async for item in inbox:
                match item:
                    case ListenStart(mode=mode):
                        self.mode = mode
                        await self._cancel_turn("listening again")
                    case WakeWordDetected() | Abort():
                        await self._cancel_turn(type(item).__name__)
                    case SpeechStarted():
                        self._last_activity = trio.current_time()
                        if self.mode in barge_in_modes:
                            await self._cancel_turn("barge-in")
                    case Transcript(text=text):
                        self.ctx.emit(TranscriptReady, text=text, speech_ended_at=item.speech_ended_at)
                        if text:
                            await self.ctx.outbox.send_json(dm.stt(self.session_id, text))
                            await self._start_turn(user_text=text, utterance=item.audio)
                    case RecognitionFailed():
                        self.ctx.emit(SessionError, kind=f"asr:{item.kind}", message=item.message)
                        await self._start_turn(fixed_reply=self.config.session.apology_text)
                    case IdleTimeout():
                        await self._say_goodbye()
                    case PartialTranscript():
                        pass

    async def _start_turn(
        self, *, user_text: str | None = None, fixed_reply: str | None = None, utterance: PcmChunk | None = None
    ) -> Turn:
        await self._cancel_turn("replaced by a new turn")
        self._turns += 1
        turn = Turn(self._turns, reply_audio=[] if self.app.recorder is not None else None)
        self._turn = turn
        self.ctx.emit(TurnStarted, turn=turn.number, text=user_text or fixed_reply or "")
        assert self._nursery is not None
        self._nursery.start_soon(self._run_turn, turn, user_text, fixed_reply, utterance)
        return turn

    async def _run_turn(self, turn: Turn, user_text: str | None, fixed_reply: str | None, utterance: PcmChunk | None) -> None:
        try:
            with turn.scope:
                await run_turn(self.ctx, turn, user_text=user_text, fixed_reply=fixed_reply, tools=self.tools)
        except* (DeviceNotReading, ConnectionClosed):
            raise
        except* trio.BrokenResourceError:
            pass  # a stage whose downstream already failed; that failure is reported on its own
        except* Exception:  # the turn boundary: a bug in one reply must not end the session
            turn.outcome = "failed"
            self.log.exception("turn %d failed", turn.number)
            self.ctx.emit(SessionError, kind="turn", message=f"turn {turn.number} failed unexpectedly")
        finally:
            if turn.scope.cancelled_caught and turn.outcome == "completed":
                turn.outcome = "interrupted"
            with trio.CancelScope(shield=True):
                await self._finish_turn(turn)
                await self._record(turn, user_text or "", utterance)

    async def _finish_turn(self, turn: Turn) -> None:
        try:
            if turn.progress.tts_started:
                await self.ctx.outbox.send_json(dm.tts(self.session_id, "stop"))
        except (DeviceNotReading, ConnectionClosed):
            pass  # the session is ending anyway
        finally:
            self._last_activity = trio.current_time()
            frame = self.config.audio.downlink_frame_ms / 1000
            self.ctx.emit(
                TurnEnded,
                turn=turn.number,
                outcome=turn.outcome,
                sentences=turn.progress.sentences,
                audio_seconds=turn.progress.packets * frame,
            )
            turn.done.set()

    async def _record(self, turn: Turn, transcript: str, utterance: PcmChunk | None) -> None:
        """Keep the turn's audio when recordings are on (FLAC encoding and file I/O: a worker)."""
        recorder = self.app.recorder
        if recorder is None or turn.reply_audio is None:
            return
        rate = self.config.audio.downlink_sample_rate
        reply = PcmChunk.join(turn.reply_audio, rate) if turn.reply_audio else None
        try:
            await self.app.workers.run(
                recorder.save, self.handshake.device_id, self.session_id, turn.number, utterance, reply, transcript, " ".join(turn.reply_text)
            )
        except OSError as e:
            self.log.warning("could not save the recording of turn %d: %s", turn.number, e)

    async def _cancel_turn(self, why: str) -> None:
        turn = self._turn
        if turn is None or not turn.running:
            return
        self.log.info("interrupting turn %d: %s", turn.number, why)
        turn.outcome = "interrupted"
        turn.scope.cancel()
        await turn.done.wait()

    # ----------------------------------------------------------------------------------------
    # Timers
    # ----------------------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Never let the firmware's 120 s dead-channel timer fire while the device is connected."""
        interval = self.config.session.keepalive_interval
        outbox = self.ctx.outbox
        while True:
            await trio.sleep_until(outbox.last_sent_at + interval)
            if trio.current_time() >= outbox.last_sent_at + interval:
                await outbox.send_json(dm.keepalive(self.session_id))

    async def _watch_idle(self, inbox: trio.MemorySendChannel[ControllerInput]) -> None:
        timeout = self.config.session.idle_timeout
        with inbox:
            while True:
                deadline = self._last_activity + timeout
                if trio.current_time() < deadline:
                    await trio.sleep_until(deadline)
                    continue
                if self._turn is not None and self._turn.running:
                    self._last_activity = trio.current_time()
                    continue
                await inbox.send(IdleTimeout())
                return

    async def _say_goodbye(self) -> None:
        text = self.config.session.goodbye_text
        if text:
            turn = await self._start_turn(fixed_reply=text)
            await turn.done.wait()
        raise SessionEnded("idle timeout")
