"""End to end with the real speech models: a simulated device asks a spoken question as Opus and
hears a spoken answer.

The server side is the real ``App`` with the built-in ``silero`` VAD, ``sherpa-onnx`` ASR
(Moonshine base-en) and ``sherpa-onnx`` TTS (Piper "joe"), found through the entry points; only
the agent is the instant scripted test double. The device is ``DeviceClient`` over an in-memory
WebSocket: it sends a question spoken by espeak-ng as 60 ms Opus packets, paced in real time, and
reads the reply as the firmware plays it. The reply's Opus audio is then decoded and given to the
same recognizer, which must hear the agent's answer in it.

The models run in worker threads, so these tests use trio's real clock; nothing asserts on how
long anything took.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import trio
from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.audio.resample import resample
from xiaozhi_trio.pipeline.backends import BackendContext
from xiaozhi_trio.pipeline.client import Reply
from xiaozhi_trio.pipeline.config import parse_config
from xiaozhi_trio.pipeline.events import (
    FirstAudio,
    FirstSentence,
    SpeechEndDetected,
    TranscriptReady,
    TurnEnded,
)
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers

from .contracts.models import models_dir
from xiaozhi_trio.plugins.testing.speech import RATE, spoken
from xiaozhi_trio.plugins.testing.wer import word_error_rate, words
from xiaozhi_trio.plugins.testing.fakes.backends import FakeAgent, FakeBackends
from xiaozhi_trio.plugins.testing.harness import EventLog, open_device

pytestmark = pytest.mark.models

DOWNLINK_RATE = 24000

#: (listen mode, question spoken by espeak-ng, the agent's scripted answer): one conversation, the
#: first turn ended by the VAD (``auto``), the second by ``listen stop`` (``manual``, push-to-talk).
TURNS = (
    (
        "auto",
        "What is the capital of France?",
        "Paris is the capital of France. It is a beautiful city.",
    ),
    ("manual", "How far away is the moon?", "The moon is very far away from the earth."),
)

# Bounds from measurement (15 conversations, 30 turns): Moonshine heard every question word for
# word (WER 0.00), and 28 of 30 answers; in 2 it put a number before the first word (WER 0.09).
# The voice samples its timing afresh each time, so the reply's audio differs from run to run; an
# earlier answer, "The capital of France is Paris...", was heard as "France's Paris" (WER 0.18)
# in 3 of 6 runs. The bounds allow one or two such slips per turn, no more.
QUESTION_WER = 0.2
ANSWER_WER = 0.2


class ScriptedAgent(FakeAgent):
    """Answers each question of ``TURNS`` with its script, whatever words the recognizer chose
    (punctuation and case vary), so the answer does not depend on an exact transcript."""

    def answer_for(self, text: str) -> str:
        heard = words(text)
        best = min(TURNS, key=lambda turn: _distance(words(turn[1]), heard))
        return best[2]


def _distance(reference: list[str], hypothesis: list[str]) -> int:
    return len(set(reference) ^ set(hypothesis))


@dataclasses.dataclass
class Server:
    app: App
    agent: ScriptedAgent
    events: EventLog


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real models, loaded once for the module, with the scripted agent."""
    data_dir = tmp_path_factory.mktemp("speech-e2e")
    config = parse_config(
        {
            "server": {"data_dir": str(data_dir)},
            "vad": {"backend": "silero"},
            "asr": {"backend": "sherpa-onnx"},
            "agent": {"backend": "fake"},
            "tts": {"backend": "sherpa-onnx"},
        }
    )
    agent = ScriptedAgent()
    events = EventLog()
    plugins = Plugins(entry_points=True, extra=[FakeBackends(agent=agent), events])
    workers = CpuWorkers()
    # The models folder the other model tests share, so the shipped models are prepared once.
    context = BackendContext(data_dir=data_dir, workers=workers, models_dir=models_dir())
    app = App.build(config, plugins, context=context)
    app.workers = workers  # one pool for the backends and the session's encoders
    yield Server(app, agent, events)
    trio.run(app.aclose)


