"""cachec's predictive, adaptive and budgeted policies against independent hook references.

The references (``tests/reference_predictive.py``) are written from ``docs/predictive_policies.md``
and share no code with cachec. The set-up follows ``tests/test_policies_reference.py``: 20-step
trajectories (batch 2, fp32, CPU) on the small random-weight models of ``tests/small_models.py``,
decreasing timesteps, the latent updated after every call by ``x <- x - out / T``. Per case the
tests compare every step's output and the final latent (``assert_close``, ``RTOL``/``ATOL``), the
full-step list and, for the dynamic policies, each step's probe signal. Thresholds of the dynamic
policies are chosen per model so that the schedule is non-trivial and no value a decision compared
lies within ``MARGIN`` (relative) of its threshold; the step outputs of every cached trajectory
must differ from the plain model's by more than ``10 * ATOL`` so the comparison can fail (on Wan
the final latent of ``taylorseer:3`` moves by less than that: ``x <- x - out / T`` damps it).

The first group of tests checks the reference alone (forecast algebra on synthetic streams, and
the degenerate settings in which a new policy is an old one, against ``reference_hooks``).

CI time: the model capture (``torch.export``) is most of a compile, and it depends on the model
only, so this module captures each model once and plans every policy on a copy of that capture
(:func:`_capture_once_per_model`). Runtimes of the same plan kind share one program.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from reference_hooks import HookedReference, block_list
from reference_predictive import (
    FoCaStream,
    HermiteStream,
    PredictiveReference,
    TaylorStream,
    even_budget_schedule,
    hermite,
    magcache_gammas,
)
from trajectories import Driver

import cachec

T = 20
BATCH = 2
RTOL = ATOL = 1e-4  # latents are O(1)
MARGIN = 0.01  # minimum relative distance of any compared value from a dynamic threshold

# Each case is (model, spec). CI time is tight (a plan per model and plan kind, a capture per
# model), so every policy variant runs on a few models rather than all: together the cases cover
# DiT, PixArt, FLUX (joint + single blocks), SD3 (joint blocks) and Wan for every policy kind.
FORECAST = [
    ("dit", "taylorseer:3"), ("dit", "foca:3,streams=step"), ("dit", "hicache:4,O=1,sigma=1.5"),
    ("pixart", "taylorseer:4,O=1,streams=step"), ("pixart", "foca:4,warmup=2"),
    ("flux", "taylorseer:5,O=2,warmup=3,final=2"), ("flux", "hicache:4"), ("flux", "foca:3,streams=step"),
    ("sd3", "hicache:3,O=3,sigma=0.8,streams=step"), ("sd3", "foca:4,warmup=2"), ("sd3", "taylorseer:4,O=1,streams=step"),
    ("wan", "taylorseer:3"),
]
# thresholds giving non-trivial schedules with a margin on these seeded models
EASYCACHE = [("dit", "easycache:0.06,warmup=2"), ("pixart", "easycache:0.2,warmup=2"),
             ("flux", "easycache:0.3,warmup=2"), ("sd3", "easycache:0.1,warmup=2"), ("sd3", "easycache:0.06"),
             ("wan", "easycache:0.15,warmup=2")]
DBCACHE = [("dit", "dbcache:t=0.9,W=2"), ("dit", "dbcache:F=2,B=0,t=0.5,W=3"), ("pixart", "dbcache:t=0.1,W=2"),
           ("pixart", "dbcache:t=0.1"), ("flux", "dbcache:t=0.8,W=2"), ("flux", "dbcache:t=0.8,W=2,MC=2"),
           ("flux", "dbcache:F=2,B=1,t=0.5,W=3"), ("sd3", "dbcache:t=0.4,W=2"), ("sd3", "dbcache:t=0.6,W=2,M=5")]
# MagCache ratios: 30 values (resampled to T = 20 without rounding ties), a noisy decay below 1
MAG_RATIOS = [0.969, 1.001, 0.976, 1.0, 0.999, 0.928, 0.918, 1.012, 0.939, 0.932, 1.019, 0.952, 0.992, 0.945, 0.961,
              0.898, 0.952, 0.976, 0.931, 0.953, 0.941, 0.864, 0.943, 0.919, 0.88, 0.844, 0.94, 0.889, 0.914, 0.929]
MAGCACHE = [("dit", "magcache:0.12"), ("pixart", "magcache:0.25,K=3,r=0.2"), ("flux", "magcache:0.15,final=2"),
            ("sd3", "magcache:0.25,K=2")]
BUDGET = [("dit", "budget:nfe=7,base=module"), ("pixart", "budget:nfe=6,base=step"),
          ("flux", "budget:nfe=7,base=forecast"), ("sd3", "budget:nfe=7,base=module"),
          ("wan", "budget:nfe=6,base=forecast")]


def _ids(cases):
    return [f"{short}-{spec}" for short, spec in cases]


pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.slow]  # whole trajectories of every policy on several models (tests/README.md)


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


# ------------------------------------------------------------------------------------------------
# shared pieces: models, inputs, trajectory driver, programs


DRIVER = Driver(T, BATCH)  # tests/trajectories.py
model_and_inputs, trajectory, plain, timesteps = DRIVER.model_and_inputs, DRIVER.trajectory, DRIVER.plain, DRIVER.timesteps


def reference(short: str, spec: str, **kw):
    model, _ = model_and_inputs(short)
    with PredictiveReference(model, spec, T, **kw) as ref:
        x, outs = trajectory(ref, short)
    return x, outs, ref


def old_reference(short: str, spec: str):
    model, _ = model_and_inputs(short)
    with HookedReference(model, spec, T) as ref:
        x, outs = trajectory(ref, short)
    return x, outs, ref


_PROGRAMS: dict = {}


def runtime(short: str, spec: str) -> cachec.CacheRuntime:
    """A runtime for ``spec`` over the program of its plan kind (planned once per model and kind)."""
    model, kw = model_and_inputs(short)
    policy = cachec.parse_policy(spec)
    key = (short, policy.name, policy.plan_key(len(block_list(model))))
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    return cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)


run_cachec = DRIVER.run


def assert_same_trajectory(got, want, ctx: str) -> None:
    (x, outs), (x_ref, outs_ref) = got, want
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL, msg=lambda m: f"final latent ({ctx}): {m}")


def assert_cachec_matches(short: str, spec: str, rt_spec: str | None = None, *, dynamic: bool = False,
                          **ref_kw) -> tuple[cachec.CacheRuntime, PredictiveReference]:
    """cachec (``rt_spec``, default ``spec``) and the reference (``spec``) agree on the schedule, the
    signals (dynamic policies), every step's output and the final latent; caching mattered."""
    x_ref, outs_ref, ref = reference(short, spec, **ref_kw)
    if dynamic:  # the test's own preconditions: a non-trivial, float-noise-robust schedule
        assert "R" in ref.schedule and any(ref.schedule[s] == "F" and not ref.forced(s) for s in range(1, T)), \
            ref.schedule
        t = ref.p.get("t", ref.p.get("tau"))
        margin = min(abs(v - t) / t for v in ref.compared)
        assert margin > MARGIN, f"threshold {t} too close to a compared value ({margin:.4f}): pick another"
    rt = runtime(short, rt_spec or spec)
    x, outs = run_cachec(rt, short)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    if dynamic and ref.name != "magcache":
        ctx += f"\ncachec signals {rt.stats.signals}\nreference signals {ref.signals}"
    assert rt.stats.full_steps == ref.full_steps, ctx
    if dynamic and ref.name != "magcache":  # step 0 has no reference value
        torch.testing.assert_close(torch.tensor(rt.stats.signals[1:], dtype=torch.float64),
                                   torch.tensor(ref.signals[1:], dtype=torch.float64), rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"signals ({ctx}): {m}")
    assert_same_trajectory((x, outs), (x_ref, outs_ref), ctx)
    assert "R" in rt.stats.schedule
    changed = max(float((a - b).abs().max()) for a, b in zip(outs, plain(short)[1], strict=True))
    assert changed > 10 * ATOL, f"caching changed the outputs by {changed} only: the test cannot fail"
    return rt, ref


