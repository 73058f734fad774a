"""DiCache (``dicache:t``) against its independent hook reference (``tests/reference_dicache.py``),
and its degenerate setting: ``interp=0`` is ``fbcache`` at the same threshold, exactly.

Set-up as in ``test_forecast_methods.py``: the bundled trained ``builtin:tiny-dit`` (6 blocks),
12-step trajectories, batch 2 (two classes), fp32, CPU, ``x <- x - out / T``; per case the full
steps, every step's output and the final latent agree. One capture for the module.
"""

from __future__ import annotations

import pytest
import torch
from reference_dicache import DiCacheReference
from trajectories import Driver

import cachec
from cachec.errors import PolicyError
from cachec.models import example_inputs, resolve

T = 12
TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyDitDriver(Driver):
    def _model_and_inputs(self, short: str):
        model = resolve("builtin:tiny-dit").model
        kw = example_inputs(model, self.batch, 0)
        kw["class_labels"] = torch.tensor([1, 6])
        return model, kw


DRIVER = TinyDitDriver(T, 2)
_PROGRAMS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


def run_cachec(spec: str):
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    key = cachec.parse_policy(spec).plan_key(6)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    rt = cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    return x, outs, rt


def assert_same(a, b, ctx: str, tol: float = TOL) -> None:
    (x, outs), (x_ref, outs_ref) = a, b
    for s, (o, r) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(o, r, rtol=tol, atol=tol, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=tol, atol=tol, msg=lambda m: f"final latent ({ctx}): {m}")


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# every probe value compared with t is 5 % or more away from it; γ > 1 on some reused steps
CASES = ["dicache:0.3,warmup=3",  # γ 1.19 .. 2, clipped at 2 on three steps
         "dicache:0.25,P=2,warmup=2,gmax=3"]  # a probe of two blocks; γ 1.22 .. 3, clipped at 3 twice


@pytest.mark.parametrize("spec", CASES)
def test_dicache_matches_the_reference(spec):
    model, _ = DRIVER.model_and_inputs("tiny-dit")
    with DiCacheReference(model, spec, T) as ref:
        want = DRIVER.trajectory(ref, "tiny-dit")
    x, outs, rt = run_cachec(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.schedule == ref.schedule and "R" in ref.schedule, ctx
    assert min(abs(v - ref.p["t"]) / ref.p["t"] for v in ref.compared) > 0.05, f"threshold too close: {ref.compared}"
    assert ref.gammas and any(g > 1.0 for g in ref.gammas), f"no step extrapolated: γ = {ref.gammas}"
    assert_same((x, outs), want, ctx)
    # the alignment changed the reused steps: plain reuse of the last residual (interp=0) differs
    _, outs_plain, rt_plain = run_cachec(spec + ",interp=0")
    assert rt_plain.stats.schedule == rt.stats.schedule
    assert max_diff(outs, outs_plain) > 10 * TOL


@pytest.mark.parametrize("spec", ["dicache:0.3,interp=0,warmup=3", "dicache:0.3,interp=1,gmin=1,gmax=1,warmup=3"])
def test_without_extrapolation_dicache_is_fbcache(spec):
    """``interp=0`` plans fbcache's graph: equal bit for bit. γ clipped to 1 aligns to ``R₂ + (R₁ − R₂)``:
    fbcache's reuse up to rounding."""
    x, outs, rt = run_cachec(spec)
    x_fb, outs_fb, rt_fb = run_cachec("fbcache:0.3,warmup=3")
    assert rt.stats.schedule == rt_fb.stats.schedule and "R" in rt.stats.schedule
    if "interp=0" in spec:
        assert all(torch.equal(a, b) for a, b in zip(outs, outs_fb, strict=True)) and torch.equal(x, x_fb)
    else:
        assert_same((x, outs), (x_fb, outs_fb), spec, tol=1e-5)


@pytest.mark.parametrize("spec, words", [
    ("dicache:-1", "t"), ("dicache:0.1,interp=2", "interp"), ("dicache:0.1,P=0", "P"),
    ("dicache:0.1,gmin=2,gmax=1", "gmin"), ("dicache:0.1,gmax=11", "gmax"), ("dicache:0.1,per_sample=1", "per_sample"),
])
def test_bad_parameters_are_one_clear_error(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


def test_a_probe_deeper_than_the_model_is_refused():
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    with pytest.raises(cachec.errors.ModelError, match="P = 1 .. 5"):
        cachec.build_program(model, kw, "dicache:0.1,P=6")
