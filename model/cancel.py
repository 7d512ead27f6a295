"""Stopping a synthesis nobody waits for any more: flags set from another thread, checked between steps.

A request's client can leave while its synthesis runs (20 s of compute for 20 s of audio at the quality preset on a
CPU). The server sets that request's flag; the synthesis checks its `Check` after each reverse step's net (the
sampler's per-step hook, `model.sampling`) and before each projection (`model.refine.project`), and raises
`Cancelled` there, so the worker is free within one step. A stream's noise tape stops its chunks the same way
(`model.streaming.StreamCancelled`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

#: What a loop calls between its steps: returns, or raises `Cancelled`.
Check = Callable[[], None]


class Cancelled(Exception):
    """The synthesis was cancelled: nobody is left to take its result."""


def every(flags: Sequence[threading.Event]) -> Check:
    """A batch's check: `Cancelled` once every item's flag is set. While one item still waits the batch goes on (its
    neighbours' results are dropped), as its rows share every kernel call."""

    def check() -> None:
        if all(flag.is_set() for flag in flags):
            raise Cancelled(f"all {len(flags)} items of the batch were cancelled")

    return check