async def _recognize(server: Server, audio: PcmChunk) -> str:
    """What the server's own recognizer hears in ``audio`` (resampled to 16 kHz)."""
    stream = server.app.asr.open_stream()
    return await stream.finish(PcmChunk(resample(audio.samples, audio.sample_rate, RATE), RATE))


async def test_spoken_questions_get_spoken_answers(server: Server) -> None:
    received: list[Reply] = []
    async with open_device(server.app) as device:
        for mode, question, _ in TURNS:
            with trio.fail_after(30):
                reply, _ = await device.ask(spoken(question), mode=mode, trailing_silence=1.5)
            received.append(reply)

    for (_, question, answer), reply in zip(TURNS, received, strict=True):
        # The device hears the transcript before any audio, and audio only inside tts start/stop.
        assert reply.stt is not None and reply.stt_at is not None
        assert word_error_rate(question, reply.stt) <= QUESTION_WER, (question, reply.stt)
        assert reply.first_audio_at is not None and reply.stt_at <= reply.first_audio_at
        assert reply.stray_packets == 0
        assert reply.sentences and " ".join(reply.sentences) == answer
        # The reply's Opus decodes to speech of about the answer's length that says the answer.
        audio = reply.audio(DOWNLINK_RATE)
        seconds = len(audio.samples) / DOWNLINK_RATE
        assert 0.15 * len(words(answer)) <= seconds <= 0.6 * len(words(answer)) + 1.0, seconds
        assert float(np.sqrt(np.mean(audio.samples**2))) > 0.01
        heard = await _recognize(server, audio)
        assert word_error_rate(answer, heard) <= ANSWER_WER, (answer, heard)

    # The server saw the same turns: end of speech, the transcript sent, the answer spoken.
    transcripts = server.events.of(TranscriptReady)
    assert [t.text for t in transcripts] == [reply.stt for reply in received]
    assert len(server.events.of(SpeechEndDetected)) == len(TURNS)
    assert [s.text for s in server.events.of(FirstSentence)] == [
        reply.sentences[0] for reply in received
    ]
    assert len(server.events.of(FirstAudio)) == len(TURNS)
    assert [t.outcome for t in server.events.of(TurnEnded)] == ["completed"] * len(TURNS)
    assert [request.text for request in server.agent.requests[-len(TURNS) :]] == [
        t.text for t in transcripts
    ]


async def test_devices_that_stop_speaking_together_are_all_understood(server: Server) -> None:
    # Two devices whose questions end at the same moment: each gets its own transcript and
    # answer. Their utterances are decoded one after the other: the pool runs one call per model
    # at a time (``[workers] one_run_per_model``), which keeps onnxruntime's memory bounded.
    batcher = server.app.asr.batcher
    batcher.stats.most_running = 0
    audio = {question: spoken(question) for _, question, _ in TURNS}
    longest = max(len(samples) for samples in audio.values())
    replies: dict[str, Reply] = {}

    async def device(index: int, question: str) -> None:
        async with open_device(server.app, device_id=f"02:00:00:00:0f:{index:02x}") as client:
            await trio.sleep((longest - len(audio[question])) / RATE)
            with trio.fail_after(30):
                replies[question], _ = await client.ask(audio[question], trailing_silence=1.5)

    async with trio.open_nursery() as nursery:
        for index, question in enumerate(audio):
            nursery.start_soon(device, index, question)

    for _, question, answer in TURNS:
        reply = replies[question]
        assert reply.stt is not None
        assert word_error_rate(question, reply.stt) <= QUESTION_WER, (question, reply.stt)
        assert " ".join(reply.sentences) == answer
        assert reply.packets and reply.stray_packets == 0
    assert batcher.stats.most_running == 1
