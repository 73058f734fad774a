"""Which per-block inputs a reused step does not read: said in the log, never silent.

A ControlNet hands the denoiser one residual per block (FLUX ``controlnet_block_samples`` and
``controlnet_single_block_samples``, SD3 ``block_controlnet_hidden_states``); capture flattens each
list into inputs ``name__0``, ``name__1``… that change every step. Where a residual is added
decides what a reused step does with it:

* the add lies *outside* every cached region (``fora``'s attention/MLP reuse, ``taylorseer``'s
  forecasts): the reused step adds the *current* residual, exactly as the uncached model;
* the add lies *inside* a skipped region (``fbcache`` skips every block after the first,
  ``teacache`` every block; a per-block or ``delta`` policy skips a block range): the reused step
  does not read the residual at all — the cached output of the skipped blocks carries the residuals
  of the last full step, as it carries those blocks' own work. That is the method's approximation
  (the control signal of a reused step is the earlier step's), not a wrong input, but a user
  should know it. The add after the last skipped block lies after the cached region: it reads the
  current residual.

:func:`unread_on_reuse` reads this from the program's variants (which inputs each step path reads),
so it holds for any policy and any backend, graph-less ONNX/TensorRT programs included.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("cachec")

PER_BLOCK = re.compile(r"^(.+)__\d+$")  # a list input flattened by capture.flatten_inputs


def _reads(program, variant: str) -> set[str]:
    from .program import Run

    return {name for op in program.variants[variant] if isinstance(op, Run)
            for name in program.segments[op.segment].inputs if name in program.inputs}


def _paths(program) -> list[list[str]]:
    """Every chain of variants one step may run: a variant no other one hands on to, then its followers."""
    followed = {f for v in program.variants for f in program.followers(v)}
    paths = []

    def walk(path):
        nxt = [f for f in program.followers(path[-1]) if f in program.variants]
        if not nxt:
            paths.append(path)
        for f in nxt:
            walk(path + [f])

    for v in program.variants:
        if v not in followed:
            walk([v])
    return paths


def unread_on_reuse(program) -> dict[str, list[str]]:
    """``{step path: per-block inputs the full step reads and this path does not}``, e.g.
    ``{"head+tail_reuse": ["controlnet_block_samples__0"]}`` for FLUX with a ControlNet under fbcache."""
    per_block = [n for n in program.inputs if PER_BLOCK.match(n)]
    if not per_block or "full" not in program.variants:
        return {}
    full = _reads(program, "full")
    out = {}
    for path in _paths(program):
        reads = set().union(*(_reads(program, v) for v in path))
        unread = [n for n in per_block if n in full and n not in reads]
        if unread:
            out["+".join(path)] = unread
    return out


def say_unread_on_reuse(program) -> None:
    """Log which per-block inputs (ControlNet residuals) reused steps do not read: once per runtime."""
    unread = unread_on_reuse(program)
    if not unread:
        return
    names = sorted({n for names in unread.values() for n in names})
    log.warning("cachec: reused steps of %s skip the blocks that add the per-block inputs %s (a ControlNet's "
                "residuals, say): their cached output carries the residuals of the last full step; the other "
                "per-block inputs are added fresh (docs/controlnet_and_edit.md)",
                program.planned.policy, ", ".join(names))
