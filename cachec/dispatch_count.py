"""Count what a step would cost a GPU, on any device: dispatched ops and device→host syncs.

Kernel launches and host syncs are what separate a fast GPU step from a slow one once the
FLOPs are equal, and both can be counted on a CPU. A :class:`DispatchCounter` is a
``TorchDispatchMode``: every ATen op that reaches a kernel passes through it. Views (``view``,
``expand``, ``transpose``…, ``func.is_view``) launch nothing and are not counted, so in eager mode
the count approximates the kernels a GPU would launch. Syncs are the ops that hand a tensor's
value to Python: ``item``/``_local_scalar_dense`` (``float(t)``, ``bool(t)``, ``int(t)``),
``equal`` and ``is_nonzero``. A copy to the host (``.cpu()``, ``.tolist()``) is also a sync on a
GPU but looks like any other copy on a CPU; it is counted as one when its source is not on the
CPU.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SYNC_PACKETS = (aten._local_scalar_dense, aten.item, aten.equal, aten.is_nonzero)


class DispatchCounter(TorchDispatchMode):
    """Counts non-view ATen ops (``ops``) and device→host syncs (``syncs``) while active."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.by_op: Counter = Counter()
        self.sync_ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in SYNC_PACKETS:
            self.syncs += 1
            self.sync_ops[str(packet)] += 1
        elif packet in (aten._to_copy, aten.copy_) and _leaves_device(args, kwargs):
            self.syncs += 1
            self.sync_ops["to_host"] += 1
        if not func.is_view:
            self.ops += 1
            self.by_op[str(packet)] += 1
        return func(*args, **kwargs)


def _leaves_device(args, kwargs) -> bool:
    """A copy from a non-CPU tensor to the CPU (the host waits for it)."""
    src = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0] if args else None
    dst = kwargs.get("device")
    if isinstance(args[0], torch.Tensor) and len(args) > 1:  # copy_(dst, src)
        dst = args[0].device
    return isinstance(src, torch.Tensor) and src.device.type not in ("cpu", "meta") and \
        dst is not None and torch.device(dst).type == "cpu"


def count(fn, *args, **kwargs) -> tuple[object, DispatchCounter]:
    """Run ``fn(*args, **kwargs)`` under a counter; returns its result and the counter."""
    counter = DispatchCounter()
    with torch.no_grad(), counter:
        out = fn(*args, **kwargs)
    return out, counter
