"""A request's plan: the knobs a caller sends (method, rho or a preset's name, refinements) turned into what runs.

One planner for every caller (the server's protocols, the synth CLI): rho's defaults and preset names, the
refinements a preset brings, and the method's sampler are decided here and nowhere else. BDDM's schedule is made by
the caller's means (the server's cache, `Vocoder.schedule`) for the plan's canonical rho and attached with
`Plan.scheduled`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from .contract import ContractError, MelSpec
from .profiles import DEFAULT as DEFAULT_PROFILE
from .profiles import Profile
from .profiles import contract as contract_named
from .schedules import Schedule
from .scheduling import canonical_rho
from .refine import MAX_ITERATIONS
from .vocoder import Vocoder

#: bddm: the score net on rho's schedule, then the refinements; projection: the refinements alone, applied to
#: the mel's coherent start (`model.phase`) with no network and no diffusion step (`model.refine`).
Method = Literal["bddm", "projection"]
METHODS: tuple[Method, ...] = get_args(Method)
BDDM, PROJECTION = METHODS
#: Each method's start: BDDM's sampler (`model.sampling.SAMPLERS`); projection's is PGHI (`model.phase`).
SAMPLER = {BDDM: "ddpm", PROJECTION: "pghi"}
#: The preset label of a rho that is none of the presets'.
CUSTOM = "custom"


class PlanError(ValueError):
    """A request's knobs that make no plan; `title` names what was wrong (a client's error: 400)."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(detail)
        self.title = title


@dataclass(frozen=True)
class Plan:
    """How one request is synthesised: its method and sampler, BDDM's canonical rho and schedule, the refinements
    after sampling, the preset it is (a metrics label: a preset's name, `CUSTOM`, or the method's name), and the mel
    contract it is vocoded in (None: the net's own; `mel_format` names it: a profile, a registered name, "custom")."""

    method: Method
    refine: int
    rho: float | None = None
    schedule: Schedule | None = None
    preset: str = CUSTOM
    contract: MelSpec | None = None
    mel_format: str | None = None

    @property
    def sampler(self) -> str:
        return SAMPLER[self.method]

    @property
    def steps(self) -> int:
        return 0 if self.schedule is None else self.schedule.steps

    def scheduled(self, schedule: Schedule) -> Plan:
        """This BDDM plan with rho's schedule."""
        return replace(self, schedule=schedule)

    def facts(self) -> dict[str, float | int | str]:
        """What a caller is told of the plan (/v1's X-* headers, v2's parameters): projection has no rho."""
        rho = {} if self.rho is None else {"rho": self.rho}
        named = {} if self.mel_format is None else {"mel_format": self.mel_format}
        return {"method": self.method, **rho, "steps": self.steps, "refine": self.refine, **named}


#: Significant digits of a rho a request names (`on_grid`); 3 (`canonical_rho`) for the presets' and stored ones.
RHO_DIGITS = 2


def resolve_rho(vocoder: Vocoder, value: float | str | None) -> float:
    """A request's rho (number, numeric string, preset name, or None for the default) -> canonical rho: a preset's,
    the default's or a stored schedule's as it is, any other snapped to the grid (`on_grid`)."""
    presets = vocoder.presets
    if value is None:
        if vocoder.default_rho is None:
            raise PlanError("invalid rho", "these weights have no default rho; pass rho")
        value = vocoder.default_rho
    elif isinstance(value, str) and value in presets:
        value = presets[value].rho
    try:
        value = float(value)
        snapped = on_grid(value)  # before canonical_rho, which checks the range: rho goes down, never back
        rho = canonical_rho(value)
    except (TypeError, ValueError):
        names = "|".join(sorted(presets)) or "no presets"
        raise PlanError("invalid rho", f"rho must be a number in (0, 1) or a preset ({names}), got {value!r}") from None
    return rho if rho in _kept(vocoder) else canonical_rho(snapped)


