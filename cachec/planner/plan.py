"""What a method's plan returns: a :class:`Plan`, and the pure functions that edit op lists.

A method does not change the planner: :meth:`Method.plan <cachec.methods.base.Method.plan>`
starts from :meth:`Planner.new_plan <cachec.planner.Planner.new_plan>` (or a primitive that
returns one) and returns the Plan it built. The planner then turns that Plan into a
:class:`~cachec.program.Program`. Keeping everything a method decides in one value (and the
planner read-only) is what lets two methods be planned on one planner, and a new method be
read in one place: its variants, the segments it added, the values it made and what its
controller reads.

The op-list functions below (:func:`replace`, :func:`insert_after`, :func:`split_head`,
:func:`per_segment`) build new lists and change nothing they are given.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..program import Op, Run, Segment


@dataclass
class Plan:
    """A method's plan of a program.

    ``variants``: op lists by variant name (what the runtime runs). ``base``: the model's own
    segments, as the plan cut them (a split keeps the uncached model whole, so ``none_flops``
    counts both parts), and ``order`` their path. ``added``: segments the method made (cache
    writes and reads, probes, forecasts, token variants). ``examples``: example values of the
    values the plan made, over the planner's (a :class:`~collections.ChainMap`: writes stay in
    the plan). ``signal``: the probe value a dynamic method's controller reads. ``feedback``:
    scalars a variant hands back to the controller (EasyCache, per-block caching).
    ``step_inputs``: host-computed inputs of a step (forecast coefficients, CFG weights).
    ``meta``: what a method's controller reads from the program besides (token regions,
    variant chains).
    """

    variants: dict[str, list[Op]]
    base: dict[str, Segment]
    order: list[str]
    examples: ChainMap
    added: dict[str, Segment] = field(default_factory=dict)
    signal: str | None = None
    feedback: list[str] = field(default_factory=list)
    step_inputs: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def segment(self, name: str) -> Segment:
        """A segment of the plan: one the method added, else one of the model's own."""
        return self.added.get(name) or self.base[name]

    def add_step_input(self, name: str) -> None:
        if name not in self.step_inputs:
            self.step_inputs.append(name)


def replace(variant: list[Op], segs: list[str], ops: list[Op]) -> list[Op]:
    """``variant`` with its runs of ``segs`` replaced by ``ops`` (where the first of them was)."""
    out, done = [], False
    for op in variant:
        if isinstance(op, Run) and op.segment in segs:
            if not done:
                out.extend(ops)
                done = True
            continue
        out.append(op)
    return out


def insert_after(variant: list[Op], seg: str, ops: list[Op]) -> list[Op]:
    """``variant`` with ``ops`` after the run of ``seg``."""
    i = variant.index(Run(seg))
    return variant[: i + 1] + ops + variant[i + 1 :]


def split_head(variant: list[Op], head_segs: list[str]) -> tuple[list[Op], list[Op]]:
    """``variant`` split into the runs of ``head_segs`` (a dynamic step's head) and the rest."""
    head = [op for op in variant if op.segment in head_segs]
    tail = [op for op in variant if op.segment not in head_segs]
    return head, tail


def per_segment(variant: list[Op], names: list[str],
                rewrite: Callable[[Run], Mapping[str, list[Op]] | None]) -> dict[str, list[Op]]:
    """Variants ``names`` built from ``variant`` op by op: where ``rewrite(op)`` gives ops (one list
    per variant name) they replace the run in each variant; every other op is kept in all.

    The loop of every per-module method (FORA's store after / load instead, PAB's groups, a
    forecast per module, token variants), written once."""
    built: dict[str, list[Op]] = {n: [] for n in names}
    for op in variant:
        ops = rewrite(op) if isinstance(op, Run) else None
        for name, out in built.items():
            if ops is None:
                out.append(op)
            else:
                out.extend(ops[name])
    return built
