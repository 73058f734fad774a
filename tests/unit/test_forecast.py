"""Forecast coefficients against hand computations on synthetic features, and the linear-mix segment.

The forecast policies hand the graph a coefficient matrix per step (``cachec.forecast``); here
the matrices drive synthetic feature sequences whose forecasts are computed by hand (closed-form
polynomials, numpy's Hermite polynomials, the FoCa recurrences written out), and the weightless
mix segment is checked against a direct matrix product.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cachec.forecast import FoCa, ForecastTracker, Hermite, Taylor
from cachec.planner.segments import linear_mix


def run_schedule(method, schedule: str, feature):
    """Drive a method's matrices over ``schedule`` (F/R letters) with scalar ``feature(s)``.

    Returns the forecast of every cached step, computed as the runtime's graphs would: the
    update matrix maps ``[F, state]`` to the new state, the predict matrix maps the state to
    ``[F̂, written state...]``.
    """
    tracker = ForecastTracker(method)
    state = np.zeros(method.state)
    out = {}
    for s, c in enumerate(schedule):
        coeffs = tracker.step_inputs(s, c == "F")
        if c == "F":
            u = np.array(coeffs["forecast__update"])
            state = u @ np.concatenate([[feature(s)], state])
        else:
            p = np.array(coeffs["forecast__predict"])
            y = p @ state
            out[s] = y[0]
            for k, idx in enumerate(method.predict_writes):
                state[idx] = y[1 + k]
    return out


def test_taylor_order_2_forecast_is_the_hand_computed_polynomial():
    # full steps 0, 3, 6 of f(s) = 2 + 0.5 s - 0.1 s^2; after the third the state is
    # D0 = f(6), D1 = (f(6) - f(3)) / 3, D2 = (D1 - D1_old) / 3 with D1_old = (f(3) - f(0)) / 3
    f = lambda s: 2 + 0.5 * s - 0.1 * s * s  # noqa: E731
    got = run_schedule(Taylor(2), "FRRFRRFRR", f)
    d1_old = (f(3) - f(0)) / 3
    d1 = (f(6) - f(3)) / 3
    d2 = (d1 - d1_old) / 3
    for s in (7, 8):
        x = s - 6
        assert got[s] == pytest.approx(f(6) + d1 * x + d2 * x * x / 2, rel=1e-12)
    # before the third full step only orders 0 and 1 exist
    assert got[4] == pytest.approx(f(3) + (f(3) - f(0)) / 3 * 1, rel=1e-12)
    # and before the second only order 0 (FORA: the last computed value)
    assert got[1] == got[2] == pytest.approx(f(0))


def test_taylor_is_exact_on_linear_features_and_order_0_is_reuse():
    f = lambda s: 1.5 - 0.25 * s  # noqa: E731
    got = run_schedule(Taylor(1), "FRRRFRRRFRR", f)
    for s in (5, 6, 7, 9, 10):
        assert got[s] == pytest.approx(f(s), rel=1e-12)
    reuse = run_schedule(Taylor(0), "FRRFRR", f)
    assert reuse == {1: f(0), 2: f(0), 4: f(3), 5: f(3)}


def test_hermite_forecast_uses_numpys_physicists_hermite_polynomials():
    sigma = 0.7
    f = lambda s: math.sin(0.3 * s)  # noqa: E731
    got = run_schedule(Hermite(3, sigma), "FRRFRRFRRFRRR", f)
    state = Taylor(3)
    # rebuild D_0..D_3 after full steps 0, 3, 6, 9 by the recursive differences, by hand
    d = [[f(0)]]
    for s in (3, 6, 9):
        new = [f(s)]
        for i in range(min(len(d[-1]), 3)):
            new.append((new[i] - d[-1][i]) / 3)
        d.append(new)
    D = d[-1]
    assert len(D) == state.state
    for s in (10, 11, 12):
        z = sigma * (s - 9)
        want = D[0] + sum(D[k] * sigma**k * np.polynomial.hermite.hermval(z, [0] * k + [1]) / math.factorial(k)
                          for k in range(1, 4))
        assert got[s] == pytest.approx(want, rel=1e-12)


def test_foca_recurrences_written_out_by_hand():
    f = lambda s: 0.3 * s * s - s + 4  # noqa: E731
    got = run_schedule(FoCa(), "FRRFRRR", f)
    # full 0: L = P1 = P2 = f0, G = 0; step 1: F̂ = 7/6 f0 - 1/6 f0 + 0 = f0
    f0, f3 = f(0), f(3)
    assert got[1] == pytest.approx(f0) and got[2] == pytest.approx(f0)
    # full 3: G = (f3 - f0) / 3, P2 = value at step 2 (= f0), P1 = f3
    g = (f3 - f0) / 3
    p1, p2 = f3, f0
    for s in (4, 5, 6):
        pred = 4 / 3 * p1 - 1 / 3 * p2 + 2 / 3 * g  # BDF2 predictor
        corr = p1 + 0.5 * (g + (pred - p1))  # Heun corrector
        assert got[s] == pytest.approx(corr, rel=1e-12)
        p1, p2 = corr, p1
    # exact on linear features once two consecutive full steps (the warmup) set P1, P2 and G right
    linear = run_schedule(FoCa(), "FFRRRFRRR", lambda s: 2 - 0.5 * s)
    for s in (2, 3, 4, 6, 7, 8):
        assert linear[s] == pytest.approx(2 - 0.5 * s, rel=1e-12)


def test_linear_mix_segment_is_the_matrix_product():
    torch.manual_seed(0)
    a, b, c = (torch.randn(2, 5, 3) for _ in range(3))
    coeff = torch.randn(2, 3)
    meta = {"a": a, "b": b, "c": c, "C": coeff}
    gm = linear_mix([(["a", "b", "c"], ["y0", "y1"])], "C", meta)
    y0, y1 = gm(a, b, c, coeff)
    stacked = torch.stack([a, b, c])
    torch.testing.assert_close(y0, torch.einsum("k,k...->...", coeff[0], stacked))
    torch.testing.assert_close(y1, torch.einsum("k,k...->...", coeff[1], stacked))
