"""AB-Cache (``abcache:N,k``, standalone and as a hybrid's forecaster) and FreqCa (``freqca:N``)
against independent references.

The references (``AdamsBashforthStream``, ``FreqCaStream`` in ``tests/reference_predictive.py``)
are written from the definitions in ``docs/methods.md`` and share no code with cachec: AB-Cache's
evaluates the polynomial through the last k computed values by Newton's divided differences, where
cachec forms Lagrange weights on the host; FreqCa's splits the bands with scipy's DCT in float64
and forecasts ``low(D_0) + high(F̂)``, where cachec's graph computes ``D_0 + G − low(G)`` with a
DCT built from ``cos``. Set-up as in ``test_policies_predictive.py`` on the bundled trained model
``builtin:tiny-dit`` (a diffusers ``DiTTransformer2DModel``): 12-step trajectories, batch 2 (two
classes), fp32, CPU, ``x <- x - out / T``; per case the full steps, every step's output and the
final latent agree. The hybrid cases put full steps at irregular distances, so the variable-step
coefficients are checked at real gaps.

CI time: one capture of the model for the module (each policy plans on a copy of it), a program
per plan kind, and trajectories of a 6-block model: about 30 s of CPU for the module (measured:
27.7 s user time for all 21 tests, imports included).
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_hybrid import HybridPredictive
from reference_predictive import AdamsBashforthStream, PredictiveReference, TaylorStream, dct_low_band
from trajectories import TinyDitDriver

import cachec
from cachec.bench import cache_bytes
from cachec.forecast import AdamsBashforth, ForecastTracker

T = 12
RTOL = ATOL = 1e-4
MASK = "FFFRFRRFRRRF"  # full at 0, 1, 2, 4, 7, 11: gaps 1, 1, 2, 3, 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DRIVER = TinyDitDriver(T, 2)
SHORT = "tiny-dit"


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


_PROGRAMS: dict = {}


def program(spec: str):
    model, kw = DRIVER.model_and_inputs(SHORT)
    key = cachec.parse_policy(spec).plan_key(6)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    return _PROGRAMS[key]


def run_cachec(spec: str) -> tuple[torch.Tensor, list[torch.Tensor], cachec.CacheRuntime]:
    rt = cachec.CacheRuntime(program(spec), spec, num_steps=T)
    x, outs = DRIVER.run(rt, SHORT)
    return x, outs, rt


def run_reference(spec: str, cls=PredictiveReference, **kw):
    model, _ = DRIVER.model_and_inputs(SHORT)
    with cls(model, spec, T, **kw) as ref:
        x, outs = DRIVER.trajectory(ref, SHORT)
    return x, outs, ref


def assert_same(got, want, ctx: str, tol: float = ATOL) -> None:
    (x, outs), (x_ref, outs_ref) = got, want
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=tol, atol=tol, msg=lambda m: f"final latent ({ctx}): {m}")


def max_diff(outs_a, outs_b) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(outs_a, outs_b, strict=True))


# ------------------------------------------------------------------------------------------------
# the definition, without a model


def test_reference_is_exact_on_polynomials_of_degree_k_minus_1_at_irregular_steps():
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 4):
        coeffs = [torch.randn(3, generator=g) for _ in range(k)]

        def f(s, coeffs=coeffs):
            return sum(c * float(s) ** i for i, c in enumerate(coeffs))

        stream = AdamsBashforthStream(k)
        for s in (0, 1, 3, 7, 8)[:k + 1]:
            stream.update(f(s), s)
        for s in (9, 10, 13):
            torch.testing.assert_close(stream.predict(s), f(s), rtol=1e-4, atol=1e-4, msg=f"k={k}, step {s}")


def test_uniform_coefficients_are_the_adams_bashforth_binomials():
    """On full steps one step apart, F̂_n = Σ (−1)^{i+1}·C(k, i)·F_{n−i} (reference and cachec)."""
    for k in (1, 2, 3, 4):
        want = [(-1) ** (i + 1) * math.comb(k, i) for i in range(1, k + 1)]
        tracker = ForecastTracker(AdamsBashforth(k))
        for s in range(k):
            tracker.step_inputs(s, True)
        got = tracker.step_inputs(k, False)["forecast__predict"][0]
        assert got == pytest.approx(want, abs=1e-12), (k, got)
        stream = AdamsBashforthStream(k)
        for s in range(k):
            stream.update(torch.tensor([float(10 ** s)]), s)  # picks out each coefficient
        value = float(stream.predict(k))
        assert value == pytest.approx(sum(c * 10 ** (k - 1 - i) for i, c in enumerate(want)), rel=1e-6)


def test_reference_k2_is_taylorseer_order1_at_any_gaps():
    g = torch.Generator().manual_seed(1)
    ab, ts = AdamsBashforthStream(2), TaylorStream(1)
    for s in (0, 1, 4, 6, 11):
        v = torch.randn(4, generator=g)
        ab.update(v, s)
        ts.update(v, s)
        for x in (1, 2, 3):
            torch.testing.assert_close(ab.predict(s + x), ts.predict(s + x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# cachec against the reference on builtin:tiny-dit

CASES = ["abcache:3,k=3", "abcache:4,k=3,streams=step,warmup=3", "abcache:3,k=4,warmup=1"]


@pytest.mark.parametrize("spec", CASES)
def test_abcache_matches_the_reference(spec):
    x_ref, outs_ref, ref = run_reference(spec)
    x, outs, rt = run_cachec(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps and "R" in ref.schedule, ctx
    assert_same((x, outs), (x_ref, outs_ref), ctx)
    assert max_diff(outs, DRIVER.plain(SHORT)[1]) > 10 * ATOL, "caching changed nothing: the test cannot fail"


HYBRIDS = [  # (cachec spec, reference spec, reference kwargs)
    (f"static:{MASK}+abcache:k=3", "budget:base=step+abcache:k=3", {"schedule": MASK}),
    (f"static:{MASK}+abcache:k=4", "budget:base=step+abcache:k=4", {"schedule": MASK}),
    # a probe decision: full at 0, 1, 2, 7, 10, 11 (every compared probe value 12 % or more from t)
    ("fbcache:0.3,warmup=3+abcache:k=3", "dbcache:F=1,B=0,t=0.3,W=0,warmup=3+abcache:k=3", {}),
]


@pytest.mark.parametrize("spec, ref_spec, ref_kw", HYBRIDS, ids=[h[0] for h in HYBRIDS])
def test_abcache_forecasts_a_hybrid_decision_at_irregular_gaps(spec, ref_spec, ref_kw):
    x_ref, outs_ref, ref = run_reference(ref_spec, HybridPredictive, **ref_kw)
    x, outs, rt = run_cachec(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps, ctx
    gaps = {b - a for a, b in zip(ref.full_steps, ref.full_steps[1:], strict=False)}
    assert len(gaps) > 2, gaps
    if ref.compared:  # a probe decision: no compared value on a knife edge
        assert min(abs(v - ref.p["t"]) / ref.p["t"] for v in ref.compared) > 0.05, "threshold too close to a value"
    assert_same((x, outs), (x_ref, outs_ref), ctx)
    # the order matters: the mask's plain copy (k=1) gives other outputs
    _, outs_copy, _ = run_cachec(spec.rsplit("=", 1)[0] + "=1")
    assert max_diff(outs, outs_copy) > 10 * ATOL


@pytest.mark.parametrize("ab, old", [("abcache:3,k=1", "taylorseer:3,O=0"), ("abcache:3,k=2", "taylorseer:3,O=1"),
                                     (f"static:{MASK}+abcache:k=2", f"static:{MASK}+taylorseer:O=1")])
def test_degenerate_orders_are_reuse_and_taylorseer_order1(ab, old):
    """k=1 reuses the last value (taylorseer O=0, FORA), k=2 is taylorseer O=1 — also at a hybrid's gaps."""
    x_ab, outs_ab, rt_ab = run_cachec(ab)
    x_old, outs_old, rt_old = run_cachec(old)
    assert rt_ab.stats.schedule == rt_old.stats.schedule and "R" in rt_ab.stats.schedule
    assert_same((x_ab, outs_ab), (x_old, outs_old), f"{ab} vs {old}", tol=1e-5)


