"""New weights of the same shapes into a compiled runtime, without compiling again.

The way one server serves many LoRAs: compile once (or load an artifact), then for each request's
LoRA hand the runtime the fused weights (``rt.load_weights(state_dict)``, names as in the model's
``state_dict``). Nothing is lowered again, so no variant compiles and no cache changes address.

* Eager and Inductor (the program's graphs hold the weights): each tensor is copied in place into
  the tensor the graphs read (Inductor's compiled code and CUDA graphs read the same storage).
* ONNX Runtime and TensorRT hold the weights inside their lowered files: refused, naming the
  backend. AOTInductor packages run on user-managed constants (``load_constants``), which would
  allow it, but that path is not written yet: refused too.

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


def load_weights(runtime, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace weights of ``runtime``'s program by ``state_dict``'s (a subset is fine)."""
    segments = list(runtime.program.segments.values())
    if all(seg.module is not None for seg in segments):
        held = {_model_name(n): t for seg in segments for n, t in seg.parameters().items()}
        _check(state_dict, held)
        with torch.no_grad():
            for k, v in state_dict.items():
                held[k].copy_(v)
        return
    raise BackendError(f"load_weights works on eager and inductor runtimes; the {runtime.backend.name} backend runs "
                       "lowered files that hold or manage their weights apart from a graph (compile again for new weights)")
