"""Several server processes on one port (``serve --workers N``).

The supervisor binds the listening sockets once, then starts N worker processes that inherit them;
each worker runs its own trio event loop and CPU worker pool and accepts connections from the
shared sockets (the kernel hands each new connection to one of the workers waiting in ``accept``).
A worker that dies is logged and started again (after a pause that grows while it keeps dying
early); SIGTERM or Ctrl-C stops them all: the supervisor sends SIGTERM to every worker (each then
shuts down gracefully, see ``pipeline/shutdown.py``), waits up to ``stop_timeout`` seconds for them
to finish, and kills what is left. A second signal is passed on as a second SIGTERM, which makes the
workers exit at once, as it does a single server.

Workers are started with ``multiprocessing``'s ``spawn`` method: a fresh interpreter each, so no
thread or lock of the supervisor leaks into them. The target must be a module-level function
``target(index, sockets, *args)``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: Pending connections the kernel queues per listening socket before refusing more.
BACKLOG = 1024

WorkerTarget = Callable[..., None]


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``""``: every interface; port 0: a free port)."""
    if host in ("", "::") and socket.has_dualstack_ipv6():
        sock = socket.create_server(("", port), family=socket.AF_INET6, backlog=BACKLOG, dualstack_ipv6=True)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host or "0.0.0.0", port), family=family, backlog=BACKLOG)
    return sock


def default_worker_count(speech_is_local: bool) -> int:
    """One worker per core when speech runs on other machines; one when it runs here (every worker
    would load its own copy of the models, and one pool of CPU threads already uses every core)."""
    return 1 if speech_is_local else max(1, os.cpu_count() or 1)


@dataclass
class _Worker:
    index: int
    process: Any = None
    started_at: float = 0.0
    #: Deaths in a row that came soon after a start (the restart pause grows with them).
    early_deaths: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Runs ``count`` copies of ``target(index, sockets, *args)`` and keeps them running."""

    count: int
    target: WorkerTarget
    sockets: Sequence[socket.socket]
    args: tuple[Any, ...] = ()
    #: Seconds a stopping worker gets to finish before it is killed.
    stop_timeout: float = 30.0
    #: A worker that dies sooner than this after starting counts as crashing at start-up.
    early_death_seconds: float = 10.0
    #: Called with the index of a worker that died (to clean up what it left behind).
    on_death: Callable[[int], None] | None = None
    _workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    #: Signals received (SIGTERM/SIGINT), in order.
    _signals: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be at least 1")
        self._context = multiprocessing.get_context("spawn")

    # ---- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT; return 0 after a graceful stop,
        128 + the signal number when a second signal cut it short.

        Must run in the main thread (it installs signal handlers, and restores them on return).
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._workers = [_Worker(i) for i in range(self.count)]
            for worker in self._workers:
                self._start(worker)
            while not self._stopping:
                self._watch_once(timeout=0.5)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 + self._signals[1] if len(self._signals) > 1 else 0

    def stop(self) -> None:
        """Ask ``run`` to stop every worker and return (safe from a signal handler or another thread)."""
        self._stopping = True

    def pids(self) -> list[int | None]:
        """The current process id of each worker (None while one waits to be restarted)."""
        return [w.process.pid if w.process is not None and w.process.is_alive() else None for w in self._workers]

    # ---- internals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        self._stopping = True

    def _start(self, worker: _Worker) -> None:
        worker.process = self._context.Process(
            target=self.target,
            args=(worker.index, list(self.sockets), *self.args),
            name=f"xiaozhi-trio worker {worker.index}",
        )
        worker.process.start()
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _watch_once(self, timeout: float) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.restart_at is not None and now >= worker.restart_at and not self._stopping:
                self._start(worker)
        running = [w.process.sentinel for w in self._workers if w.restart_at is None]
        pending = [w.restart_at - now for w in self._workers if w.restart_at is not None]
        wait(running, timeout=max(0.0, min([timeout, *pending])))
        for worker in self._workers:
            if worker.restart_at is None and not worker.process.is_alive():
                self._schedule_restart(worker)

    def _schedule_restart(self, worker: _Worker) -> None:
        worker.process.join()
        if self.on_death is not None:
            self.on_death(worker.index)
        lived = time.monotonic() - worker.started_at
        code = worker.process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with status {code}"
        worker.early_deaths = worker.early_deaths + 1 if lived < self.early_death_seconds else 0
        # Crashing at start-up again and again: wait longer each time (up to a minute), not a busy loop.
        pause = min(60.0, 0.5 * 2 ** worker.early_deaths) if worker.early_deaths else 0.5
        if not self._stopping:
            log.error("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                      worker.index, worker.process.pid, how, lived, pause)
        worker.restart_at = time.monotonic() + pause

    def _stop_all(self) -> None:
        """SIGTERM to every worker, again on a second signal; after ``stop_timeout`` SIGKILL."""
        alive = [w.process for w in self._workers if w.process is not None and w.process.is_alive()]
        if self._signals:
            log.warning("%s: stopping %d worker(s) (send it again to stop them at once)",
                        signal.Signals(self._signals[0]).name, len(alive))
        forwarded = 0
        deadline = time.monotonic() + self.stop_timeout
        while alive and time.monotonic() < deadline:
            if forwarded < min(2, max(1, len(self._signals))):
                forwarded += 1
                for process in alive:
                    try:
                        os.kill(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            wait([p.sentinel for p in alive], timeout=0.2)
            alive = [p for p in alive if p.is_alive()]
        for process in alive:
            log.warning("worker pid %d did not stop within %g s; killing it", process.pid, self.stop_timeout)
            process.kill()
            process.join(5)
        for worker in self._workers:
            if worker.process is not None:
                worker.process.join(1)
        log.info("all workers stopped")