def test_order3_differs_from_taylorseer_order2():
    """Not a renamed TaylorSeer: k=3 (the quadratic through three values) and Taylor order 2
    (backward differences on x^i/i!) give different forecasts on the same schedule."""
    _, outs_ab, _ = run_cachec("abcache:3,k=3")
    _, outs_ts, _ = run_cachec("taylorseer:3,O=2")
    assert max_diff(outs_ab, outs_ts) > 10 * ATOL


# ------------------------------------------------------------------------------------------------
# FreqCa


@pytest.mark.parametrize("tokens", [64, 12])  # a square grid (2-D DCT) and a sequence (1-D)
def test_band_split_matches_scipy_and_its_limits(tokens):
    """cachec's in-graph low band equals the reference's scipy DCT; cutoff 1 keeps everything,
    cutoff 0 only the DC term (the tokens' mean per channel)."""
    from cachec.methods.band_split import low_pass

    x = torch.randn(2, tokens, 5, generator=torch.Generator().manual_seed(3))
    for cutoff in (0.0, 0.1, 0.3, 1.0):
        torch.testing.assert_close(low_pass(x, cutoff), dct_low_band(x, cutoff), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dct_low_band(x, 1.0), x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dct_low_band(x, 0.0), x.mean(1, keepdim=True).expand_as(x), rtol=1e-6, atol=1e-6)


