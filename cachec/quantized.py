"""Quantized weights: what a model's weights are quantized with, and what they really weigh.

Why its own module: torchao quantizes a ``Linear`` by swapping its weight for a tensor subclass
(``Int8Tensor``, ``Float8Tensor``...) that wraps int8/float8 data and scales. Such a weight has no
storage of its own (``data_ptr()`` is 0) and reports the float dtype it stands for, so counting
it as ``numel * element_size`` says 4 bytes where 1 is stored. Backends that rebuild the graph
elsewhere (ONNX Runtime, TensorRT) or save it as plain tensors (an eager artifact) cannot carry
such weights: they refuse up front by capability (:meth:`cachec.backends.base.Backend.check_weights`)
with the quantization named here, instead of failing deep in an export.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .errors import ModelError

# quantizers whose weights cachec cannot capture (no torch.export support): named, refused at load
UNSUPPORTED_QUANTIZERS = {
    "bitsandbytes": "bitsandbytes",
    "bitsandbytes_4bit": "bitsandbytes 4-bit",
    "bitsandbytes_8bit": "bitsandbytes 8-bit",
    "gguf": "GGUF",
    "quanto": "optimum-quanto",
    "modelopt": "NVIDIA ModelOpt",
}


def inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (possibly nested) wrapper subclass holds; ``[t]`` for a plain tensor."""
    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [x for n in names for x in inner_tensors(getattr(t, n))]


def describe(t: torch.Tensor) -> str | None:
    """The quantization of one weight, e.g. ``torchao Int8Tensor (int8 weight-only)``; None if plain."""
    if not is_traceable_wrapper_subclass(t):
        return None
    cls = type(t)
    lib = cls.__module__.split(".")[0]
    # the narrow data it stores (int8, float8_e4m3fn...), not its float scales
    stored = sorted({str(x.dtype).removeprefix("torch.") for x in inner_tensors(t)
                     if not x.is_floating_point() or x.element_size() == 1})
    kind = "/".join(stored) or "quantized"
    if hasattr(t, "act_quant_kwargs"):
        kind += " weight-only" if t.act_quant_kwargs is None else " dynamic activation"
    return f"{lib} {cls.__name__} ({kind})"


def quantization_of(tensors: Iterable[torch.Tensor]) -> str | None:
    """What the quantized weights among ``tensors`` are (one phrase naming each kind), None if none."""
    kinds = sorted({d for t in tensors if isinstance(t, torch.Tensor) for d in [describe(t)] if d})
    return ", ".join(kinds) or None


def program_quantization(program) -> str | None:
    """The quantization of a planned program's weights (every segment's parameters)."""
    return quantization_of(t for seg in program.segments.values() for t in seg.parameters().values())


def check_quantizer(model, what: str) -> None:
    """Refuse a model quantized by a library cachec cannot capture (bitsandbytes, GGUF...): its
    diffusers ``quantization_config`` names the quantizer."""
    quantizer = getattr(model, "hf_quantizer", None)
    config = getattr(quantizer, "quantization_config", None)
    if config is None:
        model_config = getattr(model, "config", None) or {}
        config = model_config.get("quantization_config") if hasattr(model_config, "get") else None
    check_quantization_config(config, what)


def check_quantization_config(config, what: str) -> None:
    """Refuse a ``quantization_config`` (a diffusers config object or its ``config.json`` dict)
    whose quantizer cachec cannot capture; torchao's (and none) pass."""
    if config is None:
        return
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    method = str(getattr(method, "value", method) or "").lower()
    if method == "torchao":
        return
    if method == "bitsandbytes":
        bits = "4bit" if _flag(config, "load_in_4bit") else "8bit" if _flag(config, "load_in_8bit") else ""
        method = f"bitsandbytes_{bits}" if bits else method
    name = UNSUPPORTED_QUANTIZERS.get(method, method or type(config).__name__)
    raise ModelError(f"{what} is quantized with {name}, which cachec cannot capture; accepted: unquantized "
                     "weights or torchao's (quantize_, or diffusers' TorchAoConfig)")


def _flag(config, key: str) -> bool:
    return bool(config.get(key) if isinstance(config, dict) else getattr(config, key, False))
