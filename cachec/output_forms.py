"""The output's form: one tensor, or a sequence of per-sample tensors returned whole.

A captured program has one output value (a tensor); most denoisers return one. Some return their
prediction as a list of per-sample tensors (``ZImageTransformer2DModel`` returns ``([x_0, x_1,
...],)``). Taking the first leaf of such an output silently kept sample 0 only; instead capture
stacks a sequence of same-shape tensors into one tensor (so it is still one value, whose shape is
the latent's) and records the form, and the runtime hands the same form back: a list (or tuple)
of every sample. Any other output structure (a dict, tensors of different shapes, no tensor at
all) is refused at capture with what cachec accepts, never cut down to one leaf.
"""

from __future__ import annotations

import torch

from .errors import ModelError

TENSOR, LIST, TUPLE = "tensor", "list", "tuple"
FORMS = (TENSOR, LIST, TUPLE)


def as_one_tensor(first, model_class: str) -> tuple[torch.Tensor, str]:
    """The model's first output as one tensor, and the form to hand it back in."""
    if isinstance(first, torch.Tensor):
        return first, TENSOR
    if isinstance(first, (list, tuple)) and first and all(isinstance(t, torch.Tensor) for t in first):
        shapes = {(tuple(t.shape), t.dtype) for t in first}
        if len(shapes) == 1:
            return torch.stack(list(first)), LIST if isinstance(first, list) else TUPLE
        raise ModelError(
            f"{model_class} returns a {type(first).__name__} of {len(first)} tensors of different shapes or dtypes "
            f"({', '.join(sorted({str(tuple(t.shape)) for t in first}))}); cachec serves a denoiser whose output is "
            "one tensor or a list of per-sample tensors of one shape (give example inputs whose samples share a "
            "shape)")
    raise ModelError(
        f"{model_class} returns {_describe(first)} as its output; cachec serves a denoiser whose output (its "
        "first, with return_dict=False) is one tensor or a list of per-sample tensors of one shape, and returns "
        "it whole")


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"a dict ({', '.join(map(str, value))})"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items, not all tensors"
    return f"a {type(value).__name__}"


def restore(out: torch.Tensor, form: str | None):
    """The runtime's output in the form the model returns (``form`` from capture; None: a tensor)."""
    if form == LIST:
        return list(out.unbind(0))
    if form == TUPLE:
        return tuple(out.unbind(0))
    return out
