"""A stand-in for sherpa-onnx's non-streaming WebSocket recognition server, on loopback.

It speaks the same protocol as ``python-api-examples/non_streaming_server.py``: per utterance a
binary message starting with the sample rate and the byte count (little-endian int32 each),
float32 samples in it and in further binary messages until the count is reached; the answer is
the text as a text message, ``<EMPTY>`` when nothing was recognised; the text ``Done`` ends the
connection. Recognition is the fake recognizer's (``hear``: pitch to phrase), so a test can say
what was "spoken". Faults: ``delay`` before answering, ``refuse`` every handshake with 503 (the
real server's answer when it is full).
"""

from __future__ import annotations

import struct
from functools import partial

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from .backends import hear


class FakeSherpaAsrServer:
    def __init__(self, *, delay: float = 0.0, refuse: bool = False) -> None:
        self.delay = delay
        self.refuse = refuse
        #: (sample rate, number of samples) of each utterance received.
        self.utterances: list[tuple[int, int]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, self._handle, "127.0.0.1", 0, None,
                                                 max_message_size=1 << 20))
            self.port = server.port
            task_status.started(self.url)

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.refuse:
            await request.reject(503, body=b"The server is busy. Please retry later.")
            return
        ws = await request.accept()
        try:
            while True:
                header = await ws.get_message()
                if header == "Done":
                    return
                assert isinstance(header, bytes) and len(header) >= 8, "the first message must hold 8 bytes"
                rate, expected = struct.unpack("<ii", header[:8])
                received = [header[8:]]
                size = len(header) - 8
                while size < expected:
                    piece = await ws.get_message()
                    received.append(piece)
                    size += len(piece)
                assert size == expected, (size, expected)
                samples = np.frombuffer(b"".join(received), dtype="<f4")
                self.utterances.append((rate, len(samples)))
                await trio.sleep(self.delay)
                await ws.send_message(hear(samples) or "<EMPTY>")
        except ConnectionClosed:
            return
