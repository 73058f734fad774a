"""The adaptive-probe and global-schedule methods of issue 24 on the bundled ``builtin:tiny-dit``,
against references that share no code with cachec; one module so that they share one capture.

* DiCache (``dicache:t``) against its hook reference (``tests/reference_dicache.py``), and its
  degenerate setting: ``interp=0`` is ``fbcache`` at the same threshold, exactly.
* OmniCache (``omnicache:nfe=K,calib=FILE``): the calibration numbers are the curvature of the
  model's own uncached trajectory, computed here (``κ_j = 1 − cos(v_j, v_{j−1})`` per sample, in
  float64, averaged) and written to a calibration file; the schedule is picked by hand from the
  same numbers (forced steps, then the steepest bends) and run by the hook reference of a
  step-residual mask (``budget:base=step`` with that schedule, ``reference_predictive.py``).
  Degenerate: a budget of every step runs the model uncached.

Set-up as in ``test_forecast_methods.py``: 12-step trajectories, batch 2 (two classes), fp32, CPU,
``x <- x - out / T``; per case the schedule, every step's output and the final latent agree.
"""

from __future__ import annotations

import json

import pytest
import torch
from reference_dicache import DiCacheReference
from reference_predictive import PredictiveReference
from trajectories import TinyDitDriver

import cachec
from cachec.errors import PolicyError
from cachec.schedules import even_schedule

T = 12
TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    ("dicache:-1", r"t=-1 is out of range; accepted: 0\.0 \.\. 10\.0"), ("dicache:0.1,interp=2", "interp=2 is out of range"),
    ("dicache:0.1,P=0", "P=0 is out of range"), ("dicache:0.1,gmin=2,gmax=1", "gmin=2.0 is above gmax=1.0"),
    ("dicache:0.1,gmax=11", "gmax=11 is out of range"), ("dicache:0.1,per_sample=1", "unknown key 'per_sample'"),
])
def test_bad_parameters_are_one_clear_error(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


def test_a_probe_deeper_than_the_model_is_refused():
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    with pytest.raises(cachec.errors.ModelError, match="P = 1 .. 5"):
        cachec.build_program(model, kw, "dicache:0.1,P=6")


# ------------------------------------------------------------------------------------------------
# OmniCache


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A calibration file holding the curvature of the uncached trajectory (the other fields unused)."""
    _, outs = DRIVER.plain("tiny-dit")
    bends = [0.0]
    for a, b in zip(outs, outs[1:], strict=False):
        a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
        cos = [float(x @ y / (x.norm() * y.norm())) for x, y in zip(a, b, strict=True)]
        bends.append(sum(1 - c for c in cos) / len(cos))
    path = tmp_path_factory.mktemp("omnicache") / "calib.json"
    path.write_text(json.dumps({"format": "cachec-calibration", "version": 1, "model": "tiny-dit", "steps": T,
                                "samples": 2, "seed": 0, "max_gap": 3, "gains": [1.0] * T, "ratios": [1.0] * T,
                                "curvature": bends, "errors": {}}))
    return path, bends


@pytest.fixture(scope="module")
def program(calib):
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    return cachec.build_program(model, kw, f"omnicache:nfe=4,calib={calib[0]}")  # runs any nfe (run-time parameter)


def by_hand(bends: list[float], nfe: int, warmup: int, final: int) -> str:
    forced = {0, *range(warmup), *range(T - final, T)}
    ranked = sorted(set(range(T)) - forced, key=lambda s: (-bends[s], s))
    full = forced | set(ranked[: nfe - len(forced)])
    return "".join("F" if s in full else "R" for s in range(T))


@pytest.mark.parametrize("nfe, warmup, final", [(5, 0, 0), (6, 2, 1)])
def test_omnicache_runs_the_schedule_chosen_by_hand(calib, program, nfe, warmup, final):
    path, bends = calib
    spec = f"omnicache:nfe={nfe},warmup={warmup},final={final},calib={path}"
    want_schedule = by_hand(bends, nfe, warmup, final)
    model, _ = DRIVER.model_and_inputs("tiny-dit")
    with PredictiveReference(model, f"budget:{nfe},base=step", T, schedule=want_schedule) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, "tiny-dit")
    rt = cachec.CacheRuntime(program, spec, num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    assert rt.stats.schedule == want_schedule == ref.schedule
    # not an even spacing in disguise: the curvature moved the full steps
    assert want_schedule != even_schedule(T, nfe, warmup=warmup, final=final)
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_ref, rtol=TOL, atol=TOL)


def test_a_budget_of_every_step_is_none(calib, program):
    path, _ = calib
    rt = cachec.CacheRuntime(program, f"omnicache:nfe={T},calib={path}", num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    x_none, outs_none = DRIVER.run(cachec.CacheRuntime(program, "none", num_steps=T), "tiny-dit")
    assert rt.stats.schedule == "F" * T
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_none, strict=True)) and torch.equal(x, x_none)
    x_plain, outs_plain = DRIVER.plain("tiny-dit")  # and the model itself, uncached
    for s, (a, b) in enumerate(zip(outs, outs_plain, strict=True)):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=lambda m, s=s: f"step {s}: {m}")
