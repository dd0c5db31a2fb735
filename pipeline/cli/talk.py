"""``xiaozhi-trio talk``: be a device. Say a WAV file to a running server, print what came back
(recognized text, sentences, timings) and save the spoken reply."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import numpy as np
import soundfile
import trio
from trio_websocket import ConnectionRejected, HandshakeError

from ..audio.resample import resample
from ..client import UPLINK_RATE, Reply, connect
from ..ota_client import check_in


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("talk", help="speak a WAV file to a server as a device would")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/xiaozhi/v1/", help="the server's WebSocket URL")
    parser.add_argument("--ota", metavar="URL", help="check in at this OTA URL first (as a device boots) to get the WebSocket URL and token, e.g. http://127.0.0.1:8003/xiaozhi/ota/")
    parser.add_argument("--wav", type=Path, required=True, help="the question (any format and rate soundfile reads)")
    parser.add_argument("--save", type=Path, help="write the reply audio here")
    parser.add_argument("--device-id", default="02:00:00:00:00:01")
    parser.add_argument("--client-id", default="00000000-0000-4000-8000-000000000001")
    parser.add_argument("--token", help="access token (as the OTA reply gave it)")
    parser.add_argument("--protocol", type=int, choices=(1, 2, 3), default=1, help="binary framing version")
    parser.add_argument("--mode", choices=("auto", "manual", "realtime"), default="auto")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    parser.set_defaults(func=run)


def load_question(path: Path) -> np.ndarray:
    """Any audio file → mono 16 kHz float32."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return resample(samples.mean(axis=1).astype(np.float32), rate, UPLINK_RATE)


def run(args: argparse.Namespace) -> int:
    question = load_question(args.wav)
    if args.ota:
        try:
            answer = check_in(args.ota, device_id=args.device_id, client_id=args.client_id)
        except httpx.HTTPError as e:
            print(f"talk: OTA check-in at {args.ota} failed: {e}", file=sys.stderr)
            return 1
        if answer.activation_code:
            print(f"talk: this device is not bound yet: {answer.activation_message}".rstrip(), file=sys.stderr)
            print(f"talk: bind it on the server with: xiaozhi-trio devices bind {answer.activation_code}", file=sys.stderr)
            return 3
        args.url = answer.websocket_url or args.url
        args.token = answer.token or args.token
        args.protocol = answer.protocol_version
    try:
        reply, spoken_at, rate = trio.run(_talk, args, question)
    except ConnectionRejected as e:
        print(f"talk: the server refused the connection: HTTP {e.status_code} {(e.body or b'').decode(errors='replace')}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, HandshakeError) as e:
        print(f"talk: cannot talk to {args.url}: {e or type(e).__name__}", file=sys.stderr)
        return 1
    print(f"stt:       {reply.stt!r}")
    for sentence in reply.sentences:
        print(f"sentence:  {sentence}")
    for label, at in (("stt", reply.stt_at), ("tts start", reply.tts_start_at), ("first audio", reply.first_audio_at), ("tts stop", reply.tts_stop_at)):
        if at is not None:
            print(f"{label + ':':<11}{(at - spoken_at) * 1000:8.0f} ms after the end of speech")
    audio = reply.audio(rate)
    print(f"reply:     {audio.duration:.2f} s of audio in {len(reply.packets)} packets")
    if args.save:
        soundfile.write(args.save, audio.samples, rate)
        print(f"saved:     {args.save}")
    return 0


async def _talk(args: argparse.Namespace, question: np.ndarray) -> tuple[Reply, float, int]:
    async with connect(args.url, device_id=args.device_id, client_id=args.client_id, protocol_version=args.protocol, token=args.token) as device:
        await device.hello()
        reply, spoken_at = await device.ask(question, mode=args.mode, trailing_silence=1.5, timeout=args.timeout)
        return reply, spoken_at, device.downlink_rate
