"""The inference engine: a schedule cache and one worker that micro-batches vocode jobs off the event loop.

Requests enqueue a `Job` (bounded: a full queue is the client's 429) and await its future. One worker
task takes the oldest job, waits up to `batch_wait_ms` for companions with the same schedule and the same
refinements, and runs the batch on a single inference thread. Mels of different lengths are padded with silence and trimmed
back. A job with an explicit seed runs alone: its noise is drawn from its own seed whatever the batch,
but CPU kernels sum in a batch-size dependent order (~1e-7, enough to flip a 16-bit sample), and the
promise is that the same seed, rho and device give the same bytes, however busy the server is. Projection alone
(no net) batches differently: jobs already queued with the same plan join the oldest without waiting, seeded or
not, and each item runs at its own length on its own pool thread, so its bytes are those it would have alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from model.audio import LOG_FLOOR
from model.checkpoint import weights_id
from model.plan import BDDM, PROJECTION, Plan
from model.runtime import CUDA_BATCH_WAIT_MS
from model.scheduling import canonical_rho
from model.schedules import Schedule
from model.cancel import Cancelled, every
from model.streaming import Chunk, Stream
from model.vocoder import Vocoder

from .metrics import Metrics
from .schedule_cache import QueueFull, ScheduleCache
from .settings import Settings

log = logging.getLogger("server.engine")

#: Frames of the start-up vocode that warms kernels and allocators before /readyz turns 200.
WARMUP_FRAMES = 16


class Unavailable(Exception):
    """Inference failed, timed out, or the engine is shutting down."""


class ClientGone(Exception):
    """The client disconnected before its job ran; the job was dropped."""


@dataclass
class Result:
    audio: np.ndarray
    synthesis_seconds: float
    batch_size: int


@dataclass(eq=False)
class Job:
    mel: np.ndarray
    plan: Plan
    seed: int | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    #: Set when nobody waits for the result any more (`model.cancel`): the running synthesis stops at its next step.
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancelled_at: float | None = None
    #: A streamed request's job is one chunk of its stream (`model.streaming`), and runs alone.
    stream: Stream | None = None
    chunk: Chunk | None = None

    @property
    def frames(self) -> int:
        return self.mel.shape[-1]

    def fits(self, batch: list[Job]) -> bool:
        """Jobs with the same plan batch together: BDDM's unseeded ones, whatever their lengths (module docstring);
        projection's seeded or not, since each item runs alone at its own length (`Vocoder.projection_alone`)."""
        first = batch[0].plan
        return ((self.plan.method, self.plan.rho, self.plan.steps, self.plan.refine, self.plan.contract)
                == (first.method, first.rho, first.steps, first.refine, first.contract)
                and all(j.stream is None and (j.seed is None or j.plan.method == PROJECTION) for j in [self, *batch]))


