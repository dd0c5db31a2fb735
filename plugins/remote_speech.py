"""Built-in plugin: speech recognition and synthesis on another machine (one GPU box, many servers).

Two existing servers, so nothing needs writing on the speech machine:

* ``[asr] backend = "sherpa-onnx-remote"``: sherpa-onnx's non-streaming WebSocket server
  (``python-api-examples/non_streaming_server.py`` in k2-fsa/sherpa-onnx; any of its offline models:
  SenseVoice, Paraformer, Whisper, Moonshine, transducers). Per utterance the client sends one
  binary message starting with the sample rate and the byte count (two little-endian int32) and
  then float32 samples (more binary messages if needed); the server answers with the text as a text
  message (``<EMPTY>`` for nothing), and ``Done`` ends the connection.
* ``[tts] backend = "openai-speech"``: any OpenAI-compatible ``POST /v1/audio/speech`` server
  (Kokoro-FastAPI, openedai-speech, LocalAI, speaches...) asked for ``response_format = "pcm"``:
  raw 16-bit little-endian mono samples at 24 kHz, streamed as they are made.

Each request has a time limit; a failure (unreachable, refused, too slow, a protocol error) is a
``BackendError``, so the device hears the usual apology (recognition) or the sentence is skipped
(synthesis), and the session goes on.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

from xiaozhi_trio.pipeline.backends import BackendContext, BackendError, ConfigError
from xiaozhi_trio.pipeline.hookspecs import hookimpl
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.tables import parse_table, require

#: The sherpa-onnx server's default largest message is 1 MiB; stay well under it.
ASR_MESSAGE_BYTES = 256 * 1024
#: What the OpenAI speech API's "pcm" format is: 24 kHz, 16-bit, mono.
OPENAI_PCM_RATE = 24000


@dataclass(frozen=True)
class RemoteAsrOptions:
    """``[asr] backend = "sherpa-onnx-remote"``."""

    #: The server, e.g. ``ws://gpu.lan:6006``.
    url: str = ""
    #: Seconds for one utterance: connecting, sending and the answer.
    timeout: float = 10.0
    #: The rate the audio is sent at (the server resamples if its model differs).
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        require(self.url.startswith(("ws://", "wss://")), f"[asr] url must be the server's ws:// or wss:// URL, not {self.url!r}")
        require(self.timeout > 0, "[asr] timeout must be positive")
        require(self.sample_rate in (8000, 16000), "[asr] sample_rate must be 8000 or 16000")


class RemoteRecognitionStream:
    """One utterance, recognised on the server when it is over."""

    def __init__(self, options: RemoteAsrOptions) -> None:
        self.options = options

    async def accept(self, audio: PcmChunk) -> str | None:
        return None  # an offline model: nothing until the utterance is over

    async def finish(self, utterance: PcmChunk) -> str:
        payload = np.asarray(utterance.samples, dtype="<f4").tobytes()
        first = struct.pack("<ii", utterance.sample_rate, len(payload))
        pieces = [payload[i : i + ASR_MESSAGE_BYTES] for i in range(0, len(payload), ASR_MESSAGE_BYTES)] or [b""]
        where = self.options.url
        try:
            with trio.fail_after(self.options.timeout):
                async with open_websocket_url(where) as ws:
                    await ws.send_message(first + pieces[0])
                    for piece in pieces[1:]:
                        await ws.send_message(piece)
                    answer = await ws.get_message()
                    await ws.send_message("Done")
        except trio.TooSlowError:
            raise BackendError(f"speech server {where} did not answer within {self.options.timeout:g} s", kind="timeout") from None
        except ConnectionRejected as e:
            raise BackendError(f"speech server {where} refused the connection (HTTP {e.status_code})", kind="connect") from None
        except (OSError, HandshakeError, ConnectionClosed) as e:
            reason = str(e) or str(e.__cause__ or e.__context__ or type(e).__name__)
            raise BackendError(f"cannot reach speech server {where}: {reason}", kind="connect") from None
        if not isinstance(answer, str):
            raise BackendError(f"speech server {where} answered with binary data, not text", kind="protocol")
        return "" if answer == "<EMPTY>" else answer.strip()


class RemoteRecognizer:
    """A ``SpeechRecognizer`` on a sherpa-onnx non-streaming WebSocket server."""

    def __init__(self, options: RemoteAsrOptions) -> None:
        self.options = options
        self.sample_rate = options.sample_rate

    def open_stream(self) -> RemoteRecognitionStream:
        return RemoteRecognitionStream(self.options)


@dataclass(frozen=True)
class OpenAiSpeechOptions:
    """``[tts] backend = "openai-speech"``."""

    #: The API base, e.g. ``http://gpu.lan:8880/v1`` (the request goes to ``<url>/audio/speech``).
    url: str = ""
    model: str = "tts-1"
    voice: str = "alloy"
    speed: float = 1.0
    #: Environment variable holding the API key, if the server wants one.
    api_key_env: str = ""
    #: Seconds to connect, and at most between two pieces of audio.
    timeout: float = 10.0

    def __post_init__(self) -> None:
        require(self.url.startswith(("http://", "https://")), f"[tts] url must be the API's http(s):// base URL, not {self.url!r}")
        require(0.25 <= self.speed <= 4.0, "[tts] speed must be between 0.25 and 4")
        require(self.timeout > 0, "[tts] timeout must be positive")


class OpenAiSpeech:
    """A ``SpeechSynthesizer`` on an OpenAI-compatible ``/audio/speech`` server, streamed."""

    sample_rate = OPENAI_PCM_RATE

    def __init__(self, options: OpenAiSpeechOptions) -> None:
        self.options = options
        headers = {}
        if options.api_key_env:
            key = os.environ.get(options.api_key_env)
            if not key:
                raise ConfigError(f"[tts] api_key_env names ${options.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.AsyncClient(base_url=options.url.rstrip("/") + "/", headers=headers,
                                      timeout=httpx.Timeout(options.timeout))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def synthesize(self, text: str, send: trio.MemorySendChannel[PcmChunk]) -> None:
        body = {"model": self.options.model, "input": text, "voice": self.options.voice,
                "response_format": "pcm", "speed": self.options.speed}
        where = self.options.url
        try:
            async with self.http.stream("POST", "audio/speech", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:200].decode("utf-8", "replace")
                    raise BackendError(f"speech server {where} answered HTTP {response.status_code}: {detail}",
                                       kind=f"http_{response.status_code}")
                odd = b""  # a chunk may end in the middle of a sample
                async for data in response.aiter_bytes():
                    data = odd + data
                    whole = len(data) - len(data) % 2
                    odd = data[whole:]
                    if whole:
                        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
                        await send.send(PcmChunk(samples, self.sample_rate))
        except httpx.TimeoutException:
            raise BackendError(f"speech server {where} was silent for {self.options.timeout:g} s", kind="timeout") from None
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach speech server {where}: {e}", kind="connect") from None


def create_asr(context: BackendContext, options: Mapping[str, Any]) -> RemoteRecognizer:
    return RemoteRecognizer(parse_table("asr", RemoteAsrOptions, options))


def create_tts(context: BackendContext, options: Mapping[str, Any]) -> OpenAiSpeech:
    return OpenAiSpeech(parse_table("tts", OpenAiSpeechOptions, options))


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    registry.add("asr", "sherpa-onnx-remote", create_asr,
                 description="speech recognition on a sherpa-onnx non-streaming WebSocket server elsewhere")
    registry.add("tts", "openai-speech", create_tts,
                 description="speech synthesis on an OpenAI-compatible /v1/audio/speech server elsewhere")
