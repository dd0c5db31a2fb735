"""glibc's mmap threshold is fixed once for a process with local speech models, unless the
operator set it (``plugins/speech/malloc``)."""

from __future__ import annotations

import pytest
from xiaozhi_trio.plugins.speech import malloc


class FakeLibc:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_done", False)


def test_the_threshold_is_fixed_once() -> None:
    libc = FakeLibc()
    assert malloc.fix_mmap_threshold(libc, environ={})
    assert not malloc.fix_mmap_threshold(libc, environ={})
    assert libc.calls == [(malloc.M_MMAP_THRESHOLD, 128 * 1024)]


@pytest.mark.parametrize(
    "environ",
    [{"MALLOC_MMAP_THRESHOLD_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}],
)
def test_an_operators_setting_wins(environ: dict[str, str]) -> None:
    libc = FakeLibc()
    assert not malloc.fix_mmap_threshold(libc, environ=environ)
    assert libc.calls == []


def test_a_refused_setting_is_tried_again_later() -> None:
    refusing = FakeLibc(result=0)
    assert not malloc.fix_mmap_threshold(refusing, environ={})
    libc = FakeLibc()
    assert malloc.fix_mmap_threshold(libc, environ={})


def test_this_process_has_glibc_or_is_left_alone() -> None:
    libc = malloc._glibc()
    assert libc is None or hasattr(libc, "mallopt")
