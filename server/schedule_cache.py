"""The server's BDDM schedules: presets pinned, other rho values in a bounded LRU, new ones built as bounded work.

A schedule the cache lacks costs seconds of CPU (the schedule network's search, `Vocoder.schedule`): 3 s alone on the
2-core EPYC, 22-44 s when twelve ran at once on the pool that also encodes every answer, so a client that asked for
new rho values stalled everyone (issue 34). So a build is a job like a synthesis: one at a time on the cache's own
thread, at a lowered CPU priority (the inference thread goes first), with at most `queue_size` builds waiting or
running; beyond them `QueueFull`, a 429 with Retry-After. The rho a request names is snapped to a grid first
(`model.plan.resolve_rho`), so the number of distinct schedules is bounded too.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from model.schedules import Schedule
from model.vocoder import Vocoder

from .metrics import Metrics

#: The nice value of the schedule thread (and of the torch threads it starts): above the server's, so a build takes
#: the CPU the inference worker leaves.
BUILD_NICENESS = 10


class QueueFull(Exception):
    """A queue (the inference jobs', or the schedule builds') is at capacity; `retry_after` is a hint in seconds."""

    def __init__(self, retry_after: int, what: str = "inference queue") -> None:
        super().__init__(f"the {what} is full; retry in {retry_after} s")
        self.retry_after = retry_after


def _lower_priority() -> None:
    """On the build thread, before it starts torch's threads (they inherit it): a higher nice value, where allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + BUILD_NICENESS)
    except (OSError, AttributeError):  # not Linux, or not permitted: builds just compete as equals
        pass


class ScheduleCache:
    """Canonical rho -> Schedule: presets pinned, others in a bounded LRU; one build per rho at a time, and at most
    `queue_size` builds waiting or running (module docstring)."""

    def __init__(self, vocoder: Vocoder, size: int, queue_size: int, metrics: Metrics) -> None:
        self.vocoder, self.size, self.queue_size, self.metrics = vocoder, size, queue_size, metrics
        self.pinned: dict[float, Schedule] = {}
        self.lru: OrderedDict[float, Schedule] = OrderedDict()
        self.pending: dict[float, asyncio.Future] = {}
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="schedule", initializer=_lower_priority)
        self._build_seconds = 3.0  # the last build's time, for Retry-After (3 s: small's, measured alone)

    def peek(self, rho: float) -> Schedule | None:
        if rho in self.pinned:
            return self.pinned[rho]
        if rho in self.lru:
            self.lru.move_to_end(rho)
            return self.lru[rho]
        return None

    def entries(self) -> dict[float, Schedule]:
        return {**self.lru, **self.pinned}

    async def get(self, rho: float) -> tuple[Schedule, bool]:
        """(schedule, hit). A build runs on the cache's thread; concurrent misses for one rho share it; a new build
        beyond `queue_size` is a `QueueFull`."""
        if (schedule := self.peek(rho)) is not None:
            self.metrics.cache_hits.inc()
            return schedule, True
        self.metrics.cache_misses.inc()
        if (stored := self.vocoder.schedules.get(rho)) is not None:  # saved with the weights: nothing to build
            self._remember(rho, stored)
            return stored, False
        future = self.pending.get(rho)
        if future is None:
            if len(self.pending) >= self.queue_size:
                self.metrics.schedule_refusals.inc()
                raise QueueFull(max(1, math.ceil(self._build_seconds * len(self.pending))), "schedule build queue")
            future = self.pending[rho] = asyncio.get_running_loop().run_in_executor(self._builder, self._build, rho)
            future.add_done_callback(lambda f: self._settle(rho, f))
        return await asyncio.shield(future), False

    async def pin(self, rho: float) -> Schedule:
        schedule, _ = await self.get(rho)
        self.pinned[rho] = schedule
        self.lru.pop(rho, None)
        return schedule

    def close(self) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)

    def _build(self, rho: float) -> Schedule:
        """On the build thread: rho's schedule from the schedule network, timed."""
        start = time.perf_counter()
        schedule = self.vocoder.schedule(rho)
        self._build_seconds = time.perf_counter() - start
        self.metrics.schedule_builds.observe(self._build_seconds)
        return schedule

    def _settle(self, rho: float, future: asyncio.Future) -> None:
        del self.pending[rho]
        if not future.cancelled() and future.exception() is None:
            self._remember(rho, future.result())

    def _remember(self, rho: float, schedule: Schedule) -> None:
        self.lru[rho] = schedule
        while len(self.lru) > self.size:
            self.lru.popitem(last=False)
