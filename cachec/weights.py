"""New weights of the same shapes into a compiled runtime, without compiling again.

The way one server serves many LoRAs: compile once (or load an artifact), then for each request's
LoRA hand the runtime the fused weights (``rt.load_weights(state_dict)``, names as in the model's
``state_dict``). Nothing is lowered again, so no variant compiles and no cache changes address.

* Eager and Inductor (the program's graphs hold the weights): each tensor is copied in place into
  the tensor the graphs read (Inductor's compiled code and CUDA graphs read the same storage).
* AOTInductor: the packages run on user-managed constants (``load_constants(user_managed=True)``),
  one set of tensors every variant's package reads: the new values are copied into those tensors.
* ONNX Runtime and TensorRT hold the weights inside their lowered files: refused, naming the
  backend.

A name the program does not hold, or a shape or dtype that differs, is refused before anything is
copied (never half-loaded weights).
"""

from __future__ import annotations

import torch

from .errors import BackendError, ShapeError
from .regions import WRAPPER

PREFIX = WRAPPER + "."  # capture wraps the model: its weights are named ``denoiser.<model name>``


def _model_name(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def _check(state_dict: dict, held: dict[str, torch.Tensor]) -> None:
    unknown = sorted(k for k in state_dict if k not in held)
    if unknown:
        raise ShapeError(f"load_weights: {len(unknown)} names are not weights of this program (e.g. {unknown[:3]}); "
                         f"it holds names such as {sorted(held)[:3]}, as in the model's state_dict")
    for k, v in state_dict.items():
        t = held[k]
        if tuple(v.shape) != tuple(t.shape) or v.dtype != t.dtype:
            raise ShapeError(f"load_weights: {k} is {tuple(v.shape)} {v.dtype}; this program was compiled with "
                             f"{tuple(t.shape)} {t.dtype} (other shapes need another compile)")


def _held(runtime) -> dict[str, torch.Tensor] | None:
    """The tensors the runtime computes with, by the model's names (None: the backend holds its own)."""
    shared = [getattr(run, "user_weights", None) for run in runtime.variants.values()]
    if shared and all(w is not None for w in shared):  # AOTInductor: the packages' user-managed constants
        return {_model_name(n): t for w in shared for n, t in w.items()}
    segments = list(runtime.program.segments.values())
    if all(seg.module is not None for seg in segments):
        return {_model_name(n): t for seg in segments for n, t in seg.parameters().items()}
    return None


def load_weights(runtime, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace weights of ``runtime``'s program by ``state_dict``'s (a subset is fine)."""
    held = _held(runtime)
    if held is None:
        raise BackendError(f"load_weights works on eager, inductor and aotinductor runtimes; the "
                           f"{runtime.backend.name} backend runs lowered files that hold their weights "
                           "(compile again for new weights)")
    _check(state_dict, held)
    with torch.no_grad():
        for k, v in state_dict.items():
            held[k].copy_(v)
