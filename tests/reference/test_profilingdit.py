"""ProfilingDiT (``profilingdit``) against an independent hook reference, its degenerate settings
and its bad parameters.

The reference (``tests/reference_profilingdit.py``) runs the original diffusers model with forward
hooks written from the definition in docs/methods.md and shares no code with cachec. Set-up as in
``test_block_reuse_methods.py``: the bundled trained model ``builtin:tiny-dit`` (6 blocks), 12-step
trajectories, batch 2 (two classes), fp32, CPU, ``x <- x - out / T``; per case the schedule, every
step's output and the final latent agree.

CI time: one capture of the model for the module (policies plan on copies of it) and a program per
background set.
"""

from __future__ import annotations

import pytest
import torch
from reference_profilingdit import ProfilingDiTReference
from trajectories import TinyDitDriver

import cachec
from cachec.errors import PolicyError

T = 12
ATOL = 1e-4
SHORT = "tiny-dit"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DRIVER = TinyDitDriver(T, 2)


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


_PROGRAMS: dict = {}


def run_cachec(spec: str):
    model, kw = DRIVER.model_and_inputs(SHORT)
    key = cachec.parse_policy(spec).plan_key(6)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    rt = cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)
    x, outs = DRIVER.run(rt, SHORT)
    return x, outs, rt


def assert_same(got, want, ctx: str, tol: float = ATOL) -> None:
    (x, outs), (x_ref, outs_ref) = got, want
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=tol, atol=tol, msg=lambda m: f"final latent ({ctx}): {m}")


@pytest.mark.parametrize("spec", ["profilingdit:4,2", "profilingdit:5,1,bg=1/3-4,warmup=2,final=1"])
def test_profilingdit_matches_the_hook_reference(spec):
    x, outs, rt = run_cachec(spec)
    model, _ = DRIVER.model_and_inputs(SHORT)
    with ProfilingDiTReference(model, spec, T) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, SHORT)
    assert rt.stats.schedule == ref.schedule
    full = [s for s, c in enumerate(ref.schedule) if c == "F"]
    gaps = [b - a for a, b in zip(full, full[1:], strict=False)]
    assert len(set(gaps)) > 1, f"the interval did not change: {ref.schedule}"
    assert_same((x, outs), (x_ref, outs_ref), spec)
    x_plain, _ = DRIVER.plain(SHORT)
    assert (x - x_plain).abs().max() > 10 * ATOL  # something was reused: the comparison can fail


def test_profilingdit_degenerate_settings():
    """``Tmax = Tmin = 1`` is ``none``; ``Tmax = Tmin = N`` on one range is ``delta:N`` on it."""
    x_plain, outs_plain = DRIVER.plain(SHORT)
    x, outs, rt = run_cachec("profilingdit:1,1")
    assert rt.stats.schedule == "F" * T
    assert_same((x, outs), (x_plain, outs_plain), "profilingdit:1,1 vs none", tol=1e-5)
    x_d, outs_d, rt_d = run_cachec("delta:3,blocks=1-4")
    x, outs, rt = run_cachec("profilingdit:3,3")
    assert rt.stats.schedule == rt_d.stats.schedule
    assert rt.stats.nfe == pytest.approx(rt_d.stats.nfe)
    assert_same((x, outs), (x_d, outs_d), "profilingdit vs delta", tol=0)


@pytest.mark.parametrize(("spec", "words"), [
    ("profilingdit:0", "Tmax"), ("profilingdit:4,0", "Tmin"), ("profilingdit:2,3", "Tmin=3 > Tmax=2"),
    ("profilingdit:4,bg=x", "bg='x'"), ("profilingdit:4,bg=3-1", "0 <= a <= b"),
    ("profilingdit:4,bg=-1", "not block ranges"), ("profilingdit:4,bg=1-2-3", "not block ranges"), ("profilingdit:4,Tmax=5000", "Tmax")])
def test_profilingdit_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


def test_profilingdit_background_outside_the_model_is_a_policy_error():
    model, kw = DRIVER.model_and_inputs(SHORT)
    with pytest.raises(PolicyError, match=r"bg=2-6 is outside the model's blocks 0-5"):
        cachec.build_program(model, kw, "profilingdit:4,bg=2-6")


def test_profilingdit_shrinking_interval_needs_the_trajectory_length():
    with pytest.raises(PolicyError, match="num_steps"):
        cachec.parse_policy("profilingdit:4,2").controller(None)
