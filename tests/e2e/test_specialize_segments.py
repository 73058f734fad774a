"""Segment backends (ONNX Runtime, TensorRT) run no weightless segment for values nobody reads.

``cachec/planner/specialize.py`` gives a variant its own copy of a shared glue segment whose
outputs it reads only in part. Checked here by an independent backwards walk over every variant:
a weightless segment's every output is read by a later op of the variant, stored, read on the
host, handed to a following variant, or is the model's output. ONNX Runtime running the
specialised segments agrees with eager in ``tests/e2e/test_backends.py``.
"""

from __future__ import annotations

import pytest
from small_models import TEXT_TOKENS, make

import cachec
from cachec.models import example_inputs
from cachec.program import Run, Store

pytestmark = pytest.mark.usefixtures("one_thread")


def dead_outputs(program) -> list[tuple[str, str, list[str]]]:
    """(variant, segment, outputs nobody reads) for every weightless segment run."""
    found = []
    for path, ops in program.variants.items():
        read = {program.output} | program.host_reads()
        for follower in program.followers(path):
            read |= {v for op in program.variants[follower] if isinstance(op, Run)
                     for v in program.segments[op.segment].inputs}
        for i, op in enumerate(ops):
            if not isinstance(op, Run) or program.segments[op.segment].parameters():
                continue
            later = set(read)
            for nxt in ops[i + 1:]:
                if isinstance(nxt, Run):
                    later |= set(program.segments[nxt.segment].inputs)
                elif isinstance(nxt, Store):
                    later.add(nxt.value)
            unread = [o for o in program.segments[op.segment].outputs if o not in later]
            if unread:
                found.append((path, op.segment, unread))
    return found


@pytest.mark.parametrize("name", ["dit", "pixart", "flux", "sd3", "wan"])
@pytest.mark.parametrize("policy", ["fora:3"] + [pytest.param(p, marks=pytest.mark.slow)
                                                  for p in ("teacache:0.3", "taylorseer:3,O=2", "blockcache:2")])
def test_no_weightless_segment_computes_what_its_variant_does_not_read(name, policy):
    model = make(name)
    program = cachec.compile(model, example_inputs(model, 2, 0, text_tokens=TEXT_TOKENS), policy).program
    assert dead_outputs(program) == []
    if policy == "fora:3":  # a cached step skips attention and MLP: their glue inputs are pruned
        assert any("~reuse" in op.segment for op in program.variants["reuse"] if isinstance(op, Run))
