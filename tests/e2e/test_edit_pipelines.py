"""cachec inside ControlNet and edit pipelines (tiny, random weights: ``tests/tiny_pipelines.py``).

FLUX and SD3 ControlNet, FLUX Kontext, Qwen-Image-Edit, SD3 img2img and FLUX inpaint, each run
through ``cachec.enable``: ``none`` is bit-exact against the plain pipeline, and ``fora:3`` /
``fbcache:10`` (a threshold every later step is under: the schedule reuses) run their schedules
and equal the hook reference (``reference_hooks.py``); Qwen-Image's blocks have no hook reference,
so its full steps are compared with the uncached model on the same inputs.

A ControlNet's per-block residuals are inputs that change every step: before capture flattened
lists, they were baked into the graph as the first step's constants. Which residuals a reused step
reads is asserted from the program (``cachec.step_inputs``) and said once in the log.
"""

from __future__ import annotations

import logging

import pytest
import tiny_pipelines as tp
import torch
from reference_hooks import ReferenceDenoiser

import cachec
from cachec.step_inputs import unread_on_reuse

pytestmark = pytest.mark.slow  # whole diffusers pipelines (tests/README.md)

STEPS = 3
CACHED = {  # the cached policies each workflow runs here (fbcache:10 reuses every unforced step); both
    # on the ControlNets, whose residuals the two treat differently, one each on the edit pipelines
    "controlnet-flux": ("fora:3", "fbcache:10"),
    "controlnet-sd3": ("fora:3", "fbcache:10"),
    "kontext": ("fora:3",),
    "qwen-edit": ("fbcache:10",),
    "img2img-sd3": ("fbcache:10",),
    "inpaint-flux": ("fora:3",),
}
NO_HOOK_REFERENCE = {"qwen-edit"}  # reference_hooks knows no QwenImageTransformerBlock
# what a reused step does not read (the adds inside the skipped blocks; see docs/controlnet_and_edit.md)
UNREAD = {
    ("controlnet-flux", "fora:3"): {},
    ("controlnet-flux", "fbcache:10"): {"head+tail_reuse": ["controlnet_block_samples__0"]},
    ("controlnet-sd3", "fora:3"): {},
    ("controlnet-sd3", "fbcache:10"): {"head+tail_reuse": ["block_controlnet_hidden_states__0"]},
}


@pytest.fixture(scope="module", params=list(tp.WORKFLOWS))
def case(request):
    pipe, kw, field = tp.build(request.param)
    return request.param, pipe, kw, field, tp.run(pipe, kw, field, STEPS)


def _schedules(pipe) -> dict[str, str]:
    return {b: st.history[-1].schedule for b, st in pipe.transformer.current.branches.items()}


def test_none_is_bit_exact_and_only_the_denoiser_is_wrapped(case):
    name, pipe, kw, field, plain = case
    model, controlnet = pipe.transformer, getattr(pipe, "controlnet", None)
    cachec.enable(pipe, "none")
    try:
        out = tp.run(pipe, kw, field, STEPS)
        assert all(s == "F" * STEPS for s in _schedules(pipe).values())
        assert pipe.transformer.model is model
        # the ControlNet runs every step, deliberately unwrapped: its residuals are the denoiser's inputs
        assert getattr(pipe, "controlnet", None) is controlnet
        program = pipe.transformer.current.program
        if controlnet is not None:
            assert any(n.endswith("__0") for n in program.inputs), program.inputs  # residuals are inputs
    finally:
        cachec.disable(pipe)
    assert pipe.transformer is model
    torch.testing.assert_close(out, plain, atol=0, rtol=0)


def _reference(pipe, kw, field, policy):
    model = pipe.transformer
    pipe.transformer = ReferenceDenoiser(model, policy, STEPS)
    try:
        return tp.run(pipe, kw, field, STEPS), {b: s["schedule"] for b, s in pipe.transformer.states.items()}
    finally:
        pipe.transformer.ref.close()
        pipe.transformer = model


def _recorded(denoiser):
    """Wrap ``denoiser.forward`` to record each call's inputs and output."""
    calls, forward = [], denoiser.forward

    def record(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append((dict(kwargs), out[0].clone()))
        return out

    denoiser.forward = record
    return calls


def test_cached_policies_run_their_schedule_and_equal_the_reference(case, caplog):
    name, pipe, kw, field, plain = case
    for policy in CACHED[name]:
        caplog.clear()
        _check_cached(name, pipe, kw, field, plain, policy, caplog)


def _check_cached(name, pipe, kw, field, plain, policy, caplog):
    expected = None if name in NO_HOOK_REFERENCE else _reference(pipe, kw, field, policy)
    model = pipe.transformer
    cachec.enable(pipe, policy)
    try:
        calls = _recorded(pipe.transformer)
        with caplog.at_level(logging.WARNING, logger="cachec"):
            out = tp.run(pipe, kw, field, STEPS)
        schedules = _schedules(pipe)
        program = pipe.transformer.current.program
    finally:
        cachec.disable(pipe)
    assert all(s == "FRR" for s in schedules.values()), schedules
    if expected is None:  # full steps equal the uncached model on the same inputs, reused steps differ
        letters = [c for branch in zip(*schedules.values(), strict=True) for c in branch]  # calls alternate branches
        assert len(letters) == len(calls)
        with torch.no_grad():
            for letter, (inputs, got) in zip(letters, calls, strict=True):
                want = model(**dict(inputs, return_dict=False))[0]
                if letter == "F":
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                else:
                    assert (got - want).abs().max() > 1e-6
    else:
        ref_out, ref_schedules = expected
        assert schedules == ref_schedules
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-6  # caching changed the result: the comparisons can fail
    if (name, policy) in UNREAD:
        assert unread_on_reuse(program) == UNREAD[name, policy]
        said = [r.getMessage() for r in caplog.records if "per-block inputs" in r.getMessage()]
        for names in UNREAD[name, policy].values():
            assert len(said) == 1 and all(n in said[0] for n in names), said
