"""Batch-invariant kernels for tests: every matrix product and convolution one row / one item at a time.

Why: the uncached diffusers models are not batch-invariant on a CPU. MKL computes a one-row
product with a GEMV kernel and a many-row one with GEMM, and oneDNN picks a convolution algorithm
per batch size, so item ``i`` of a batch of 4 differs from the same item run alone in the last bit
(~2e-7 on the small models), with no cache involved. A claim "each item equals that item run alone,
bit for bit" can therefore only be tested with kernels whose result for a row does not depend on
the other rows. :class:`BatchInvariant` is such a dispatch mode: it splits ``mm``/``addmm``/``bmm``
by rows and ``convolution`` by batch items and concatenates the results, so any difference left is
the cache machinery's.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class BatchInvariant(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet is aten.mm and args[0].shape[0] > 1:
            a, b = args
            return torch.cat([func(a[r:r + 1], b) for r in range(a.shape[0])])
        if packet is aten.addmm and args[1].shape[0] > 1:
            bias, a, b = args[:3]
            rows = [func(bias if bias.dim() < 2 or bias.shape[0] == 1 else bias[r:r + 1], a[r:r + 1], b, *args[3:],
                         **kwargs) for r in range(a.shape[0])]
            return torch.cat(rows)
        if packet is aten.bmm and args[0].shape[0] > 1:
            a, b = args
            return torch.cat([func(a[r:r + 1], b[r:r + 1]) for r in range(a.shape[0])])
        if packet is aten.convolution and args[0].shape[0] > 1:
            x, rest = args[0], args[1:]
            return torch.cat([func(x[i:i + 1], *rest, **kwargs) for i in range(x.shape[0])])
        returns = func._schema.returns
        if torch.Tag.pointwise in func.tags and not func._schema.is_mutable and len(returns) == 1 \
                and str(returns[0].type) == "Tensor":
            return _pointwise(func, args, kwargs)
        return func(*args, **kwargs)


CHUNK = 256  # a multiple of twice the widest SIMD vector (AVX-512: 16 floats)


def _pointwise(func, args, kwargs):
    """``func`` on operands broadcast to the output shape, flattened and padded to a multiple of
    :data:`CHUNK`: ATen's vectorised loops take chunks of two SIMD vectors and finish the remainder
    with scalar code (other rounding in ``exp``, ``silu``, ...), so without the padding the same
    element would take the vector path in a batch of 4 and the scalar one alone."""
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0]
    if not tensors or not all(t.is_floating_point() for t in tensors):
        return func(*args, **kwargs)
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    numel = shape.numel()
    pad = (-numel) % CHUNK

    def flat(a):
        if not isinstance(a, torch.Tensor) or a.dim() == 0:
            return a
        v = a.expand(shape).contiguous().view(-1)
        return torch.cat([v, v.new_ones(pad)]) if pad else v

    out = func(*(flat(a) for a in args), **kwargs)
    return out[:numel].view(shape)
