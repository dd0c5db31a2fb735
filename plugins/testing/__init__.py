"""Test doubles and helpers shared by ``tests/`` and ``bench/``, installed as
``xiaozhi_trio.plugins.testing`` so that neither reaches into the other (like ``trio.testing``).

* ``fakes/``: faithful fakes of what the server talks to (Coze, an OpenAI-compatible API, the
  firmware's OTA client, a device's MCP server, instant backends) for tests and benchmarks;
* ``harness``: the real session against the real device client over an in-memory stream;
* ``speech``, ``wer``: real speech (a shipped recording, espeak-ng sentences) and word error rate.
* ``playback``: a device's playback queue replayed from packet arrivals (underruns, least queued).

Nothing here is ever a default of the server: a config or a test has to name it.
"""
