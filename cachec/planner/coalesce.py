"""Coalesce segments that always run back to back into one segment.

A segment boundary is only useful where some variant of the program diverges: where one variant
skips, replaces or probes a segment that another runs. Where two segments run one right after
the other in *every* variant that runs either (no load or store between them), they are merged
with :func:`~cachec.planner.fuse.fuse_variant`. A step-level policy then lowers its whole
block stack as one engine, and a module-level one keeps just the boundaries around each
attention and MLP: fewer engines, fewer launches, and no per-engine overhead on the artifact.
Weights stay owned by exactly one segment, since merging never copies a segment.
"""

from __future__ import annotations

from cachec.program import Op, Program, Run, Segment, Store

from .fuse import fuse_variant


def _always_adjacent(variants: dict[str, list[Op]], a: str, b: str) -> bool:
    seen = False
    for ops in variants.values():
        for i, op in enumerate(ops):
            if op == Run(a):
                seen = True
                if i + 1 >= len(ops) or ops[i + 1] != Run(b):
                    return False
            if op == Run(b) and (i == 0 or ops[i - 1] != Run(a)):
                return False
    return seen


def _needed(program: Program, exclude: set[str]) -> set[str]:
    """Values read by any op outside ``exclude`` (and the program's output and probe signal)."""
    keep = {program.output}
    keep.update(program.host_reads())
    for ops in program.variants.values():
        for op in ops:
            if isinstance(op, Run) and op.segment not in exclude:
                keep.update(program.segments[op.segment].inputs)
            elif isinstance(op, Store):
                keep.add(op.value)
    return keep


def coalesce(program: Program) -> Program:
    """Merge always-adjacent segment pairs until none is left; returns the same program, updated."""
    changed = True
    while changed:
        changed = False
        for ops in list(program.variants.values()):
            for op, nxt in zip(ops, ops[1:], strict=False):
                if not (isinstance(op, Run) and isinstance(nxt, Run)) or not _always_adjacent(
                        program.variants, op.segment, nxt.segment):
                    continue
                a, b = program.segments[op.segment], program.segments[nxt.segment]
                fused = fuse_variant(program.segments, [op, nxt], _needed(program, {a.name, b.name}))
                module = fused.module
                # name the inputs and outputs by value, as every segment does
                for node in module.graph.nodes:
                    if node.op == "placeholder":
                        node.name = node.target = node.name.removeprefix("in__")
                module.recompile()
                module.meta["cachec_output_names"] = fused.outputs
                name = f"{a.name.split('-')[0]}-{b.name.split('-')[-1]}"
                merged = Segment(name, module, a.flops + b.flops, a.role if a.role == b.role else "merged")
                del program.segments[a.name], program.segments[b.name]
                program.segments[name] = merged
                for key, variant in program.variants.items():
                    new = []
                    for o in variant:
                        if o == Run(a.name):
                            new.append(Run(name))
                        elif o != Run(b.name):
                            new.append(o)
                    program.variants[key] = new
                changed = True
                break
            if changed:
                break
    return program
