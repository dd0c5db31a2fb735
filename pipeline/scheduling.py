"""Which CPU job runs next: earliest deadline first, with aging (sans-IO).

Every call into the process-wide worker pool (ASR decode, a sentence's synthesis, an Opus encode)
says when its result is needed: a finished utterance's decode and a reply's first clause are due
at once, later audio is due when the device would run out of what it already has. When a worker
thread is free the queue hands it the job with the earliest *effective* deadline:

    effective = min(max(due, submitted), submitted + max_wait)

so a job already late counts as due when it was submitted (late jobs are served in arrival order,
not by how late they are), and no job can be put off for more than ``max_wait`` by later arrivals:
a job submitted more than ``max_wait`` after another is always served after it, whatever its
deadline (no starvation of run-ahead work). Equal effective deadlines go in submission order.
With ``max_wait = 0`` the queue is plain FIFO.

A job may name a ``model`` it runs on; ``pop`` can be told which models are busy and then hands
out the earliest job among the others (onnxruntime keeps working memory per concurrent run of a
model, so running one call per model at a time bounds it; see ``CpuWorkers``).

Nothing here knows about threads or trio; ``pipeline/workers.py`` is the shell around it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container
from dataclasses import dataclass, field

#: Kinds of work, for the queue-wait figures (any other string works too).
SPEECH_END = "speech_end"  # the decode of an utterance the user has finished
FIRST_AUDIO = "first_audio"  # a reply's first clause, and its encoding
PLAYBACK = "playback"  # later audio of a reply, due when the device would run dry
LISTENING = "listening"  # work while the user speaks (VAD set-up, streaming partials)
BACKGROUND = "background"  # nobody waits for it (recordings)
OTHER = "other"  # callers that said nothing


@dataclass(frozen=True)
class Urgency:
    """When a job's result is needed (``due``, on the scheduler's clock) and what kind it is."""

    due: float
    kind: str = OTHER


@dataclass(eq=False)
class Job:
    """A job waiting for a worker. ``payload`` is the shell's (what to wake)."""

    urgency: Urgency
    submitted: float
    effective: float
    seq: int
    payload: object = None
    #: What the job runs on, if it must not run beside another job on the same (hashable).
    model: object = None
    queued: bool = field(default=True, repr=False)

    @property
    def kind(self) -> str:
        return self.urgency.kind


class DeadlineQueue:
    """Jobs waiting for a worker, served earliest effective deadline first (see the module doc)."""

    def __init__(self, max_wait: float) -> None:
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self.max_wait = max_wait
        self._heap: list[tuple[float, int, Job]] = []
        self._count = itertools.count()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, urgency: Urgency, now: float, payload: object = None, model: object = None) -> Job:
        """Queue a job submitted at ``now``."""
        effective = min(max(urgency.due, now), now + self.max_wait)
        job = Job(urgency, now, effective, next(self._count), payload, model)
        heapq.heappush(self._heap, (effective, job.seq, job))
        self._live += 1
        return job

    def pop(self, busy: Container[object] = frozenset()) -> Job | None:
        """The job to run next (taken out of the queue), or None if none waits; jobs on a model in
        ``busy`` are passed over (they keep their place)."""
        passed: list[tuple[float, int, Job]] = []
        found = None
        while self._heap:
            entry = heapq.heappop(self._heap)
            job = entry[2]
            if not job.queued:
                continue
            if job.model is not None and job.model in busy:
                passed.append(entry)
                continue
            job.queued = False
            self._live -= 1
            found = job
            break
        for entry in passed:
            heapq.heappush(self._heap, entry)
        return found

    def remove(self, job: Job) -> bool:
        """Take a cancelled job out; False if it had already been popped (or removed)."""
        if not job.queued:
            return False
        job.queued = False
        self._live -= 1
        # Removed entries are skipped by pop; drop them all once they are most of the heap.
        if len(self._heap) > 32 and self._live < len(self._heap) // 4:
            self._heap = [entry for entry in self._heap if entry[2].queued]
            heapq.heapify(self._heap)
        return True


@dataclass(frozen=True)
class SaturationChange:
    """The pool became saturated (``saturated``) or recovered, at ``at``."""

    saturated: bool
    at: float
    #: How late the job that started the episode was, or the longest lateness during it.
    lateness: float
    #: The kind of work that started the episode ("" when it ends).
    kind: str = ""


class SaturationMonitor:
    """Decides when the pool is saturated: a job started more than ``late_after`` seconds after it
    was due. The episode ends once no job has started that late for ``calm_for`` seconds (checked
    whenever a job starts or ends, and when asked with ``check``)."""

    def __init__(self, late_after: float = 0.25, calm_for: float = 5.0) -> None:
        self.late_after = late_after
        self.calm_for = calm_for
        self.saturated = False
        self._last_late: float | None = None
        self._worst = 0.0
        self.episodes = 0

    def started(self, job: Job, now: float) -> SaturationChange | None:
        """A job starts at ``now``; returns a change of state, if any."""
        lateness = now - max(job.urgency.due, job.submitted)
        if lateness > self.late_after:
            self._last_late = now
            self._worst = max(self._worst, lateness)
            if not self.saturated:
                self.saturated = True
                self.episodes += 1
                self._worst = lateness
                return SaturationChange(True, now, lateness, job.kind)
            return None
        return self.check(now)

    def check(self, now: float) -> SaturationChange | None:
        """Ends the episode if it has been calm long enough."""
        if self.saturated and self._last_late is not None and now - self._last_late >= self.calm_for:
            self.saturated = False
            return SaturationChange(False, now, self._worst)
        return None