def interval_schedule(N: int, warmup: int = 0, final: int = 0) -> str:
    """Full iff s == 0, s < warmup, s >= T - final or s - last_full >= N."""
    letters, last = "", None
    for s in range(T):
        full = last is None or s < warmup or s >= T - final or s - last >= N
        letters += "F" if full else "R"
        last = s if full else last
    return letters


# ------------------------------------------------------------------------------------------------
# the reference alone


def _drive(stream, values, schedule: str) -> list[torch.Tensor | None]:
    """Feed ``values[s]`` at full steps, collect the forecasts at cached steps (None at full ones)."""
    out = []
    for s, letter in enumerate(schedule):
        if letter == "F":
            stream.update(values[s], s)
            out.append(None)
        else:
            out.append(stream.predict(s))
    return out


def _line(a, b):
    return [a + b * s for s in range(T)]


def test_foca_forecasts_a_linear_stream_exactly():
    """FoCa's BDF2 + Heun step is exact for features linear in s once two full steps fixed the slope."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for schedule in (interval_schedule(5, warmup=3), interval_schedule(4, warmup=2), "FF" + "R" * (T - 2)):
        preds = _drive(FoCaStream(), _line(a, b), schedule)
        for s, p in enumerate(preds):
            if p is not None:
                torch.testing.assert_close(p, a + b * s, rtol=0, atol=1e-5, msg=f"{schedule} step {s}")


def test_foca_first_interval_holds_the_value():
    """After a single full step the slope is 0 and P2 = P1 = F: the forecast is F itself."""
    F = torch.randn(5)
    fc = FoCaStream()
    fc.update(F, 0)
    for s in (1, 2, 3):
        torch.testing.assert_close(fc.predict(s), F, rtol=0, atol=1e-6)


def test_taylorseer_is_exact_on_a_linear_stream_from_its_second_full_step():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, generator=g), torch.randn(6, generator=g)
    for order in (1, 2, 3):
        schedule = interval_schedule(4, warmup=2)
        preds = _drive(TaylorStream(order), _line(a, b), schedule)
        for s, p in enumerate(preds):
            if p is not None:
                torch.testing.assert_close(p, a + b * s, rtol=0, atol=1e-5, msg=f"order {order}, step {s}")


def test_taylorseer_order2_on_a_quadratic_stream():
    """Backward differences are exact for D_2 but not for D_1: with full steps h apart,
    ``D_1 = f'(s_f) − a·h`` for ``f = a·s²``, so the order-2 forecast is
    ``a·s_f² + a(2s_f − h)·x + a·x²`` (off by ``−a·h·x``): the definition's D_1 is the
    backward difference, not the derivative. Checked from the 3rd full step on."""
    a, h = 0.7, 4
    values = [torch.tensor([a * s * s]) for s in range(T)]
    schedule = interval_schedule(h)  # full at 0, 4, 8, ...
    fc = TaylorStream(2)
    n_full = 0
    for s, letter in enumerate(schedule):
        if letter == "F":
            fc.update(values[s], s)
            n_full += 1
            continue
        sf, x = fc.last, s - fc.last
        got = float(fc.predict(s))
        if n_full >= 3:
            assert len(fc.D) == 3 and math.isclose(float(fc.D[2]), 2 * a, rel_tol=1e-6)
            assert math.isclose(got, a * sf * sf + a * (2 * sf - h) * x + a * x * x, rel_tol=1e-6), (s, got)
        elif n_full == 1:  # only D_0: the value itself
            assert math.isclose(got, a * sf * sf, rel_tol=1e-6)


def test_taylorseer_orders_appear_one_full_step_at_a_time_with_the_step_distance():
    fc = TaylorStream(2)
    fc.update(torch.tensor([1.0]), 0)
    assert len(fc.D) == 1
    fc.update(torch.tensor([3.0]), 2)  # Δ = 2
    assert len(fc.D) == 2 and float(fc.D[1]) == 1.0
    fc.update(torch.tensor([4.0]), 5)  # Δ = 3: D_1 = 1/3, D_2 = (1/3 − 1)/3
    assert len(fc.D) == 3 and math.isclose(float(fc.D[2]), (1 / 3 - 1) / 3, rel_tol=1e-6)
    got = float(fc.predict(7))  # x = 2
    assert math.isclose(got, 4 + (1 / 3) * 2 + (1 / 3 - 1) / 3 * 4 / 2, rel_tol=1e-6)


def test_hermite_polynomials_and_the_hicache_forecast():
    """H_k against numpy's physicists' Hermite series; the HiCache forecast against the formula."""
    for k in range(6):
        for z in (-1.3, 0.0, 0.5, 2.0):
            want = np.polynomial.hermite.hermval(z, [0] * k + [1])
            assert math.isclose(hermite(k, z), want, rel_tol=1e-12, abs_tol=1e-12), (k, z)
    sigma = 0.5
    fc = HermiteStream(2, sigma)
    for s, v in ((0, 1.0), (2, 2.0), (4, 5.0)):
        fc.update(torch.tensor([v]), s)
    d0, d1, d2 = 5.0, (5.0 - 2.0) / 2, ((5.0 - 2.0) / 2 - (2.0 - 1.0) / 2) / 2
    for x in (1, 2, 3):
        z = sigma * x
        want = d0 + d1 * sigma * (2 * z) + d2 * sigma**2 * (4 * z * z - 2) / 2
        assert math.isclose(float(fc.predict(4 + x)), want, rel_tol=1e-6)


def test_magcache_gamma_resampling_and_schedule_by_hand():
    """γ by nearest index; the first round(r·T) steps full; E accumulates |1 − Γ|, K caps the run."""
    assert magcache_gammas([1.0, 2.0, 3.0], 4) == [1.0, 2.0, 2.0, 3.0]  # s·2/3 = 0, 0.67, 1.33, 2
    assert magcache_gammas(list(range(20)), 20) == list(range(20))
    # T = 20, r = 0.1: steps 0, 1 forced. γ = 0.9 everywhere: Γ = 0.9, 0.81, 0.729 -> E = 0.1, 0.29, 0.561
    _, _, ref = reference("dit", "magcache:0.3,K=5,r=0.1", ratios=[0.9] * 20)
    assert ref.schedule == "FF" + "RRF" * 6
    _, _, ref = reference("dit", "magcache:10,K=2,r=0.1", ratios=[0.9] * 20)  # K limits
    assert ref.schedule == "FF" + "RRF" * 6
    _, _, ref = reference("dit", "magcache:10,K=1,r=0.25", ratios=[0.9] * 20)  # round(5.0): 5 forced
    assert ref.schedule == "FFFFF" + "RF" * 7 + "R"


def test_even_budget_schedule():
    assert even_budget_schedule(5, 20) == "FRRRFRRRFRRRFRRRFRRR"
    assert even_budget_schedule(7, 20).count("F") == 7 and even_budget_schedule(20, 20) == "F" * 20


@pytest.mark.parametrize("short", ["dit", "sd3"])
def test_reference_degenerates_to_the_existing_references(short):
    """taylorseer O=0 = fora; streams=step O=0 = static; dbcache F=1,B=0,W=0 = fbcache; budget
    module/step = fora/static over the same letters; easycache:0 = none (the old references)."""
    x_plain, _ = plain(short)
    fb = {"dit": 1.0, "sd3": 0.4}[short]
    letters = interval_schedule(3, warmup=2)
    pairs = [("taylorseer:3,O=0,warmup=2", "fora:3,warmup=2", {}),
             ("taylorseer:3,O=0,warmup=2,streams=step", f"static:{letters}", {}),
             ("foca:1", "none", {}),
             (f"dbcache:t={fb},W=0", f"fbcache:{fb}", {}),
             ("budget:nfe=8,base=module", "fora:3,warmup=2", {"schedule": letters}),
             ("budget:nfe=8,base=step", f"static:{letters}", {"schedule": letters})]
    for new, old, kw in pairs:
        x_new, outs_new, ref_new = reference(short, new, **kw)
        x_old, outs_old, ref_old = old_reference(short, old)
        assert ref_new.schedule == ref_old.schedule, (new, old)
        assert_same_trajectory((x_new, outs_new), (x_old, outs_old), f"{new} vs {old}")
        if "R" in ref_new.schedule:
            assert float((x_new - x_plain).abs().max()) > 10 * ATOL, new
    x, _, ref = reference(short, "easycache:0,warmup=0,final=0")
    assert ref.schedule == "F" * T
    torch.testing.assert_close(x, x_plain, rtol=0, atol=1e-5)


def test_reference_forecast_methods_differ_step_by_step():
    """Reuse, order 1/2 forecasts, HiCache and FoCa give step outputs that differ by far more than
    the tolerance, so the comparisons with cachec tell the methods apart."""
    specs = ["taylorseer:3,O=0", "taylorseer:3,O=1", "taylorseer:3,O=2", "hicache:3,O=2,warmup=2", "foca:3,warmup=2"]
    outs = {spec: reference("dit", spec)[1] for spec in specs}
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            diff = max(float((u - v).abs().max()) for u, v in zip(outs[a], outs[b], strict=True))
            assert diff > 10 * ATOL, (a, b, diff)


# ------------------------------------------------------------------------------------------------
# cachec against the reference


@pytest.mark.parametrize(("short", "spec"), FORECAST, ids=_ids(FORECAST))
def test_forecast_policy_matches_the_reference(short, spec):
    _, ref = assert_cachec_matches(short, spec)
    assert ref.schedule == interval_schedule(ref.p["N"], ref.p["warmup"], ref.p["final"])


@pytest.mark.parametrize("short", ["sd3"])
def test_taylorseer_order0_is_fora(short):
    """taylorseer:N,O=0 = fora:N with the same warmup, in cachec (and in the references)."""
    x_ts, outs_ts = run_cachec(runtime(short, "taylorseer:3,O=0,warmup=2"), short)
    x_fora, outs_fora = run_cachec(runtime(short, "fora:3,warmup=2"), short)
    assert_same_trajectory((x_ts, outs_ts), (x_fora, outs_fora), "cachec taylorseer O=0 vs fora")
    x_ref, _, _ = reference(short, "taylorseer:3,O=0,warmup=2")
    x_old, _, _ = old_reference(short, "fora:3,warmup=2")
    torch.testing.assert_close(x_ref, x_old, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(x_ts, x_ref, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def ratio_file(tmp_path_factory):
    """A calibration file carrying MAG_RATIOS (the other measurements are placeholders)."""
    n = len(MAG_RATIOS)
    path = tmp_path_factory.mktemp("calib") / "ratios.json"
    path.write_text(json.dumps({"format": "cachec-calibration", "version": 1, "model": "test", "steps": n,
                                "samples": 1, "seed": 0, "gains": [1.0] * n, "ratios": MAG_RATIOS, "errors": {}}))
    return str(path)


@pytest.mark.parametrize(("short", "spec"), MAGCACHE, ids=_ids(MAGCACHE))
def test_magcache_matches_the_reference(short, spec, ratio_file):
    assert_cachec_matches(short, spec, f"{spec},ratios={ratio_file}", dynamic=True, ratios=MAG_RATIOS)


def test_magcache_published_ratios():
    """ratios=KEY reads method_constants.json's mag_ratios (28 of them, resampled to 20)."""
    from importlib import resources

    table = json.loads(resources.files("cachec").joinpath("constants/method_constants.json").read_text())
    ratios = table["magcache"]["flux.1-dev (28 steps)"]["mag_ratios"]
    assert_cachec_matches("dit", "magcache:0.12,K=4", "magcache:0.12,K=4,ratios=flux.1-dev", dynamic=True,
                          ratios=ratios)


