"""Prometheus metrics in a per-app registry, so several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: From a few milliseconds (a cache hit, a health probe) to minutes (a long mel at quality rho on CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds of compute per second of audio: well under 1 on a GPU, possibly above 1 on a CPU.
RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.request_duration = Histogram("vocoder_request_duration_seconds", "HTTP request latency",
                                          ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.synthesis_duration = Histogram("vocoder_synthesis_duration_seconds", "Wall time of one vocode batch",
                                            ["steps"], buckets=LATENCY_BUCKETS, registry=r)
        self.real_time_factor = Histogram("vocoder_real_time_factor", "Synthesis seconds per audio second",
                                          buckets=RTF_BUCKETS, registry=r)
        self.queue_wait = Histogram("vocoder_queue_wait_seconds", "Time a job waited for the inference worker",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vocoder_batch_size", "Requests per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.cache_hits = Counter("vocoder_schedule_cache_hits", "Schedule cache hits", registry=r)
        self.cache_misses = Counter("vocoder_schedule_cache_misses", "Schedule cache misses", registry=r)
        self.schedule_builds = Histogram("vocoder_schedule_build_seconds", "Schedules built by the schedule network "
                                         "(count) and their time", buckets=LATENCY_BUCKETS, registry=r)
        self.schedule_refusals = Counter("vocoder_schedule_build_refusals", "Requests refused (429) because the "
                                         "schedule build queue was full", registry=r)
        self.unhandled = Counter("vocoder_unhandled_exceptions", "Requests answered 500 by the last-resort handler",
                                 ["route"], registry=r)
        self.time_to_first_audio = Histogram("vocoder_time_to_first_audio_seconds",
                                             "Streamed requests: from the request to its first audio, by preset",
                                             ["preset"], buckets=LATENCY_BUCKETS, registry=r)
        self.streams_cancelled = Counter("vocoder_streams_cancelled", "Streams whose client went away before the end",
                                         registry=r)
        self.out_of_memory = Counter("vocoder_out_of_memory", "Inference batches that ran out of device memory "
                                     "(a batch of several is then retried as two halves)", registry=r)
        self.syntheses_cancelled = Counter("vocoder_syntheses_cancelled", "Syntheses (a batch, a stream's chunk) "
                                           "stopped mid-way because nobody waited for them any more", registry=r)
        self.cancel_seconds = Histogram("vocoder_cancel_seconds", "From the last client of a batch leaving to its "
                                        "synthesis stopping", buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("vocoder_requests_in_flight", "HTTP requests being handled", registry=r)
        self.queue_depth = Gauge("vocoder_queue_depth", "Jobs waiting for the inference worker", registry=r)
