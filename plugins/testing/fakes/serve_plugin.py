"""The test-double backends as an installable plugin module, for a real ``xiaozhi-trio serve``
subprocess: ``installed_plugin(folder)`` writes the entry-point metadata that makes the server's
plugin discovery load this module, exactly as it loads a third-party plugin package.

The recognizer in that process hears ``QUESTION`` in a tone of ``QUESTION_PITCH`` Hz, and the agent
answers it with ``ANSWER``, slowly enough that the reply is still playing when the test signals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xiaozhi_trio.pipeline.hookspecs import hookimpl

from .backends import FakeAgent, FakeBackends, register_phrase

QUESTION = "tell me a story"
QUESTION_PITCH = 1000.0
ANSWER = " ".join(f"This is sentence number {n} of a story that takes a while to tell." for n in range(1, 4))

_backends = FakeBackends(agent=FakeAgent(answers={QUESTION: ANSWER}, delta_delay=0.05))


@hookimpl
def xiaozhi_register_backends(registry: Any) -> None:
    register_phrase(QUESTION, QUESTION_PITCH)
    _backends.xiaozhi_register_backends(registry)


def installed_plugin(folder: Path) -> Path:
    """Write a ``*.dist-info`` in ``folder`` whose entry point names this module; put ``folder``
    and the project root on ``PYTHONPATH`` to install it. Returns ``folder``."""
    info = folder / "xiaozhi_trio_test_fakes-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xiaozhi-trio-test-fakes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[xiaozhi_trio]\ntest_fakes = {__name__}\n")
    return folder
