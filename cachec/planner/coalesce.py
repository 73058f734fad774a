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

from cachec.graph_keys import OUTPUTS_KEY
from cachec.program import Op, Program, Run, Segment, Store

from .fuse import fuse_variant


class _Neighbours:
    """For every segment, the ops right before and right after each of its runs, in every variant.

    Read once, so that "do ``a`` and ``b`` always run back to back" costs a lookup instead of a
    scan of every variant per pair (quadratic in the depth).
    """

    def __init__(self, variants: dict[str, list[Op]]):
        self.before: dict[str, set[Op | None]] = {}
        self.after: dict[str, set[Op | None]] = {}
        for ops in variants.values():
            for i, op in enumerate(ops):
                if isinstance(op, Run):
                    self.before.setdefault(op.segment, set()).add(ops[i - 1] if i > 0 else None)
                    self.after.setdefault(op.segment, set()).add(ops[i + 1] if i + 1 < len(ops) else None)

    def always_adjacent(self, a: str, b: str) -> bool:
        """``a`` runs somewhere, every run of ``a`` is followed by ``b``'s and every run of ``b`` follows ``a``'s."""
        return self.after.get(a) == {Run(b)} and self.before.get(b) == {Run(a)}


class _Readers:
    """Which run segments read each value, kept up to date as chains are merged.

    A chain's fused graph must return what any op outside it reads (besides the program's output,
    what the host reads and what is stored in a cache); asking this instead of rescanning every
    variant per chain keeps coalescing linear in the depth.
    """

    def __init__(self, program: Program):
        self.always = {program.output} | program.host_reads()
        self.always.update(op.value for ops in program.variants.values() for op in ops if isinstance(op, Store))
        self.inputs: dict[str, list[str]] = {}
        self.readers: dict[str, set[str]] = {}
        for ops in program.variants.values():
            for op in ops:
                if isinstance(op, Run) and op.segment not in self.inputs:
                    self.add(op.segment, program.segments[op.segment].inputs)

    def add(self, segment: str, inputs: list[str]) -> None:
        self.inputs[segment] = inputs
        for v in inputs:
            self.readers.setdefault(v, set()).add(segment)

    def remove(self, segment: str) -> None:
        for v in self.inputs.pop(segment):
            self.readers[v].discard(segment)

    def needed(self, values, exclude: set[str]) -> set[str]:
        """Those of ``values`` read by an op outside the segments ``exclude`` (or always needed)."""
        return {v for v in values if v in self.always or self.readers.get(v, set()) - exclude}


def _chains(program: Program) -> list[list[str]]:
    """Maximal runs of segments each always followed by the next (a run of length ≥ 2 is merged).

    Merging ``a, b`` never creates a new always-adjacent pair: ``ab`` stands exactly where ``b``
    stood, so ``(ab, c)`` is always adjacent iff ``(b, c)`` was. One pass over the pairs therefore
    finds what merging pair by pair until nothing changes would find.
    """
    neighbours = _Neighbours(program.variants)
    follows: dict[str, str] = {}
    for ops in program.variants.values():
        for op, nxt in zip(ops, ops[1:], strict=False):
            if isinstance(op, Run) and isinstance(nxt, Run) and op.segment not in follows \
                    and neighbours.always_adjacent(op.segment, nxt.segment):
                follows[op.segment] = nxt.segment
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
    quadratic in the depth (FLUX.1-dev's 57 blocks took minutes). Chains are disjoint, so the
    variants are rewritten once, for all chains together.
    """
    readers = _Readers(program)
    renamed: dict[str, str] = {}  # a chain's first segment -> the merged segment
    merged_away: set[str] = set()  # the chain's other segments
    for chain in _chains(program):
        segs = [program.segments[name] for name in chain]
        touched = {v for s in segs for v in s.inputs + s.outputs}
        fused = fuse_variant(program.segments, [Run(name) for name in chain], readers.needed(touched, set(chain)))
        module = fused.module
        # name the inputs and outputs by value, as every segment does
        for node in module.graph.nodes:
            if node.op == "placeholder":
                node.name = node.target = node.name.removeprefix("in__")
        module.recompile()
        module.meta[OUTPUTS_KEY] = fused.outputs  # fuse_variant built (and linted) it
        name = f"{chain[0].split('-')[0]}-{chain[-1].split('-')[-1]}"
        roles = {s.role for s in segs}
        merged = Segment(name, module, sum(s.flops for s in segs), roles.pop() if len(roles) == 1 else "merged")
        for s in chain:
            del program.segments[s]
            readers.remove(s)
        program.segments[name] = merged
        readers.add(name, merged.inputs)
        renamed[chain[0]] = name
        merged_away.update(chain[1:])
    for key, variant in program.variants.items():
        program.variants[key] = [Run(renamed[o.segment]) if isinstance(o, Run) and o.segment in renamed else o
                                 for o in variant if not (isinstance(o, Run) and o.segment in merged_away)]
    return program