def on_grid(rho: float) -> float:
    """rho to `RHO_DIGITS` significant digits (and at most 0.99): every schedule a request can ask for is one of at
    most 90 a decade, so the server's cache and schedule builds serve a bounded set (`server.schedule_cache`)."""
    return min(float(f"{rho:.{RHO_DIGITS}g}"), 0.99)


def _kept(vocoder: Vocoder) -> set[float]:
    """The rho values kept off the grid: the presets', the default's and the weights' stored schedules'."""
    rhos = [p.rho for p in vocoder.presets.values()] + [r for r in [vocoder.default_rho] if r is not None]
    return {canonical_rho(r) for r in rhos} | set(vocoder.schedules)


def resolve_method(vocoder: Vocoder, method: Method | None, rho: float | str | None) -> Method:
    """A request's method: as named; unnamed, BDDM where rho is a number (a numeric rho is BDDM's threshold), else
    the device's default (`Vocoder.default_method`: projection on a CPU, as measured)."""
    if method is None:
        numeric = rho is not None and not (isinstance(rho, str) and rho in vocoder.presets)
        return BDDM if numeric and _is_number(rho) else vocoder.default_method
    if method not in METHODS:
        raise PlanError("invalid method", f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return method


def _is_number(value: float | str) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def resolve_refine(vocoder: Vocoder, method: Method, rho: float | str | None, refine: int | None) -> int:
    """The refinements a request gets: its own `refine`, else its preset's for its method (BDDM's refinements after
    the net, projection's projections of the coherent start), else (no rho, or a numeric one) the default preset's."""
    if refine is not None:
        if not 0 <= refine <= MAX_ITERATIONS:
            raise PlanError("invalid refine", f"refine must be 0..{MAX_ITERATIONS}, not {refine}")
        return refine
    preset = vocoder.presets.get(rho) if isinstance(rho, str) else None
    preset = preset or vocoder.presets.get(vocoder.default_preset or "")
    if preset is None:
        return vocoder.default_refine if method == BDDM else 0
    return preset.refine if method == BDDM else preset.projections


def preset_of(vocoder: Vocoder, rho: float) -> str:
    """The preset a canonical rho is, else `CUSTOM`."""
    return next((name for name, p in vocoder.presets.items() if canonical_rho(p.rho) == rho), CUSTOM)


def plan_for(vocoder: Vocoder, method: Method | None, rho: float | str | None, refine: int | None,
             contract: tuple[str, MelSpec] | None = None) -> Plan:
    """A request's plan, BDDM's still without its schedule (`Plan.scheduled`); no method is the default one
    (`resolve_method`); bad knobs raise `PlanError`. `contract`: (name, spec) of the mel's contract
    (`resolve_contract`), None or the net's own for the usual path."""
    method = resolve_method(vocoder, method, rho)
    if method == PROJECTION and rho is not None and not (isinstance(rho, str) and rho in vocoder.presets):
        names = "|".join(sorted(vocoder.presets)) or "no presets"
        raise PlanError("invalid rho", f"method=projection takes a preset ({names}) or no rho, not {rho!r}: a numeric "
                                       "rho is BDDM's threshold")
    iterations = resolve_refine(vocoder, method, rho, refine)
    name, spec = (None, None) if contract is None or contract[1] == vocoder.spec else contract
    if method == PROJECTION:
        return Plan(PROJECTION, iterations, preset=PROJECTION, contract=spec, mel_format=name)
    canonical = resolve_rho(vocoder, rho)
    return Plan(BDDM, iterations, canonical, preset=preset_of(vocoder, canonical), contract=spec, mel_format=name)


def resolve_contract(mel_format: str | dict | None, registered: dict[str, Profile] | None = None) -> tuple[str, MelSpec]:
    """A request's `mel_format` (a profile's or registered name, a contract object, None for the default profile)
    -> (its name or "custom", its contract); a bad one is a `PlanError` (400)."""
    try:
        spec = contract_named(mel_format, registered)
    except ContractError as e:
        raise PlanError("invalid mel_format", str(e)) from None
    return (DEFAULT_PROFILE if mel_format is None else "custom" if isinstance(mel_format, dict) else mel_format), spec
