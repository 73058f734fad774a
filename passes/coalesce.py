"""Coalesce segments that always run back to back into one segment.

A segment boundary is only useful where some variant of the program diverges: where one path
skips, replaces or probes a segment that another runs. Where two segments run one right after
the other in *every* path that runs either (no load or store between them), they are merged
with :func:`~cachec.passes.fuse_path.fuse_path`. A step-level policy then lowers its whole
block stack as one engine, and a module-level one keeps just the boundaries around each
attention and MLP: fewer engines, fewer launches, and no per-engine overhead on the artifact.
Weights stay owned by exactly one segment, since merging never copies a segment.
"""

from __future__ import annotations

from cachec.program import Program, Segment

from .fuse_path import fuse_path


def _always_adjacent(paths: dict[str, list[tuple]], a: str, b: str) -> bool:
    seen = False
    for ops in paths.values():
        for i, op in enumerate(ops):
            if op == ("run", a):
                seen = True
                if i + 1 >= len(ops) or ops[i + 1] != ("run", b):
                    return False
            if op == ("run", b) and (i == 0 or ops[i - 1] != ("run", a)):
                return False
    return seen


def _needed(program: Program, exclude: set[str]) -> set[str]:
    """Values read by any op outside ``exclude`` (and the program's output and probe signal)."""
    keep = {program.output}
    keep.update(program.host_reads())
    for ops in program.paths.values():
        for op in ops:
            if op[0] == "run" and op[1] not in exclude:
                keep.update(program.segments[op[1]].inputs)
            elif op[0] == "store":
                keep.add(op[1])
    return keep


def coalesce(program: Program) -> Program:
    """Merge always-adjacent segment pairs until none is left; returns the same program, updated."""
    changed = True
    while changed:
        changed = False
        for ops in list(program.paths.values()):
            for op, nxt in zip(ops, ops[1:], strict=False):
                if op[0] != "run" or nxt[0] != "run" or not _always_adjacent(program.paths, op[1], nxt[1]):
                    continue
                a, b = program.segments[op[1]], program.segments[nxt[1]]
                fused = fuse_path(program.segments, [op, nxt], _needed(program, {a.name, b.name}))
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
                for key, path in program.paths.items():
                    new = []
                    for o in path:
                        if o == ("run", a.name):
                            new.append(("run", name))
                        elif o != ("run", b.name):
                            new.append(o)
                    program.paths[key] = new
                changed = True
                break
            if changed:
                break
    return program
