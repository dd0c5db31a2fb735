"""Two sessions on one worker thread: a long reply must not hold back another device's first audio.

The test-double recognizer and synthesizer spend their time as CPU in the shared pool (virtual
threads under the autojump clock, see ``fakes/workers.py``), so the sessions really compete for
the one thread. Device A asks for a long story; once A's story is playing, device B asks a short
question. B's first audio may wait for the one call of A's that is running when B's work arrives
(calls are not preempted), never for A's later sentences. (With one job of A's queued at a time,
the order of the queue itself is checked in ``test_workers.py`` and ``test_scheduling.py``.)
"""

from __future__ import annotations

import trio

from xiaozhi_trio.pipeline.events import FirstAudio, SpeechEndDetected
from xiaozhi_trio.pipeline.workers import CpuWorkers

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.fakes.workers import VirtualThreads
from xiaozhi_trio.plugins.testing.harness import make_app, open_device

#: 20 sentences of 60 characters: 1.2 s of audio each at 20 ms a character.
STORY = " ".join(f"Sentence {i:02d} of the story goes on and on about the dragon." for i in range(20))
ANSWER = "It is three o'clock."
ASR_SECONDS = 0.2
#: CPU per 100 ms chunk of audio (a real-time factor of 0.3).
CHUNK_SECONDS = 0.03


def story_sentence_cpu() -> float:
    return 12 * CHUNK_SECONDS  # 1.2 s of audio


def answer_cpu() -> float:
    return 4 * CHUNK_SECONDS  # 20 characters: 0.4 s of audio


async def second_device_wait(tmp_path) -> float:
    """B's end of speech → first audio."""
    workers = CpuWorkers(1, runner=VirtualThreads())
    fakes = FakeBackends()
    fakes.asr.delay, fakes.asr.workers = ASR_SECONDS, workers
    fakes.tts.chunk_delay, fakes.tts.workers = CHUNK_SECONDS, workers
    fakes.agent.answers = {"tell me a story": STORY, "what time is it": ANSWER}
    app, _, events = make_app(tmp_path, fakes)
    app.workers = workers
    async with open_device(app, device_id="02:00:00:00:00:0a") as a, open_device(app, device_id="02:00:00:00:00:0b") as b:
        async with trio.open_nursery() as nursery:
            story_playing = trio.Event()

            async def listen_to_the_story() -> None:
                await a.listen_start("auto")
                nursery.start_soon(a.speak, speech("tell me a story"))
                reply = await a.receive_reply()
                assert len(reply.sentences) == 20

            async def ask_the_time() -> None:
                await story_playing.wait()
                reply, _ = await b.ask(speech("what time is it"))
                assert reply.sentences == [ANSWER]

            nursery.start_soon(listen_to_the_story)
            nursery.start_soon(ask_the_time)
            while not events.of(FirstAudio):
                await trio.sleep(0.05)
            await trio.sleep(1.0)  # A's story is playing and its synthesis is running ahead
            story_playing.set()
    b_session = events.of(SpeechEndDetected)[-1].session_id
    ended = [e.at for e in events.of(SpeechEndDetected) if e.session_id == b_session][0]
    first = [e.at for e in events.of(FirstAudio) if e.session_id == b_session][0]
    return first - ended


async def test_a_long_reply_does_not_delay_another_devices_first_audio(tmp_path, autojump_clock):
    waited = await second_device_wait(tmp_path)
    # B's own work, plus at most one call of A's (a story sentence) that was already running.
    bound = ASR_SECONDS + answer_cpu() + story_sentence_cpu() + 0.05
    assert waited <= bound
