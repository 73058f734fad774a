"""Run a variant on some items of a batch: gather their inputs and caches, scatter the results back.

Per-sample decisions (:class:`cachec.methods.base.PerSample`) run a step's full tail on the items
that recompute and its reuse tail on the others. The variants are the compiled ones, unchanged:
what makes them run on a sub-batch is that their batch dimension is dynamic. Which dimension of a
value is the batch one comes from the program's value specs (``"B"``), so nothing here knows a
model; values without one (a U-Net's 0-d timestep, RoPE tables) are shared by every item.

What comes back is the step's output (scattered into a whole-batch tensor) and every cache the
variant writes (``Store`` ops of the program, copied into the branch's own buffers in place, so
their addresses stay fixed); nothing else a tail computes is read after it.
"""

from __future__ import annotations

import torch

from .program import Load, Program, Run, Store


class ItemRunner:
    """Gathers, runs and scatters for one program; what each variant reads and writes is worked out
    once from its ops."""

    def __init__(self, program: Program):
        self.program = program
        self._io: dict[str, tuple[list[str], list[str], list[str]]] = {}

    def io(self, variant: str) -> tuple[list[str], list[str], list[str]]:
        """(values a variant reads from before it, caches it reads, caches it writes)."""
        if variant not in self._io:
            made: set[str] = set()
            reads, cache_reads, cache_writes = [], [], []
            for op in self.program.variants[variant]:
                if isinstance(op, Run):
                    seg = self.program.segments[op.segment]
                    reads.extend(n for n in seg.inputs if n not in made and n not in reads)
                    made.update(seg.outputs)
                elif isinstance(op, Load):
                    cache_reads.append(op.cache)
                    made.add(op.value)
                elif isinstance(op, Store):
                    cache_writes.append(op.cache)
            self._io[variant] = (reads, cache_reads, cache_writes)
        return self._io[variant]

    def batch_dim(self, name: str) -> int | None:
        spec = self.program.values.get(name)
        return spec.shape.index("B") if spec is not None and "B" in spec.shape else None

    def _take(self, name: str, value, index: torch.Tensor):
        dim = self.batch_dim(name)
        return value if dim is None or not isinstance(value, torch.Tensor) else value.index_select(dim, index)

    def run(self, run_variant, variant: str, env: dict, caches: dict, items: tuple[int, ...], batch: int):
        """Run ``run_variant(sub_env, sub_caches)`` on ``items`` of the batch; returns its result
        (the variant's FLOPs per sample) and the sub-batch environment (for host reads)."""
        reads, cache_reads, cache_writes = self.io(variant)
        device = env[self.program.inputs[0]].device
        index = item_index(items, device)
        # what the variant reads, and the program inputs (a backend sizes its outputs by the latent's
        # batch), on the items; other values of the step stay behind unless they have no batch
        # dimension (host-side step inputs, shared tables)
        taken = [n for n in dict.fromkeys([*self.program.inputs, *reads]) if n in env]
        sub_env = {n: v for n, v in env.items() if n not in taken and self.batch_dim(n) is None}
        sub_env.update({n: self._take(n, env[n], index) for n in taken})
        sub_caches = {c: self._take(c, caches[c], index) for c in dict.fromkeys(cache_reads + cache_writes)
                      if c in caches}
        flops = run_variant(sub_env, sub_caches)
        out = self.program.output
        if out not in env:  # the first item group of the step makes the whole-batch output
            shape = list(sub_env[out].shape)
            shape[self.batch_dim(out) or 0] = batch
            env[out] = sub_env[out].new_empty(shape)
        env[out].index_copy_(self.batch_dim(out) or 0, index, sub_env[out])
        for c in cache_writes:
            dim = self.batch_dim(c)
            if dim is None:
                caches[c] = sub_caches[c]  # batch-independent: every item wrote the same value
            else:
                caches[c].index_copy_(dim, index, sub_caches[c])
        return flops, sub_env


def item_index(items: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The item positions as a device tensor, without making the host wait for the device: on CUDA
    the list goes through pinned memory with a non-blocking copy (a pageable copy would block
    until the stream is idle, a host sync the decision does not need)."""
    index = torch.tensor(items, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)
