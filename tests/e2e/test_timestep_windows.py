"""Policies gated on a timestep window (PAB, FasterCache) make no device→host read per step when
the trajectory's timesteps are given (``CacheRuntime.reset(timesteps=...)``, which cachec's own
sampling loop does): they look each step's timestep up by index and read what a step-index policy
(FORA) reads, nothing more. Counted on the tiny DiT with :mod:`cachec.dispatch_count` (reads of a
tensor's value are what a GPU syncs on; on the CPU the runtime also checks the class labels' range
each call, FORA alike: on the CPU it reads host memory, no sync); without the timesteps every
window step reads one more.
"""

from __future__ import annotations

import functools

import pytest
import torch
from trajectories import Driver

import cachec
from cachec.dispatch_count import count

T = 8
DRIVER = Driver(T, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def compiled(spec: str) -> cachec.CacheRuntime:
    model, kw = DRIVER.model_and_inputs("dit")
    return cachec.compile(model, kw, spec, num_steps=T)


def fora_reads() -> list[int]:
    """A step-index policy's reads per step: what a window policy may read too."""
    _, kw = DRIVER.model_and_inputs("dit")
    return [s for s, _ in run(compiled("fora:2"), kw, DRIVER.timesteps("dit", kw), given=False)]


def run(rt, kw, timesteps, given: bool):
    """Per step: (device→host reads, output); the runtime's trajectory starts with or without the timesteps."""
    rt.reset(T, timesteps=[float(t.reshape(-1)[0]) for t in timesteps] if given else None)
    x, steps = kw["hidden_states"].clone(), []
    for t in timesteps:
        (out,), c = count(rt, **dict(kw, hidden_states=x, timestep=t), return_dict=False)
        steps.append((c.syncs, out.clone()))
        x = x - out[:, : x.shape[1]] / T
    return steps


@pytest.mark.parametrize("spec", ["pab:2,lo=50,hi=950", "fastercache:2,lo=-1,hi=700"])
def test_window_policies_read_no_timestep_per_step_when_given_the_trajectory(spec):
    _, kw = DRIVER.model_and_inputs("dit")
    timesteps = DRIVER.timesteps("dit", kw)
    fora = fora_reads()
    rt = compiled(spec)
    reading = run(rt, kw, timesteps, given=False)
    schedule = rt.stats.schedule
    assert "R" in schedule and [s for s, _ in reading[2:]] == [f + 1 for f in fora[2:]], (schedule, reading, fora)
    given = run(rt, kw, timesteps, given=True)
    assert rt.stats.schedule == schedule  # the same decisions ...
    for (_, a), (_, b) in zip(reading, given, strict=True):
        assert torch.equal(a, b)
    # ... and, once the runtime knows how many calls a step makes (steps 0 and 1 tell it), FORA's reads only
    assert [s for s, _ in given[2:]] == fora[2:], ([s for s, _ in given], fora)


def test_given_timesteps_hold_for_one_trajectory_only():
    _, kw = DRIVER.model_and_inputs("dit")
    rt = compiled("pab:2,lo=50,hi=950")
    timesteps = DRIVER.timesteps("dit", kw)
    run(rt, kw, timesteps, given=True)
    # the next trajectory starts on its own (its length reached): the old timesteps are gone, it reads again
    x = kw["hidden_states"]
    counts = [count(rt, **dict(kw, hidden_states=x, timestep=t))[1].syncs for t in timesteps]
    fora = fora_reads()
    assert counts[2:] == [f + 1 for f in fora[2:]], (counts, fora)


def test_pab_marks_a_step_that_reuses_no_attention_of_this_model_full():
    """A DiT has only self-attention: PAB's steps that would reuse only temporal or cross-attention
    compute everything, so they are full steps (``F``, a full step's FLOPs), not ``R``."""
    _, kw = DRIVER.model_and_inputs("dit")
    rt = compiled("pab:2,lo=50,hi=950")  # S=2, T=4, C=6; timesteps 999 ... 0: steps 1-6 in the window
    run(rt, kw, DRIVER.timesteps("dit", kw), given=True)
    stats = rt.stats
    assert stats.schedule == "FRFRFRFF"
    assert stats.full_steps == [0, 2, 4, 6, 7]
    for letter, flops in zip(stats.schedule, stats.step_flops, strict=True):
        assert (flops == pytest.approx(stats.full_flops)) == (letter == "F"), (letter, flops, stats.full_flops)


def test_tgate_marks_a_step_that_reuses_only_absent_cross_attention_full():
    """T-GATE after its gate reuses cross-attention, which a DiT does not have: with ``sa_after=1``
    those steps compute everything, so they are full steps (``F``), not ``R`` (they were ``R``)."""
    _, kw = DRIVER.model_and_inputs("dit")
    rt = compiled("tgate:4,sa=2,warmup=1")  # gate step 3: steps 1 (odd, < 3) reuse self-attention only
    run(rt, kw, DRIVER.timesteps("dit", kw), given=True)
    stats = rt.stats
    assert stats.schedule == "FRFFFFFF"
    for letter, flops in zip(stats.schedule, stats.step_flops, strict=True):
        assert (flops == pytest.approx(stats.full_flops)) == (letter == "F"), (letter, flops, stats.full_flops)


def test_bad_timesteps_are_refused_with_what_is_accepted():
    rt = compiled("pab:2,lo=50,hi=950")
    with pytest.raises(cachec.ShapeError, match="3 values for a trajectory of 8 steps"):
        rt.reset(T, timesteps=[1.0, 2.0, 3.0])
    with pytest.raises(cachec.ShapeError, match="one number per step"):
        rt.reset(T, timesteps=["late"] * T)