# (freqca spec, the same Hermite forecast on the whole band, which the test tells apart)
FREQCA = [("freqca:3,warmup=2", "hicache:3,O=2,sigma=0.71,streams=step,warmup=2"),
          ("freqca:4,O=1,sigma=0.5,cutoff=0.4,warmup=2", "hicache:4,O=1,sigma=0.5,streams=step,warmup=2")]


@pytest.mark.parametrize("spec, whole_band", FREQCA)
def test_freqca_matches_the_reference(spec, whole_band):
    x_ref, outs_ref, ref = run_reference(spec)
    x, outs, rt = run_cachec(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps and "R" in ref.schedule, ctx
    assert_same((x, outs), (x_ref, outs_ref), ctx)
    _, outs_whole, _ = run_cachec(whole_band)
    assert max_diff(outs, outs_whole) > 10 * ATOL, "the band split changed nothing: the test cannot fail"


@pytest.mark.parametrize("freqca", ["freqca:3,cutoff=1.0,warmup=2", "freqca:3,O=0,warmup=2"])
def test_freqca_degenerates_to_reusing_the_stack_residual(freqca):
    """Every frequency in the low band (cutoff 1), or a high band of order 0: the stack residual of
    the last full step reused, i.e. ``taylorseer:N,O=0,streams=step``."""
    x_a, outs_a, rt_a = run_cachec(freqca)
    x_b, outs_b, rt_b = run_cachec("taylorseer:3,O=0,streams=step,warmup=2")
    assert rt_a.stats.schedule == rt_b.stats.schedule and "R" in rt_a.stats.schedule
    assert_same((x_a, outs_a), (x_b, outs_b), freqca, tol=1e-5)


def test_freqca_caches_one_stream_instead_of_two_per_block():
    """The memory saving, counted from the programs: FreqCa's cache is O+1 tensors of the stack
    residual, TaylorSeer's (same order) O+1 per attention and MLP output of each of the 6 blocks —
    all [batch, 64, 128] here, so exactly 12 times as many bytes."""
    freqca, taylor = cache_bytes(program("freqca:3"), 2), cache_bytes(program("taylorseer:3,O=2"), 2)
    assert freqca == 3 * 2 * 64 * 128 * 4  # D_0..D_2 at batch 2, fp32
    assert taylor == 12 * freqca, (taylor, freqca)


# ------------------------------------------------------------------------------------------------
# SpeCa


def test_speca_matches_the_reference_and_reports_its_acceptance():
    """Same full steps (rejections included), the same verification errors (``stats.signals``),
    every step's output; the acceptance rate follows from the errors and τ(s)."""
    from reference_speca import SpecaReference

    from cachec.methods.speca import acceptance, threshold

    spec = "speca:12,N=6,decay=0.5,checks=1,warmup=2"  # verified errors 5.0 6.3 27 | 2.9 6.1 8.0: two rejections
    x_ref, outs_ref, ref = run_reference(spec, SpecaReference)
    x, outs, rt = run_cachec(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps, ctx
    verified = [s for s, e in enumerate(ref.signals) if e is not None]
    assert [s for s, e in enumerate(rt.stats.signals) if e is not None] == verified, ctx
    # SpeCa's error divides by |y| + 1e-10 element by element: elements with y near 0 amplify float
    # rounding (cachec's forecast is a matmul, the reference's a sum), so the errors agree to 1 %
    # only; the thresholds keep a 5 % margin from every error, so the verdicts cannot flip on it
    torch.testing.assert_close(torch.tensor([rt.stats.signals[s] for s in verified], dtype=torch.float64),
                               torch.tensor([ref.signals[s] for s in verified], dtype=torch.float64), rtol=1e-2, atol=0)
    assert_same((x, outs), (x_ref, outs_ref), ctx)
    taus = [ref.tau(s) for s in range(T)]
    assert min(abs(e - taus[s]) / taus[s] for s, e in enumerate(ref.signals) if e is not None) > 0.05, "knife edge"
    # preconditions: both verdicts occur, and a rejection put a full step where the interval would not
    rate = acceptance(rt.stats.signals, [threshold(rt.policy.params, s, T) for s in range(T)])
    assert rate == pytest.approx(4 / 6), (rate, ref.signals, taus)
    rejected = [s + 1 for s in verified if ref.signals[s] > taus[s] and s + 1 < T]
    assert rejected and all(ref.schedule[s] == "F" for s in rejected), ctx


def test_speca_without_verified_steps_is_taylorseer():
    """checks >= N−1: no forecast step is verified, so none is rejected: SpeCa is taylorseer:N,O."""
    spec = "speca:N=4,checks=3,warmup=2"
    x_a, outs_a, rt_a = run_cachec(spec)
    x_b, outs_b, rt_b = run_cachec("taylorseer:4,O=2,warmup=2")
    assert rt_a.stats.schedule == rt_b.stats.schedule and "R" in rt_a.stats.schedule
    assert all(e is None for e in rt_a.stats.signals)
    assert_same((x_a, outs_a), (x_b, outs_b), spec, tol=1e-5)
