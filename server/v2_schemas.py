"""Typed shapes of the Open Inference Protocol v2 (KServe v2 / Triton) JSON that `/v2` reads and writes; what a client
writes is strictly typed ("7" is not 7, true is not 1, 80.0 is not a dimension)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.plan import Method
from model.refine import MAX_ITERATIONS

from .schemas import MAX_SEED


class V2Error(BaseModel):
    """The protocol's error body (`/v1` answers {"error", "detail"})."""

    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
    models: list[str] = Field(description="the models this server serves (one: the served net's weights name)")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a variable dimension")


class ModelMetadata(BaseModel):
    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferParameters(BaseModel):
    """The request's `parameters`: the /v1 query's knobs, and how the audio comes back."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rho: float | str | None = Field(None, description="threshold in (0, 1) or fast|balanced|quality")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="item b of the batch uses seed + b")
    refine: int | None = Field(None, ge=0, le=MAX_ITERATIONS, description="mel-consistency refinements after "
                               "sampling, as /v1's refine; default: the preset's, or the default preset's")
    method: Method | None = Field(None, description="as /v1's method (default: bddm for a numeric rho, else the "
                                                    "device's)")
    sample_rate: int | None = Field(None, description="output rate, as /v1/vocode's sample_rate")
    mel_format: str | dict[str, Any] | None = Field(None, description="the mel's contract, as /v1's mel_format: "
                                                    "a profile's or registered name, or a contract object")
    audio_datatype: Literal["FP32", "INT16"] = Field("FP32", description="INT16: quantised as /v1's pcm16")
    binary_data_output: bool = Field(False, description="every output as binary data (Triton's extension)")


class TensorParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    binary_data_size: int | None = Field(None, ge=0, description="bytes of this tensor after the JSON header")


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: TensorParameters = TensorParameters()
    #: Read by `server.jsonparse` (float32 runs, piece by piece) and checked as numbers by `server.v2.parse_infer`.
    data: Any = Field(None, description="row-major numbers, flat or nested; absent with binary data",
                      json_schema_extra={"type": "array", "items": {}})


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    binary_data: bool = False


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    parameters: OutputParameters = OutputParameters()


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    parameters: InferParameters = InferParameters()
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, int] | None = Field(None, description="binary_data_size when the data follows the JSON")
    data: list[int] | list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    parameters: dict[str, float | int | str] = Field(description="method, rho and schedule_cache (not for "
                                                               "projection alone), steps, refine, sample_rate")
    outputs: list[InferOutput]
