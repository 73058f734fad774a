"""Device and dtype names as the command line and the API accept them, checked once, with clear errors.

Every command takes ``--device`` (default: ``cuda`` when this machine has a GPU, else ``cpu``) and
``--dtype`` (``fp32``, ``bf16``, ``fp16``). Asking for a device this machine does not have is an
error that says what it has, not a CUDA traceback from deep inside the first kernel.
"""

from __future__ import annotations

import torch

from .errors import CachecError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``meta``; a GPU that is not there is refused by name."""
    if name is None:
        return torch.device(default_device())
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise CachecError(f"unknown device {name!r}; accepted: cpu, cuda, cuda:N, meta") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CachecError(f"device {name!r} asked for, but this machine has no CUDA GPU that torch can use "
                              f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CachecError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "meta"):
        raise CachecError(f"device type {device.type!r} is not supported; accepted: cpu, cuda, cuda:N, meta")
    return device


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype:
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        if name not in DTYPE_NAMES:
            raise CachecError(f"dtype {name} is not supported; accepted: {', '.join(DTYPES)}")
        return name
    if name not in DTYPES:
        raise CachecError(f"unknown dtype {name!r}; accepted: {', '.join(DTYPES)}")
    return DTYPES[name]
