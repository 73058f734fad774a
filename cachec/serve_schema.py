"""The wire format of ``cachec serve``: one request is one whole sampling job, one reply its image.

Pydantic models (pydantic comes with ``ray[serve]``), so the HTTP API validates requests before
any work is queued and publishes its JSON schema (``GET /openapi.json``, ``GET /docs``).
docs/serving.md documents the same fields. Tensors travel as ``{"shape", "dtype", "data"}`` with
``data`` the base64 of the raw little-endian bytes in C order: exact, unlike decimal lists.
"""

from __future__ import annotations

import base64

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import RequestError
from .serve_limits import ECHO_CHARS, POLICY_CHARS, clip, clip_detail

TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32")


class TensorData(BaseModel):
    """A tensor: shape, dtype and the base64 of its raw little-endian bytes (C order)."""

    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(description="dimensions, e.g. [1, 77, 4096]")
    dtype: str = Field(description=f"one of {', '.join(TENSOR_DTYPES)}")
    data: str = Field(description="base64 of the raw bytes (numel x itemsize)")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in TENSOR_DTYPES:
            raise ValueError(f"dtype {clip(v)} is not supported; use one of {', '.join(TENSOR_DTYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError(f"shape {v} has a negative dimension")
        return v


def encode_tensor(t: torch.Tensor) -> dict:
    t = t.detach().to("cpu").contiguous()
    raw = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
            "data": base64.b64encode(raw.numpy().tobytes()).decode("ascii")}


def decode_tensor(d: TensorData | dict, what: str) -> torch.Tensor:
    """The tensor of a :class:`TensorData`; a size that does not match shape × dtype is a RequestError."""
    if isinstance(d, dict):
        d = TensorData(**d)
    dtype = getattr(torch, d.dtype)
    try:
        raw = base64.b64decode(d.data, validate=True)
    except ValueError as exc:
        raise RequestError(f"{what}: data is not valid base64 ({exc})") from None
    numel = 1
    for s in d.shape:
        numel *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(raw) != numel * itemsize:
        raise RequestError(f"{what}: {len(raw)} bytes of data, but shape {d.shape} of {d.dtype} needs "
                           f"{numel * itemsize}")
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return flat.view(dtype).reshape(d.shape).clone()


class GenerateRequest(BaseModel):
    """One sampling job. Conditioning: ``class_label`` (class-conditional models such as
    ``builtin:tiny-dit``), ``prompt_embeds`` / ``pooled_prompt_embeds`` (text-conditional artifacts)
    or ``prompt`` (a served pipeline with its text encoder); ``inputs`` names any other
    conditioning input of the artifact. ``GET /info`` lists what the served model needs."""

    model_config = ConfigDict(extra="forbid")
    class_label: int | None = Field(None, ge=0, description="class index (class-conditional models)")
    prompt: str | None = Field(None, description="text prompt (served pipelines with a text encoder only)")
    prompt_embeds: TensorData | None = Field(None, description="text embeddings, shape [1, tokens, dim]")
    pooled_prompt_embeds: TensorData | None = Field(None, description="pooled text embeddings, shape [1, dim]")
    inputs: dict[str, TensorData] = Field(default_factory=dict,
                                          description="other denoiser inputs by name, one sample each")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the starting noise")
    steps: int = Field(50, ge=1, description="denoising steps (the server's maximum: GET /info)")
    policy: str | None = Field(None, max_length=POLICY_CHARS, description="policy override, e.g. fora:4: run-time parameters of the "
                                                 "served policy only (or none); default: the served policy")
    return_latent: bool = Field(False, description="also return the final sample as an exact float32 tensor "
                                                   "(a served pipeline: the decoded image in [0, 1])")


class GenerateReply(BaseModel):
    """The result of one request."""

    image_png: str = Field(description="base64 of a PNG of the final sample")
    nfe: float = Field(description="full-forward equivalents of the trajectory (per sample)")
    schedule: str = Field(description="F (full) / R (reuse) per step")
    steps: int
    policy: str = Field(description="the policy spec that ran")
    latency_s: float = Field(description="arrival at the replica to reply, seconds")
    compute_s: float = Field(description="the trajectory's sampling time, seconds")
    batch_size: int = Field(description="requests that shared this request's trajectory")
    batch_rows: int = Field(description="rows the trajectory ran with (padding included)")
    replica: str = Field(description="the replica that served the request")
    latent: TensorData | None = Field(None, description="the final sample, float32 (with return_latent; a served "
                                                        "pipeline: the decoded image [1, C, H, W] in [0, 1])")


def parse_request(body) -> GenerateRequest:
    """A request from a dict (handle callers) or a GenerateRequest; validation errors are RequestErrors."""
    if isinstance(body, GenerateRequest):
        return body
    if not isinstance(body, dict):
        raise RequestError(f"a request is a JSON object; got {type(body).__name__}")
    from pydantic import ValidationError

    try:
        return GenerateRequest(**body)
    except ValidationError as exc:
        raise RequestError(validation_message(exc.errors())) from None


def _clip_key(key) -> str:
    """A field name as an error quotes it: a client's own key (an unknown field) cut to a few words."""
    text = str(key)
    return text if len(text) <= ECHO_CHARS else clip(text)


def validation_message(errors) -> str:
    """pydantic's errors as one line per field: ``seed: Input should be greater than or equal to 0``."""
    parts = []
    for e in errors:
        where = ".".join(_clip_key(x) for x in e.get("loc", ()) if x != "body") or "request"
        msg = clip_detail(e.get("msg", "invalid"))
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field (fields: {', '.join(GenerateRequest.model_fields)})"
        parts.append(f"{where}: {msg}")
    return clip_detail("; ".join(parts))