class Engine:
    def __init__(self, vocoder: Vocoder, settings: Settings, metrics: Metrics) -> None:
        self.vocoder, self.settings, self.metrics = vocoder, settings, metrics
        self.cache = ScheduleCache(vocoder, settings.schedule_cache_size, settings.schedule_queue_size, metrics)
        self.weights_id = weights_id(vocoder.directory)
        self.ready = False
        self.not_ready_reason = "warming up"
        self.warm_up_seconds: float | None = None
        self._jobs: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._busy = False
        self._closing = False
        self._last_batch_seconds = 1.0
        self._streams = 0  # streams under way: shutdown lets them finish, as it does queued jobs
        self._scheduling = 0  # admitted requests waiting for their schedule: they hold a place in the queue
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vocode")
        self._tasks: list[asyncio.Task] = []
        self.batch_wait_ms = (settings.batch_wait_ms if settings.batch_wait_ms is not None
                              else CUDA_BATCH_WAIT_MS if vocoder.device.type == "cuda" else 0.0)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name="vocode-worker"),
                       asyncio.create_task(self._warm_up(), name="warm-up")]

    async def _warm_up(self) -> None:
        """Generate (and pin) the presets' schedules, then one short vocode (which compiles the step where
        VOCODER_COMPILE says so) and one of projection alone (which loads, or compiles, its numba kernels: cached under
        tmp); only then report ready, with the time it took (`warm_up_seconds`)."""
        start = time.perf_counter()
        try:
            presets = self.vocoder.presets.values()
            rhos = {*(p.rho for p in presets), *([self.vocoder.default_rho] if self.vocoder.default_rho else [])}
            for rho in sorted(rhos):
                await self.cache.pin(canonical_rho(rho))
            if rhos:
                rho = canonical_rho(max(rhos))  # the fewest steps: warming needs the kernels, not quality
                loop = asyncio.get_running_loop()
                # batch 1, then 2 at another length: a compiled step specialises sizes 0 and 1, so this
                # compiles both graphs every later request shape reuses
                for batch, frames in ((1, WARMUP_FRAMES), (2, WARMUP_FRAMES + 1)):
                    mel = np.full((self.vocoder.spec.n_mels, frames), math.log(LOG_FLOOR), np.float32)
                    plan = Plan(BDDM, max((p.refine for p in presets), default=0), rho, self.cache.pinned[rho])
                    jobs = [Job(mel, plan, i, loop.create_future()) for i in range(batch)]
                    await loop.run_in_executor(self._executor, self._synthesize, jobs)
            mel = np.full((self.vocoder.spec.n_mels, WARMUP_FRAMES), math.log(LOG_FLOOR), np.float32)
            jobs = [Job(mel, Plan(PROJECTION, 2, preset=PROJECTION), 0, asyncio.get_running_loop().create_future())]
            await asyncio.get_running_loop().run_in_executor(self._executor, self._synthesize, jobs)
            self.warm_up_seconds = time.perf_counter() - start
            self.ready = True
            voc = self.vocoder
            log.info("ready after a %.1f s warm-up%s: net %s, weights %s on %s (%s); default method %s (%s); presets %s",
                     self.warm_up_seconds, " (compile included)" if voc.compiled else "", voc.net, self.weights_id,
                     voc.device, voc.chosen_because, voc.default_method, voc.method_because, voc.presets)
        except Exception as e:  # noqa: BLE001 -- stays alive but not ready, and says why on /readyz
            self.not_ready_reason = f"warm-up failed: {e}"
            log.exception("warm-up failed")

    async def warmed_up(self) -> bool:
        """Wait for the warm-up: True once ready, False if it failed (`not_ready_reason` says why)."""
        await asyncio.shield(self._tasks[1])
        return self.ready

    async def close(self, timeout: float) -> None:
        """Stop taking jobs, let queued and running ones finish (up to `timeout`), fail the rest."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while (self._jobs or self._busy or self._streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.cache.close()

    # --- requests ----------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    async def vocode(self, mel: np.ndarray, plan: Plan, seed: int | None,
                     disconnected: asyncio.Future | None = None) -> Result:
        """Queue one mel and wait for its audio; a disconnect or timeout drops the job if it has not run."""
        job = self._submit(Job(mel, plan, seed, asyncio.get_running_loop().create_future()))
        return await self._wait(job, disconnected)

    async def stream(self, mel: np.ndarray, plan: Plan, seed: int | None,
                     disconnected: asyncio.Future | None = None) -> AsyncIterator[Result]:
        """The audio of `vocode(...)` (seeded: the same samples), chunk by chunk as each is final (`model.streaming`).

        Each chunk is a job at the back of the queue, so a long stream takes turns with other requests. Only the
        first chunk meets the queue's backpressure (429): an admitted stream is not refused half-way. When the
        consumer stops (its client went away) the stream is cancelled: its queued chunk is dropped, and the
        running one stops before its next reverse step.
        """
        stream = self.vocoder.stream(mel, plan.schedule, seed, plan.refine, contract=plan.contract)
        loop, finished = asyncio.get_running_loop(), False
        self._streams += 1
        try:
            for i, chunk in enumerate(stream.plan):
                job = Job(mel, plan, seed, loop.create_future(), stream=stream, chunk=chunk)
                yield await self._wait(self._submit(job, admit=i == 0), disconnected if i == 0 else None)
            finished = True
        except (asyncio.CancelledError, GeneratorExit, ClientGone):
            stream.cancel()  # before it is counted: once counted, no reverse step of it starts
            self.metrics.streams_cancelled.inc()
            raise
        finally:
            self._streams -= 1
            if not finished:
                stream.cancel()

    async def schedule(self, rho: float) -> tuple[Schedule, bool]:
        """(rho's schedule, cache hit). A request whose schedule must be built holds a place in the job queue while
        it waits, so it is admitted (or refused with 429) as any other request (`schedule_cache`)."""
        if (schedule := self.cache.peek(rho)) is not None:
            self.metrics.cache_hits.inc()
            return schedule, True
        self._admit()
        self._scheduling += 1
        try:
            return await self.cache.get(rho)
        finally:
            self._scheduling -= 1

    def _admit(self) -> None:
        """Refuse a new request while shutting down or when the queue (with the requests awaiting a schedule) is full."""
        if self._closing:
            raise Unavailable("the server is shutting down")
        if len(self._jobs) + self._scheduling >= self.settings.queue_size:
            per_batch = self._last_batch_seconds * len(self._jobs) / self.settings.max_batch
            raise QueueFull(max(1, math.ceil(per_batch)))

    def _submit(self, job: Job, admit: bool = True) -> Job:
        """Queue a job; a new request (`admit`) is refused while shutting down or when the queue is full."""
        if admit:
            self._admit()
        self._jobs.append(job)
        self.metrics.queue_depth.set(len(self._jobs))
        self._wake.set()
        return job

    async def _wait(self, job: Job, disconnected: asyncio.Future | None) -> Result:
        """A queued job's result; a disconnect, timeout or cancellation drops the job if it has not run."""
        waiters = {job.future} | ({disconnected} if disconnected is not None else set())
        try:
            await asyncio.wait(waiters, timeout=self.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.future.done():
                job.future.cancel()  # frees its queue slot; a worker holding it in a forming batch skips it
                if job in self._jobs:
                    self._jobs.remove(job)
                    self.metrics.queue_depth.set(len(self._jobs))
                else:  # running, or about to: its synthesis stops at the next step
                    job.cancelled_at = time.perf_counter()
                    job.cancelled.set()
        if job.future.cancelled():
            if disconnected is not None and disconnected.done():
                raise ClientGone("client disconnected")
            raise Unavailable(f"no result within {self.settings.request_timeout_s:g} s")
        return job.future.result()

    # --- worker ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        batching = self.batch_wait_ms > 0 and self.settings.max_batch > 1
        while True:
            batch = [await self._next_job()]
            if batch[0].plan.method == PROJECTION and batch[0].stream is None:
                self._take_fitting(batch)  # already queued: they run side by side on the pool, no one waits for them
            deadline = loop.time() + self.batch_wait_ms / 1000
            while batching and len(batch) < self.settings.max_batch:
                self._take_fitting(batch)
                remaining = deadline - loop.time()
                if len(batch) >= self.settings.max_batch or remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    self._take_fitting(batch)
                    break
            self.metrics.queue_depth.set(len(self._jobs))
            await self._run(batch)

    async def _next_job(self) -> Job:
        while True:
            while self._jobs:
                job = self._jobs.popleft()
                if not job.future.cancelled():
                    return job
            self._wake.clear()
            await self._wake.wait()

    def _take_fitting(self, batch: list[Job]) -> None:
        """Move queued jobs that fit `batch` into it (oldest first), dropping cancelled ones."""
        rest: deque[Job] = deque()
        for job in self._jobs:
            if job.future.cancelled():
                continue
            if len(batch) < self.settings.max_batch and job.fits(batch):
                batch.append(job)
            else:
                rest.append(job)
        self._jobs = rest

    async def _run(self, batch: list[Job]) -> None:
        batch = [j for j in batch if not j.future.cancelled()]
        if not batch:
            return
        now = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(now - job.enqueued)
        self.metrics.batch_size.observe(len(batch))
        self._busy = True
        try:
            await self._run_or_split(batch, now)
        finally:
            self._busy = False

    async def _run_or_split(self, batch: list[Job], now: float) -> None:
        """Run a batch and settle its jobs. A batch that runs out of device memory is split in halves, each run in
        turn (and split again if it must), so a batch too big for the GPU costs time, not answers; only a single
        item that does not fit fails, with the 503 of any failed batch."""
        try:
            audio, seconds = await asyncio.get_running_loop().run_in_executor(self._executor, self._synthesize, batch)
        except Cancelled:  # every client of the batch (or the stream's) went away mid-synthesis: nobody to answer
            self.metrics.syntheses_cancelled.inc()
            if all(j.cancelled_at is not None for j in batch):  # a stream's chunk is cancelled by its tape instead
                self.metrics.cancel_seconds.observe(time.perf_counter() - max(j.cancelled_at for j in batch))
            return
        except Exception as e:  # noqa: BLE001 -- a failed batch fails its requests, never the server
            if isinstance(e, torch.OutOfMemoryError):
                self.metrics.out_of_memory.inc()
            if not isinstance(e, torch.OutOfMemoryError) or len(batch) == 1:
                log.exception("inference failed for a batch of %d", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(Unavailable(f"inference failed: {type(e).__name__}: {e}"))
                return
        else:
            self._settle(batch, audio, seconds, now)
            return
        # out of memory: outside the except clause, so the failed batch's tensors (held by the traceback) are free
        log.warning("out of memory on a batch of %d; running it as two halves", len(batch))
        if self.vocoder.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            if part := [j for j in part if not j.future.cancelled()]:
                await self._run_or_split(part, now)

    def _settle(self, batch: list[Job], audio: list[np.ndarray | None], seconds: float, now: float) -> None:
        self._last_batch_seconds = seconds
        steps = batch[0].plan.steps
        self.metrics.synthesis_duration.labels(steps=str(steps)).observe(seconds)
        for job, wav in zip(batch, audio):
            if wav is None:  # projection alone dropped this item: its client left (`Vocoder.projection_alone`)
                self.metrics.syntheses_cancelled.inc()
                continue
            rate = (batch[0].plan.contract or self.vocoder.spec).sample_rate
            self.metrics.real_time_factor.observe(seconds / (len(wav) / rate))
            if not job.future.done():
                job.future.set_result(Result(wav, seconds, len(batch)))

    def _synthesize(self, batch: list[Job]) -> tuple[list[np.ndarray | None], float]:
        """On the inference thread: a stream's chunk, projection alone's items each at its length, or a batch padded
        to the longest mel, vocoded with per-item seeds and trimmed back."""
        if batch[0].stream is not None:
            (job,) = batch
            start = time.perf_counter()
            with torch.inference_mode():
                audio = job.stream.render(job.chunk)
            if self.vocoder.device.type == "cuda":
                torch.cuda.synchronize()
            return [audio], time.perf_counter() - start
        if batch[0].plan.method == PROJECTION:
            start, plan = time.perf_counter(), batch[0].plan
            audio = self.vocoder.projection_alone([torch.from_numpy(j.mel) for j in batch], [j.seed for j in batch],
                                                  plan.refine, plan.contract, [every([j.cancelled]) for j in batch])
            return audio, time.perf_counter() - start
        frames, plan = max(j.frames for j in batch), batch[0].plan
        mel = np.full((len(batch), batch[0].mel.shape[0], frames), math.log(LOG_FLOOR), np.float32)
        if plan.contract is not None:
            mel[:] = plan.contract.silence
        for i, job in enumerate(batch):
            mel[i, :, :job.frames] = job.mel
        start = time.perf_counter()
        with torch.inference_mode():
            audio = self.vocoder.vocode(mel, plan.schedule, [j.seed for j in batch], plan.sampler, refine=plan.refine,
                                        stop=every([j.cancelled for j in batch]), contract=plan.contract)
        if self.vocoder.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        hop = (plan.contract or self.vocoder.spec).hop
        return [audio[i, :job.frames * hop] for i, job in enumerate(batch)], seconds
