"""Typed shapes of the JSON the API reads and writes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from model.refine import MAX_ITERATIONS

MAX_SEED = 2**63 - 1


class VocodeBody(BaseModel):
    """The knobs of `POST /v1/vocode` as JSON, strictly typed ("7" is not 7, true is not 1); query parameters, when
    given, take precedence. Its `mel` is read apart, straight into float32 (`server.codec.decode_json`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    rho: float | str | None = Field(None, description="BDDM threshold in (0, 1) or a preset name")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    refine: int | None = Field(None, ge=0, le=MAX_ITERATIONS, description="mel-consistency refinements after sampling")
    mel_format: str | dict[str, Any] | None = Field(None, description="the mel's contract: a profile's name "
                                                    "(GET /v1/model), a registered one's, or a contract object")


class ErrorOut(BaseModel):
    error: str
    detail: str


class Health(BaseModel):
    status: str
    detail: str | None = None


class ScheduleOut(BaseModel):
    rho: float
    steps: int
    beta: list[float]
    alpha: list[float]
    cached: bool = Field(description="whether the schedule was already in the cache before this request")


class ScheduleSummary(BaseModel):
    rho: float
    steps: int
    presets: list[str] = Field(description="preset names that map to this rho")


class ScheduleList(BaseModel):
    schedules: list[ScheduleSummary]
    capacity: int


class Preset(BaseModel):
    """A preset holds both methods: BDDM's rho (so its steps) and refinements, and projection's projections."""

    rho: float
    steps: int | None = Field(description="diffusion steps; null until the schedule is generated at start-up")
    refine: int = Field(description="method=bddm: mel-consistency refinements after sampling (model.refine)")
    projections: int = Field(description="method=projection: projections of the mel's coherent start (model.phase)")


class ModelInfo(BaseModel):
    weights: str = Field(description="weights directory name and a content hash of its files")
    net: str = Field(description="the score net's size, e.g. 'base (64 x 30)' or 'small (32 x 12)'")
    chosen_because: str = Field(description="why these weights serve: named by the operator, or the device's "
                                            "default (CUDA: base, CPU: small)")
    device: str
    dtype: str = Field(description="inference precision: float32 or bfloat16 (autocast)")
    compiled: bool = Field(description="whether the score net's step runs torch.compile'd (VOCODER_COMPILE)")
    warm_up_seconds: float | None = Field(description="the start-up warm-up before /readyz turned 200 (schedules, "
                                                      "a first synthesis, the compile when `compiled`); null until ready")
    sample_rate: int
    hop: int
    n_mels: int
    n_fft: int
    fmin: float
    fmax: float
    default_method: str = Field(description="the method of a request that names none (and no numeric rho)")
    method_because: str = Field(description="why that method is the default here, as measured")
    default_preset: str | None = Field(description="the preset of a request that names none, in either method")
    default_rho: float | None
    default_refine: int = Field(description="method=bddm: the refinements of a request that names no preset nor "
                                            "refine")
    max_refine: int = Field(description="the most refinements a request may ask for")
    presets: dict[str, Preset]
    max_frames: int = Field(description="the longest mel in the net's contract; another contract's limit is as many "
                                        "seconds of audio at its own hop")
    profiles: dict[str, dict[str, Any]] = Field(description="mel_format names: each profile's and registered "
                                                           "contract's stacks, source and fields")
