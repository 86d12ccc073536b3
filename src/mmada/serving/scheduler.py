"""One model worker: a bounded queue of jobs, micro-batched by compatible settings.

The asyncio side (`app.py`) submits a `Job` and listens to its events; a single worker thread owns the
model. When the worker takes a job it waits `batch_window_s` for company, then runs, in one call, every
queued job with the same `(kind, key)` up to `max_batch` rows (a job with `key=None` runs alone). A full
queue refuses new jobs (`QueueFull`, answered with 429). Between denoising steps the runner asks
`still_wanted`: jobs whose client left (`cancel()`) or whose deadline passed stop receiving events, and
a batch that nobody waits for any more stops.

Events reach the asyncio side through `emit`, which must be thread-safe (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ApiError
from .metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """What a job tells its request: a step's state, the final result, or an error."""

    type: Literal["step", "done", "error"]
    data: Any


@dataclass(eq=False)
class Job:
    """One request's work, as the worker sees it."""

    kind: str
    """Which runner takes it (chat, vision, completion, t2i, edit)."""
    key: Hashable | None
    """Jobs of one kind with equal keys may share a model call; None = always alone."""
    rows: int
    """Batch rows it occupies (its choices or images)."""
    inputs: Any
    emit: Callable[[Event], None]
    deadline: float
    """`time.monotonic()` after which the job is abandoned (504)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    """Set by the request's side once it has sent the final answer (or error) to its client."""

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def live(self) -> bool:
        """Still wanted: not cancelled, and if past its deadline, it is failed and cancelled now."""
        if self.cancelled.is_set():
            return False
        if time.monotonic() > self.deadline:
            self.cancel()
            self.emit(Event("error", ApiError(504, "the request took longer than the server's time limit",
                                              code="timeout")))
            return False
        return True

    def send(self, event: Event) -> None:
        """Emit `event` unless the job was abandoned."""
        if not self.cancelled.is_set():
            self.emit(event)


def still_wanted(jobs: Sequence[Job]) -> bool:
    """Whether any job of a batch still waits for its answer (checks every job's deadline)."""
    return any([job.live for job in jobs])  # a list, not a generator: every job's deadline is checked


class QueueFull(Exception):
    """The bounded queue holds `queue_size` jobs already."""


Runner = Callable[[list[Job]], None]


class Scheduler:
    """The queue and the worker thread; `runners[kind](jobs)` runs one batch and emits its events."""

    def __init__(self, runners: Mapping[str, Runner], *, queue_size: int, max_batch: int, batch_window_s: float,
                 metrics: Metrics) -> None:
        self.runners, self.queue_size, self.max_batch = dict(runners), queue_size, max_batch
        self.batch_window_s, self.metrics = batch_window_s, metrics
        self._pending: deque[Job] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.busy = False

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="mmada-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking jobs; the queued ones are answered 503, the running batch finishes its step."""
        with self._ready:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            self._ready.notify_all()
        for job in pending:
            job.send(Event("error", ApiError(503, "the server is shutting down", code="shutting_down")))
            job.cancel()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> None:
        if job.kind not in self.runners:
            raise ValueError(f"no runner for job kind {job.kind!r}")
        with self._ready:
            if len(self._pending) >= self.queue_size:
                raise QueueFull
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._ready.notify()

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and every compatible queued one, up to `max_batch` rows."""
        with self._ready:
            while not self._pending and not self._stopping:
                self._ready.wait()
            if self._stopping:
                return None
            first = self._pending.popleft()
        if first.key is not None and self.batch_window_s:
            time.sleep(self.batch_window_s)  # let concurrent requests arrive
        batch, rows = [first], first.rows
        with self._ready:
            if first.key is not None:
                for job in list(self._pending):
                    if job.kind == first.kind and job.key == first.key and rows + job.rows <= self.max_batch:
                        self._pending.remove(job)
                        batch.append(job)
                        rows += job.rows
            self.metrics.queue_depth.set(len(self._pending))
        return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            batch = [job for job in batch if job.live]
            if not batch:
                continue
            self.metrics.batch_rows.observe(sum(job.rows for job in batch))
            self.metrics.batch_requests.observe(len(batch))
            self.busy = True
            try:
                self.runners[batch[0].kind](batch)
            except ApiError as err:
                for job in batch:
                    job.send(Event("error", err))
            except ValueError as err:  # the library refusing what a request asked for
                for job in batch:
                    job.send(Event("error", ApiError(400, str(err), code="invalid_value")))
            except Exception as err:  # the worker survives anything a request triggers
                logger.exception("a %s batch of %d failed", batch[0].kind, len(batch))
                failure = ApiError(500, f"the model failed on this request: {type(err).__name__}: {err}",
                                   code="internal_error")
                for job in batch:
                    job.send(Event("error", failure))
            finally:
                self.busy = False
