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


def _chains(program: Program) -> list[list[str]]:
    """Maximal runs of segments each always followed by the next (a run of length ≥ 2 is merged).

    Merging ``a, b`` never creates a new always-adjacent pair: ``ab`` stands exactly where ``b``
    stood, so ``(ab, c)`` is always adjacent iff ``(b, c)`` was. One pass over the pairs therefore
    finds what merging pair by pair until nothing changes would find.
    """
    follows: dict[str, str] = {}
    for ops in program.paths.values():
        for op, nxt in zip(ops, ops[1:], strict=False):
            if op[0] == "run" and nxt[0] == "run" and op[1] not in follows \
                    and _always_adjacent(program.paths, op[1], nxt[1]):
                follows[op[1]] = nxt[1]
    heads = [s for s in follows if s not in follows.values()]
    chains = []
    for head in heads:
        chain = [head]
        while chain[-1] in follows:
            chain.append(follows[chain[-1]])
        chains.append(chain)
    return chains


def coalesce(program: Program) -> Program:
    """Merge every chain of always-adjacent segments into one segment; returns the same program, updated.

    Each chain is fused once: fusing pair by pair would copy the growing graph once per segment,
    quadratic in the depth (FLUX.1-dev's 57 blocks took minutes).
    """
    for chain in _chains(program):
        segs = [program.segments[name] for name in chain]
        fused = fuse_path(program.segments, [("run", name) for name in chain], _needed(program, set(chain)))
        module = fused.module
        # name the inputs and outputs by value, as every segment does
        for node in module.graph.nodes:
            if node.op == "placeholder":
                node.name = node.target = node.name.removeprefix("in__")
        module.recompile()
        module.meta["cachec_output_names"] = fused.outputs
        name = f"{chain[0].split('-')[0]}-{chain[-1].split('-')[-1]}"
        roles = {s.role for s in segs}
        merged = Segment(name, module, sum(s.flops for s in segs), roles.pop() if len(roles) == 1 else "merged")
        for s in chain:
            del program.segments[s]
        program.segments[name] = merged
        inside = set(chain[1:])
        for key, path in program.paths.items():
            program.paths[key] = [("run", name) if o == ("run", chain[0]) else o for o in path
                                  if not (o[0] == "run" and o[1] in inside)]
    return program
