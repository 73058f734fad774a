"""Replay a compiled variant as a CUDA graph whose caches are the runtime's own buffers.

A CUDA graph reads and writes fixed addresses. The runtime's cache buffers already have fixed
addresses (allocated once per input shape, kept across trajectories: ``CacheRuntime.new_caches``),
so a graph is captured *over them*: the caches a variant reads are the graph's inputs in place,
and the caches it writes are copied into their buffers inside the graph. Outside the graph a step
then only copies the step's inputs into the graph's input buffers and clones the outputs it hands
on (the next replay overwrites them): a handful of copies, whatever the number of caches.

The first GPU report (docs/benchmarks.md, run 2) used a wrapper that copied every cache into a
static buffer before each replay and every written cache out of it afterwards. On DiT-XL/2
``fora:3`` that was 56 cache copies in and 57 clones plus 56 copies out of every full step — about
the 0.35 ms by which a full step (3.04 ms) exceeded ``none`` (2.69 ms), and 56 copies on each
cached step (1.18 ms).

A graph is keyed by its input shapes and the addresses of the caches it was captured over, so
each branch (sequential CFG's second call has caches of its own) gets a graph of its own and one
never writes into another's buffers. Calls whose caches are new tensors every time (per-sample
decisions gather the items' caches) would capture on every call; after
:attr:`CudaGraphRunner.MAX_CAPTURES` captures at one input shape the runner stops capturing
for that shape and runs the compiled function directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .eager import fused_runner


def cuda_capture(work: Callable[[], list], pool) -> tuple[Callable[[], None], list]:
    """Capture ``work()`` as a CUDA graph in ``pool``; returns the replay and the outputs ``work``
    returned (the graph rewrites them on every replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = work()
    return graph.replay, outputs


class CudaGraphRunner:
    """``run(env, caches) -> flops`` for a variant compiled into ``fn`` (inputs, then the caches it
    reads; outputs, then the caches it writes), replayed as a CUDA graph when its inputs are on
    ``device_type``; any other call runs ``fn`` directly (:func:`~cachec.backends.eager.fused_runner`).

    ``capture`` is :func:`cuda_capture`; tests on a CPU pass a stand-in with the same contract.
    """

    MAX_CAPTURES = 4  # per input shape: branches of one pipeline, not a new address every call

    def __init__(self, fn, inputs: list[str], cache_inputs: list[str], outputs: list[str], cache_outputs: list[str],
                 flops: float, *, pool=None, capture=cuda_capture, device_type: str = "cuda"):
        self.fn = fn
        self.inputs, self.cache_inputs = inputs, cache_inputs
        self.outputs, self.cache_outputs = outputs, cache_outputs
        self.flops = flops
        self.pool = pool
        self.capture = capture
        self.device_type = device_type
        self.direct = fused_runner(fn, inputs, cache_inputs, outputs, cache_outputs, flops)
        self.graphs: dict[tuple, tuple] = {}  # (shapes, cache addresses) -> (replay, static inputs, static outputs)
        self.captures: dict[tuple, int] = {}  # shapes -> graphs captured at them
        self.fused = None  # set by lower_path

    def __call__(self, env: dict, caches: dict) -> float:
        args = [env[n] for n in self.inputs]
        if not all(isinstance(a, torch.Tensor) and a.device.type == self.device_type for a in args):
            return self.direct(env, caches)
        shapes = tuple((a.shape, a.dtype, a.device) for a in args)
        entry = self.graphs.get((shapes, self._addresses(caches)))
        if entry is None:
            if self.captures.get(shapes, 0) >= self.MAX_CAPTURES:
                return self.direct(env, caches)  # caches at a new address every call: no graph pays off
            entry = self._capture(args, caches)
            self.captures[shapes] = self.captures.get(shapes, 0) + 1
            self.graphs[(shapes, self._addresses(caches))] = entry
        replay, static_in, static_out = entry
        for buf, a in zip(static_in, args, strict=True):
            buf.copy_(a)
        replay()
        env.update(zip(self.outputs, (o.clone() for o in static_out), strict=True))
        return self.flops

    def _addresses(self, caches: dict) -> tuple:
        return tuple(caches[c].data_ptr() if c in caches else None
                     for c in self.cache_inputs + self.cache_outputs)

    def _capture(self, args: list, caches: dict) -> tuple:
        """Warm up (Inductor compiles on the first call) on a side stream, give every written cache
        a buffer of its value's shape, then capture the variant over the cache buffers."""
        static_in = [a.clone() for a in args]
        n_out = len(self.outputs)
        warm = self._on_side_stream(lambda: [self.fn(*static_in, *[caches[c] for c in self.cache_inputs])
                                             for _ in range(2)][-1])
        for cache, value in zip(self.cache_outputs, warm[n_out:], strict=True):
            buf = caches.get(cache)
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
                caches[cache] = torch.zeros_like(value)  # the address every later step writes to
        reads = [caches[c] for c in self.cache_inputs]
        writes = [caches[c] for c in self.cache_outputs]

        def work():
            results = self.fn(*static_in, *reads)
            for buf, value in zip(writes, results[n_out:], strict=True):
                buf.copy_(value)
            return list(results[:n_out])

        replay, static_out = self.capture(work, self.pool)
        return replay, static_in, static_out

    def _on_side_stream(self, work: Callable[[], list]) -> list:
        if self.device_type != "cuda":
            return work()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = work()
        torch.cuda.current_stream().wait_stream(side)
        return result
