"""The vocode service: a request's way through the server, whichever protocol brought it (/v1, its stream, v2, gRPC).

plan (`model.plan`, BDDM's schedule from the engine's cache) -> the engine's queue -> the client's disconnect
(`ClientGone`: nobody is left to answer, a 499) -> the results. A protocol only parses its request into mels and
the knobs (method, rho, refine, seed: `model.plan.plan_for`), and encodes what comes back: `Vocoded` (or
`Streamed`), whose `facts` are what it tells the client of the plan. Errors are the protocol's to encode:
`PlanError` (the client's knobs, a 400), and the engine's `QueueFull` (429), `Unavailable` (503) and `ClientGone`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from model.checkpoint import CheckpointError
from model.contract import MelSpec
from model.detect import check as check_contract
from model.plan import BDDM, Method, Plan, PlanError, plan_for, resolve_contract, resolve_rho
from model.profiles import Profile
from model.schedules import Schedule

from .engine import Engine, Result


@dataclass(frozen=True)
class Planned:
    """A request's plan, and whether BDDM's schedule came from the cache."""

    plan: Plan
    cache_hit: bool = False

    def facts(self) -> dict[str, float | int | str]:
        """The plan as told to the client: method, rho and schedule_cache (BDDM only), steps, refine."""
        cache = {} if self.plan.rho is None else {"schedule_cache": "hit" if self.cache_hit else "miss"}
        return {**self.plan.facts(), **cache}


@dataclass(frozen=True)
class Vocoded:
    planned: Planned
    results: list[Result]  # one per item, in order


@dataclass(frozen=True)
class Streamed:
    planned: Planned
    first: Result  # the first chunk, computed before anything is sent, so a refusal is still an error
    rest: AsyncIterator[Result]  # the other chunks; closing it stops the stream


class Service:
    def __init__(self, engine: Engine, contracts: dict[str, Profile] | None = None) -> None:
        self.engine, self.contracts = engine, contracts or {}

    def contract(self, mel_format: str | dict | None) -> tuple[str, MelSpec]:
        """(name, contract) of a request's `mel_format`: a profile, a contract registered at start-up
        (VOCODER_CONTRACTS_DIR), a contract object, or None for the net's own; a bad one is a `PlanError`."""
        if mel_format is None:
            return "native", self.engine.vocoder.spec
        return resolve_contract(mel_format, self.contracts)

    async def schedule(self, rho: float | str | None) -> tuple[float, Schedule, bool]:
        """(canonical rho, its schedule, cache hit); a rho the weights cannot schedule is a `PlanError`."""
        canonical = resolve_rho(self.engine.vocoder, rho)
        try:
            schedule, hit = await self.engine.schedule(canonical)
        except (CheckpointError, ValueError) as e:
            raise PlanError("rho not available", f"cannot make a schedule for rho={canonical:g}: {e}") from None
        return canonical, schedule, hit

    async def plan(self, method: Method | None, rho: float | str | None, refine: int | None,
                   contract: tuple[str, MelSpec] | None = None) -> Planned:
        plan = plan_for(self.engine.vocoder, method, rho, refine, contract)
        if plan.method != BDDM:
            return Planned(plan)
        _, schedule, hit = await self.schedule(plan.rho)
        return Planned(plan.scheduled(schedule), hit)

    async def vocode(self, mels: Sequence[np.ndarray], method: Method | None = None, rho: float | str | None = None,
                     refine: int | None = None, seed: int | None = None,
                     disconnected: asyncio.Future | None = None, contract: tuple[str, MelSpec] | None = None) -> Vocoded:
        """Each mel (n_mels, F) as its own engine job, item b seeded with seed + b (unseeded items micro-batch
        together; seeded ones run alone). The first refusal (429, 503) or `ClientGone` cancels the rest, which frees
        their queue slots, and is raised. A mel whose values are another contract's than `contract` (`self.contract`;
        None: the net's) is a `model.detect.WrongContract` (422)."""
        for mel in mels:
            check_contract(mel, (contract or self.contract(None))[1])
        planned = await self.plan(method, rho, refine, contract)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.engine.vocode(mel, planned.plan, None if seed is None else seed + b,
                                                              disconnected))
                         for b, mel in enumerate(mels)]
        except BaseExceptionGroup as e:
            raise e.exceptions[0] from None
        return Vocoded(planned, [t.result() for t in tasks])

    async def stream(self, mel: np.ndarray, method: Method | None = None, rho: float | str | None = None,
                     refine: int | None = None, seed: int | None = None,
                     disconnected: asyncio.Future | None = None, contract: tuple[str, MelSpec] | None = None) -> Streamed:
        """The audio of `vocode([mel], ...)` chunk by chunk (`Engine.stream`); `disconnected` is watched until the
        first chunk is out, the caller's to watch after."""
        check_contract(mel, (contract or self.contract(None))[1])
        planned = await self.plan(method, rho, refine, contract)
        chunks = self.engine.stream(mel, planned.plan, seed, disconnected)
        return Streamed(planned, await anext(chunks), chunks)