@pytest.mark.parametrize(("short", "spec"), EASYCACHE, ids=_ids(EASYCACHE))
def test_easycache_matches_the_reference(short, spec):
    assert_cachec_matches(short, spec, dynamic=True)


@pytest.mark.parametrize(("short", "spec"), DBCACHE, ids=_ids(DBCACHE))
def test_dbcache_matches_the_reference(short, spec):
    assert_cachec_matches(short, spec, dynamic=True)


def test_dbcache_f1b0w0_is_fbcache():
    """dbcache:F=1,B=0,t,W=0 = fbcache:t in cachec (the references agree too, see above)."""
    short, t = "dit", 1.0
    x_db, outs_db = run_cachec(rt_db := runtime(short, f"dbcache:t={t},W=0"), short)
    x_fb, outs_fb = run_cachec(rt_fb := runtime(short, f"fbcache:{t}"), short)
    assert rt_db.stats.schedule == rt_fb.stats.schedule and "R" in rt_db.stats.schedule
    assert_same_trajectory((x_db, outs_db), (x_fb, outs_fb), "cachec dbcache F=1,B=0,W=0 vs fbcache")


@pytest.mark.parametrize(("short", "spec"), BUDGET, ids=_ids(BUDGET))
def test_budget_matches_the_reference(short, spec):
    """cachec's schedule (uncalibrated: the even spacing) run by the reference gives the same numbers."""
    rt = runtime(short, spec)
    run_cachec(rt, short)
    schedule = rt.stats.schedule
    nfe = int(spec.split("nfe=")[1].split(",")[0])
    assert schedule.count("F") == nfe and schedule == even_budget_schedule(nfe, T)
    assert_cachec_matches(short, spec, schedule=schedule)
