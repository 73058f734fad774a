"""Give each variant its own copy of a weightless segment whose outputs it reads only in part.

Segments are shared by the variants that run them, so that a weight is lowered once. A glue
segment, though, computes what *every* variant running it needs: before a block's attention it
makes the attention's modulated input (layer norm, shift, scale) and the residual stream. A
cached step that reuses the attention still runs that segment for the residual stream, and so
computes the modulated input for nobody. Backends that fuse a whole variant into one graph
(eager, Inductor, AOTInductor) eliminate such dead values themselves; backends that run segment
by segment (ONNX Runtime, TensorRT) cannot: on FLUX.1-dev at 1024² (bf16) a FORA cached step
wrote 2.12 GB of such dead outputs, each computed from reads of the stream.

This pass walks each variant backwards with the set of values still needed (the variant's
outputs, its cache writes, what the host reads and what the variants after it in the same step
read) and replaces every segment run whose outputs are not all needed by a copy that computes
only the needed ones; a run none of whose outputs is needed is dropped. Only segments without
weights are copied (glue holds norms without affine parameters, modulation and residual adds),
so every weight is still owned by one segment and lowered once. Copies with the same outputs are
shared between variants.
"""

from __future__ import annotations

import copy

from cachec.flops import node_flops
from cachec.graph_keys import OUTPUTS_KEY
from cachec.passes.infra import check_built, eliminate_dead_code
from cachec.program import Load, Program, Run, Segment, Store


def _pruned(seg: Segment, keep: list[str], name: str) -> Segment:
    """A copy of ``seg`` that computes only the outputs ``keep``, with the inputs those need."""
    module = copy.deepcopy(seg.module)
    graph = module.graph
    out = next(n for n in graph.nodes if n.op == "output")
    by_name = dict(zip(seg.outputs, out.args[0], strict=True))
    out.args = (tuple(by_name[k] for k in keep),)
    eliminate_dead_code(graph)
    for node in [n for n in graph.nodes if n.op == "placeholder" and not n.users]:
        graph.erase_node(node)
    module.meta[OUTPUTS_KEY] = list(keep)
    module.recompile()
    check_built(module, f"pruned copy {name}")
    before = sum(node_flops(n) for n in seg.module.graph.nodes)
    after = sum(node_flops(n) for n in graph.nodes)
    return Segment(name, module, seg.flops * after / before if before else 0.0, seg.role)


def specialize_segments(program: Program) -> Program:
    """Prune, per variant, the weightless segments it runs to the outputs it needs; returns the same
    program, updated."""
    copies: dict[tuple[str, tuple[str, ...]], str] = {}
    for path, ops in program.variants.items():
        live = program.needed_after(path)
        rewritten: list = []
        for op in reversed(ops):
            if isinstance(op, Store):
                live.add(op.value)
            elif isinstance(op, Load):
                live.discard(op.value)
            elif isinstance(op, Run):
                seg = program.segments[op.segment]
                keep = [o for o in seg.outputs if o in live]
                if seg.module is not None and len(keep) < len(seg.outputs) and not seg.parameters():
                    if not keep:
                        continue  # nothing it makes is read: the run goes
                    key = (op.segment, tuple(keep))
                    if key not in copies:
                        name, n = f"{op.segment}~{path}", 1
                        while name in program.segments:  # the same segment pruned differently in one variant
                            n += 1
                            name = f"{op.segment}~{path}{n}"
                        copies[key] = name
                        program.segments[name] = _pruned(seg, keep, name)
                    op = Run(copies[key])
                    seg = program.segments[op.segment]
                live.difference_update(seg.outputs)
                live.update(seg.inputs)
            rewritten.append(op)
        program.variants[path] = rewritten[::-1]
    used = {op.segment for ops in program.variants.values() for op in ops if isinstance(op, Run)}
    for name in [n for n in program.segments if n not in used]:
        del program.segments[name]
    return program
