"""A hand-built toy denoiser graph, as export would give it, for unit tests of the passes, the split
into segments and the planner's primitives without exporting a model (milliseconds instead of
seconds).

In aten ops, with the module paths export records::

    proj_in:        h0  = x + 1                      (stream, before the blocks: prologue)
    t_embedder:     e   = t * 2                      (conditioning: written after h0, hoisted first)
    blocks.i.norm:  n_i = h_i * e                    (glue before the attention: b{i}_g0)
    blocks.i.attn:  a_i = n_i @ w_i                  (the region: b{i}_attn, owns weight w_i)
    blocks.i:       h_{i+1} = h_i + a_i              (glue after the attention: b{i}_g1)
    proj_out:       out = h_2 * 0.5                  (epilogue)
"""

import torch
from torch import fx

from cachec.passes import AssignSegments, HoistConditioning, PassManager
from cachec.program import Load, Run, Segment, Store
from cachec.regions import Region

aten = torch.ops.aten
ORDER = ["prologue", "b0_g0", "b0_attn", "b0_g1", "b1_g0", "b1_attn", "b1_g1", "epilogue"]


def op(g: fx.Graph, name: str, target, args, *path: str) -> fx.Node:
    """A call node named ``name``, with the module path export would record (``nn_module_stack``:
    fqn and class, outermost first)."""
    node = g.create_node("call_function", target, args, name=name)
    if path:
        node.meta["nn_module_stack"] = {p: (p, "Module") for p in path}
    return node


def toy_denoiser(weights=None) -> fx.GraphModule:
    torch.manual_seed(0)
    root = torch.nn.Module()
    for i, w in enumerate(weights or [torch.randn(4, 4), torch.randn(4, 4)]):
        root.register_buffer(f"w{i}", w)
    g = fx.Graph()
    x, t = g.placeholder("x"), g.placeholder("t")
    h = op(g, "h0", aten.add.Tensor, (x, 1), "proj_in")
    e = op(g, "e", aten.mul.Tensor, (t, 2), "t_embedder")
    for i in range(2):
        w = g.get_attr(f"w{i}")
        n = op(g, f"n{i}", aten.mul.Tensor, (h, e), f"blocks.{i}", f"blocks.{i}.norm")
        a = op(g, f"a{i}", aten.mm.default, (n, w), f"blocks.{i}", f"blocks.{i}.attn")
        h = op(g, f"h{i + 1}", aten.add.Tensor, (h, a), f"blocks.{i}")
    out = op(g, "out", aten.mul.Tensor, (h, 0.5), "proj_out")
    g.output((out,))
    return fx.GraphModule(root, g)


def inputs():
    return {"x": torch.randn(3, 4), "t": torch.randn(3, 1)}


def attention_regions() -> dict[str, Region]:
    return {f"a{i}": Region("attn", f"blocks.{i}.attn", i, local="attn") for i in range(2)}


def segmented(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[str]]:
    assign = AssignSegments(["blocks.0", "blocks.1"], [], attention_regions())
    PassManager([HoistConditioning(["x"]), assign])(gm)
    return gm, assign.order


def run_segments(segments: dict[str, Segment], order: list[str], env: dict) -> dict:
    """Run segments in ``order`` on named values, as the runtime's full variant does."""
    return run_variant(segments, [Run(name) for name in order], env, {})


def run_variant(segments: dict[str, Segment], ops: list, env: dict, caches: dict) -> dict:
    """Run a variant's ops on named values: segments add their outputs, loads read ``caches``,
    stores write it (in place, as the runtime's cache buffers)."""
    env = dict(env)
    for o in ops:
        if isinstance(o, Run):
            seg = segments[o.segment]
            env.update(zip(seg.outputs, seg.module(*[env[i] for i in seg.inputs]), strict=True))
        elif isinstance(o, Load):
            env[o.value] = caches[o.cache]
        elif isinstance(o, Store):
            caches[o.cache] = env[o.value]
    return env
