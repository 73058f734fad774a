"""CUDA-graph replay over the runtime's cache buffers, checked on the CPU by counting.

A CUDA graph cannot be captured on a CPU, but its contract can be kept: capturing runs nothing
(the output shapes come from fake tensors), and a replay runs the recorded work on fixed buffers
and leaves its outputs at fixed addresses. :func:`recording_capture` keeps that contract and hides
a replay's ops from the counter (on a GPU a replay is one launch), so what a step dispatches
*outside* its graph is what the counter sees. The reference for every output is the eager
runtime of the same program, which shares the fused graphs but no graph bookkeeping.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import _disable_current_modes

import cachec
from cachec.backends.cuda_graphs import CudaGraphRunner
from cachec.backends.eager import lower_path
from cachec.dispatch_count import count
from cachec.models import resolve

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 6


def recording_capture(work, pool):
    with FakeTensorMode(allow_non_fake_inputs=True):
        shapes = [(t.shape, t.dtype) for t in work()]  # runs nothing: a capture only records
    outputs = [torch.empty(shape, dtype=dtype) for shape, dtype in shapes]

    def replay():
        with _disable_current_modes():
            for buf, value in zip(outputs, work(), strict=True):
                buf.copy_(value)

    return replay, outputs


def graph_runner(*args):
    return CudaGraphRunner(*args, capture=recording_capture, device_type="cpu")


@pytest.fixture(scope="module")
def tiny():
    return resolve("builtin:tiny-dit")


def runtimes(tiny, policy, batch=2):
    kw = tiny.example_inputs(batch=batch)
    eager = cachec.compile(tiny.model, kw, policy, num_steps=STEPS)
    graphs = cachec.compile(tiny.model, kw, policy, num_steps=STEPS)
    graphs.variants = {path: lower_path(graphs.program, path, runner=graph_runner) for path in graphs.program.variants}
    return kw, eager, graphs


def step_inputs(kw, i):
    return {**kw, "timestep": torch.full_like(kw["timestep"], 900 - 100 * i)}


@pytest.mark.parametrize("policy", ["fora:3", "teacache:0.3", "taylorseer:3,O=2"])
def test_graphs_equal_eager_and_copy_no_cache_outside_the_graph(tiny, policy):
    kw, eager, graphs = runtimes(tiny, policy)
    n_caches = len(graphs.program.caches())  # fora, taylorseer: per block (6); teacache: the step's residual
    captured_after_first = None
    for trajectory in range(2):
        eager.reset()
        graphs.reset()
        for i in range(STEPS):
            ref = eager(**step_inputs(kw, i)).sample
            out, counter = count(graphs, **step_inputs(kw, i))
            torch.testing.assert_close(out.sample, ref, rtol=0, atol=0)
            for name, buf in graphs.caches.items():  # the caches carry the same state
                torch.testing.assert_close(buf, eager.caches[name], rtol=0, atol=0)
            if trajectory == 1:
                ran = [graphs.variants[v] for v in _variants_run(graphs, i)]
                copies = counter.by_op["aten.copy_"] + counter.by_op["aten.clone"]
                # each variant: its step inputs in, its outputs out; no cache crosses the graph's edge
                assert copies == sum(len(r.inputs) + len(r.outputs) for r in ran), counter.by_op
                if not policy.startswith("teacache"):  # per-block caches: far more than a step's inputs
                    assert copies < n_caches
        captures = sum(sum(r.captures.values()) for r in graphs.variants.values())
        if trajectory == 0:
            captured_after_first = captures
    assert captures == captured_after_first  # a served model captures once, on its first trajectory
    assert graphs.stats.schedule == eager.stats.schedule


def _variants_run(runtime, step):
    letter = runtime.stats.schedule[step]
    if "head" in runtime.variants:  # dynamic: the probe head, then the tail it chose
        return ["head", "tail_full" if letter == "F" else "tail_reuse"]
    return ["full" if letter == "F" else "reuse"]


def test_each_branch_replays_its_own_graph_over_its_own_caches(tiny):
    """Sequential CFG: two calls a step, two branches with caches of their own. A graph captured
    over one branch's buffers must never write into the other's."""
    kw, eager, graphs = runtimes(tiny, "fora:2")
    uncond = {**kw, "class_labels": torch.full_like(kw["class_labels"], tiny.model.config.num_embeds_ada_norm)}  # the null class
    for rt in (eager, graphs):
        rt.reset()
    for i in range(STEPS):
        for inputs in (kw, uncond):
            ref = eager(**step_inputs(inputs, i)).sample
            torch.testing.assert_close(graphs(**step_inputs(inputs, i)).sample, ref, rtol=0, atol=0)
    assert set(graphs.branches) == {"default", "call1"}
    full = graphs.variants["full"]
    assert sum(full.captures.values()) == 2 and len(full.graphs) == 2


def test_caches_at_a_new_address_every_call_stop_capturing_and_still_agree(tiny):
    """Per-sample decisions gather the deciding items' caches into new tensors on every call: the
    runner gives up on graphs for that shape after a few captures and runs the variant directly."""
    kw, eager, graphs = runtimes(tiny, "fbcache:0.2,per_sample=1", batch=4)
    kw["hidden_states"][2:] *= 3  # items that decide differently
    for rt in (eager, graphs):
        rt.reset()
    for i in range(STEPS):
        ref = eager(**step_inputs(kw, i)).sample
        torch.testing.assert_close(graphs(**step_inputs(kw, i)).sample, ref, rtol=0, atol=0)
    assert all(n <= CudaGraphRunner.MAX_CAPTURES for r in graphs.variants.values() for n in r.captures.values())


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["delta:2", "blockcache:2", "easycache:5,warmup=2,final=0", "dbcache:1,B=1,t=0.5,W=1", "pab:2,2,2",
                                    "fastercache:2", "tgate:6,sa=2", "budget:3"])
def test_every_kind_of_variant_replays_as_eager_runs_it(tiny, policy):
    """Per-block chains (blockcache: a probe reads a cache that the block's own write then refreshes),
    attention-only reuse, dynamic heads and tails, forecast budgets: each replayed graph equals eager at
    every step, over two trajectories, and no graph is captured after the first."""
    kw, eager, graphs = runtimes(tiny, policy)
    for trajectory in range(2):
        eager.reset()
        graphs.reset()
        x = kw["hidden_states"]
        for i in range(STEPS):
            step = {**step_inputs(kw, i), "hidden_states": x}
            ref = eager(**step).sample
            torch.testing.assert_close(graphs(**step).sample, ref, rtol=0, atol=0)
            x = x - 0.2 * ref[:, : x.shape[1]]  # a sampler's update: EasyCache measures the input's change
        if trajectory == 0:
            first = sum(sum(r.captures.values()) for r in graphs.variants.values())
    assert sum(sum(r.captures.values()) for r in graphs.variants.values()) == first
    assert graphs.stats.schedule == eager.stats.schedule and graphs.stats.schedule != "F" * STEPS
