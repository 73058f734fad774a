"""Hybrid policies (``DECISION+FORECASTER``) against independent hook references.

The references (``tests/reference_hybrid.py``) share no code with cachec: the decisions are the
existing hook references, the forecast of ``taylorseer`` is cache-dit's TaylorSeer calibrator
restated from its definition (what cache-dit's DBCache applies to the middle blocks' residual),
``hicache`` / ``foca`` the per-stream forecasters of ``reference_predictive.py``. Set-up as in
``test_policies_predictive.py``: 20-step trajectories, batch 2, fp32, CPU, ``x <- x - out / T``;
per case the full steps, the probe signals, every step's output and the final latent agree.

Every schedule has irregular gaps between full steps (the decision makes them), so the forecasts
are tested at real step distances. cache-dit's calibrator forms a derivative only once its step
counter exceeds 1 (step 3 of a pipeline's first call), cachec's from the second full step: the
cases keep the first cached step after enough full steps (DBCache's warm-up ``W``, MagCache's
retention, a mask or ``warmup``) for both to hold every order.
"""

from __future__ import annotations

import json

import pytest
import torch
from reference_hybrid import CacheDitTaylorSeer, HybridPredictive, HybridTeaCache
from trajectories import Driver

import cachec

T = 20
RTOL = ATOL = 1e-4
MARGIN = 0.01  # minimum relative distance of a compared probe value from its threshold
MAG_RATIOS = [0.969, 1.001, 0.976, 1.0, 0.999, 0.928, 0.918, 1.012, 0.939, 0.932, 1.019, 0.952, 0.992, 0.945, 0.961,
              0.898, 0.952, 0.976, 0.931, 0.953]
MASK = "FFFFFRRFRRRFRFRRFRRF"

# (model, cachec spec, reference spec, reference kwargs); thresholds keep a margin on these seeded models
CASES = [
    ("dit", "dbcache:t=0.9,W=8+taylorseer:O=1", None, {}),
    ("dit", "fbcache:0.75,warmup=6+taylorseer:O=2", "dbcache:F=1,B=0,t=0.75,W=0,warmup=6+taylorseer:O=2", {}),
    ("dit", "dbcache:t=0.72,W=6+foca", None, {}),
    ("dit", "magcache:0.13,r=0.3,ratios=RATIOS+taylorseer:O=1", "magcache:0.13,r=0.3+taylorseer:O=1",
     {"ratios": MAG_RATIOS}),
    ("dit", f"static:{MASK}+hicache:O=1,sigma=0.8", "budget:base=step+hicache:O=1,sigma=0.8", {"schedule": MASK}),
    ("dit", "teacache:0.5,warmup=5+taylorseer:O=1", None, {}),
    ("dit", "easycache:0.1,warmup=4+taylorseer:O=1", None, {}),
    ("flux", "dbcache:t=0.8,W=8+taylorseer:O=1", None, {}),
    ("wan", "dbcache:t=0.025,W=8+taylorseer:O=1", None, {}),
]

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # whole trajectories on three models

DRIVER = Driver(T, 2)


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


@pytest.fixture(scope="module")
def ratios_file(tmp_path_factory):
    """A calibration file carrying MAG_RATIOS (the other measurements are placeholders)."""
    n = len(MAG_RATIOS)
    path = tmp_path_factory.mktemp("calib") / "ratios.json"
    path.write_text(json.dumps({"format": "cachec-calibration", "version": 1, "model": "test", "steps": n,
                                "samples": 1, "seed": 0, "gains": [1.0] * n, "ratios": MAG_RATIOS, "errors": {}}))
    return str(path)


def _reference(short: str, spec: str, kw: dict):
    model, _ = DRIVER.model_and_inputs(short)
    cls = HybridTeaCache if spec.startswith("teacache") else HybridPredictive
    with cls(model, spec, T, **kw) as ref:
        x, outs = DRIVER.trajectory(ref, short)
    return x, outs, ref


def test_cachedit_taylorseer_reference_alone():
    """cache-dit's calibrator as restated: no derivative while its counter is at most 1 (steps 0..2
    of a first call), then a feature linear in the step is forecast exactly at any gap."""
    def f(s):
        return torch.tensor([2.0 + 0.5 * s, -1.0 * s])

    ts = CacheDitTaylorSeer(1)
    for s in (0, 1, 2):
        ts.update(f(s), s)
    assert ts.cur[1] is None
    torch.testing.assert_close(ts.predict(4), f(2))  # order 0 only: the last value
    ts.update(f(5), 5)  # a gap of 3
    torch.testing.assert_close(ts.cur[1], torch.tensor([0.5, -1.0]))
    for s in (6, 7, 9):
        torch.testing.assert_close(ts.predict(s), f(s))


@pytest.mark.parametrize("short, spec, ref_spec, ref_kw", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_hybrid_matches_reference(short, spec, ref_spec, ref_kw, ratios_file):
    spec = spec.replace("RATIOS", ratios_file)
    x_ref, outs_ref, ref = _reference(short, ref_spec or spec, ref_kw)
    # preconditions: full steps at irregular distances after the warm-up, and a decision not on a knife edge
    gaps = {b - a for a, b in zip(ref.full_steps[5:], ref.full_steps[6:], strict=False)}
    assert "R" in ref.schedule and len(gaps) > 1, ref.schedule
    compared = getattr(ref, "compared", [])
    if compared:
        t = ref.p.get("t", ref.p.get("tau"))
        assert min(abs(v - t) / t for v in compared) > MARGIN, "threshold too close to a compared value"

    model, kw = DRIVER.model_and_inputs(short)
    rt = cachec.CacheRuntime(cachec.build_program(model, kw, spec), spec, num_steps=T)
    x, outs = DRIVER.run(rt, short)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps, ctx
    if ref.signals[1:] and all(s is not None for s in ref.signals[1:]) and not spec.startswith("magcache"):
        torch.testing.assert_close(torch.tensor(rt.stats.signals[1:], dtype=torch.float64),
                                   torch.tensor(ref.signals[1:], dtype=torch.float64), rtol=1e-4, atol=1e-6)
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL)
    # the forecast matters: the same decision reusing the last residual (order 0) gives other outputs
    _, outs_copy, _ = _reference(short, (ref_spec or spec).split("+")[0] + "+taylorseer:O=0", ref_kw)
    differ = max(float((a - b).abs().max()) for a, b in zip(outs, outs_copy, strict=True))
    assert differ > 10 * ATOL, f"forecast and copy differ by {differ} only: the test cannot tell them apart"
