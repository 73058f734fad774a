"""Feature forecasting as linear algebra on a small per-stream state (TaylorSeer, HiCache, FoCa, AB-Cache).

Every forecast method cachec supports keeps, per cached stream, a few tensors of the stream's
shape (its *state*) and is *linear* in them: a full step maps ``[F, state]`` to the new state and
a cached step maps ``state`` to the forecast ``F̂`` (and, for FoCa, to a new state). Only the
coefficients depend on the method and on where the step lies in the schedule, and they are a
handful of host scalars. So the graph rewrite is the same for every method — a weightless
"mix" segment ``out_j = Σ_i C[j, i] · in_i`` whose coefficient matrix ``C`` is a runtime input —
and this module computes ``C``. That keeps forecasts exportable (ONNX, TensorRT), keeps the
method out of the graph, and makes each method checkable against a hand computation.

Definitions: ``docs/predictive_policies.md``.
"""

from __future__ import annotations

import math

Matrix = list[list[float]]

UPDATE = "forecast__update"  # coefficient input of the full-step state update
PREDICT = "forecast__predict"  # coefficient input of the cached-step forecast


def _zeros(rows: int, cols: int) -> Matrix:
    return [[0.0] * cols for _ in range(rows)]


class ForecastMethod:
    """A linear forecast: ``state`` tensors per stream, and the two coefficient matrices.

    ``update(n_prev_full, delta)`` has one row per state tensor and columns ``[F, state_0, …]``
    (F = the stream's freshly computed value). ``predict(x, n_full)`` has a first row for ``F̂``
    and then one row per state tensor listed in ``predict_writes``, over columns ``state``.
    ``n_prev_full`` counts full steps before this one, ``delta`` is the distance in steps to the
    previous full step, ``x`` the distance from the last full step, ``n_full`` the full steps so far.
    """

    name = ""
    state = 1
    predict_writes: tuple[int, ...] = ()

    def update(self, n_prev_full: int, delta: int) -> Matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, x: int, n_full: int) -> Matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_names(self) -> list[str]:
        return [f"d{i}" for i in range(self.state)]

    def predict_at(self, step: int, full_steps: list[int]) -> Matrix:
        """The forecast coefficients of cached step ``step`` after the full steps ``full_steps``
        (ascending). Most methods need only the distance from the last one; a method whose
        coefficients depend on every gap (Adams–Bashforth) overrides this."""
        return self.predict(step - full_steps[-1], len(full_steps))


class Taylor(ForecastMethod):
    """TaylorSeer: ``D_0 = F`` and recursive backward differences ``D_{i+1} = (D_i^new − D_i^old)/Δ``
    refreshed at each full step (an order exists once enough full steps came before); forecast
    ``F̂ = Σ D_i·x^i/i!``. Order 0 is FORA: ``F̂ = D_0``, the last computed value."""

    name = "taylor"

    def __init__(self, order: int):
        self.order = order
        self.state = order + 1

    def update(self, n_prev_full: int, delta: int) -> Matrix:
        cols = 1 + self.state
        m = _zeros(self.state, cols)
        m[0][0] = 1.0
        for i in range(self.order):
            if n_prev_full < i + 1:  # the previous full step had no D_i: D_{i+1} and above are absent
                break
            m[i + 1] = [(a - (1.0 if c == 1 + i else 0.0)) / delta for c, a in enumerate(m[i])]
        return m

    def present(self, n_full: int) -> int:
        """The highest order whose D exists after ``n_full`` full steps."""
        return min(self.order, max(n_full - 1, 0))

    def basis(self, x: int, k: int) -> float:
        return x**k / math.factorial(k)

    def predict(self, x: int, n_full: int) -> Matrix:
        row = [self.basis(x, k) if k <= self.present(n_full) else 0.0 for k in range(self.state)]
        return [row]


class Hermite(Taylor):
    """HiCache: the TaylorSeer state and update, forecast on scaled physicists' Hermite polynomials
    ``F̂ = D_0 + Σ_{k≥1} D_k·σ^k·H_k(σx)/k!``."""

    name = "hermite"

    def __init__(self, order: int, sigma: float):
        super().__init__(order)
        self.sigma = sigma

    def basis(self, x: int, k: int) -> float:
        if k == 0:
            return 1.0
        z = self.sigma * x
        h_prev, h = 1.0, 2.0 * z  # H_0, H_1
        for n in range(1, k):
            h_prev, h = h, 2.0 * z * h - 2.0 * n * h_prev
        return self.sigma**k * h / math.factorial(k)


class FoCa(ForecastMethod):
    """FoCa as cachec defines it (the paper's exact update is unverified): the feature follows an
    ODE integrated one denoising step at a time between full steps.

    State ``[L, G, P1, P2]``: last full value, slope per step from the last two full steps, and
    the values one and two steps back. A cached step predicts with BDF2,
    ``F̃ = 4/3·P1 − 1/3·P2 + 2/3·G``, then corrects with Heun on the slopes ``G`` and ``F̃ − P1``:
    ``F̂ = P1 + (G + F̃ − P1)/2 = 7/6·P1 − 1/6·P2 + 5/6·G``, and shifts ``P2 ← P1, P1 ← F̂``.
    It is exact for features linear in the step index once two consecutive full steps (the
    warm-up) have set ``P1``, ``P2`` and ``G`` consistently.
    """

    name = "foca"
    state = 4
    predict_writes = (2, 3)

    def state_names(self) -> list[str]:
        return ["last", "slope", "prev1", "prev2"]

    def update(self, n_prev_full: int, delta: int) -> Matrix:
        F, L, P1 = 0, 1, 3  # columns: [F, L, G, P1, P2]
        m = _zeros(4, 5)
        m[0][F] = 1.0  # L <- F
        if n_prev_full > 0:  # G <- (F - L) / delta
            m[1][F], m[1][L] = 1.0 / delta, -1.0 / delta
        m[2][F] = 1.0  # P1 <- F
        if n_prev_full > 0:  # P2 <- P1 (the value one step back), or F on the first full step
            m[3][P1] = 1.0
        else:
            m[3][F] = 1.0
        return m

    def predict(self, x: int, n_full: int) -> Matrix:
        forecast = [0.0, 5.0 / 6.0, 7.0 / 6.0, -1.0 / 6.0]  # over [L, G, P1, P2]
        return [forecast, list(forecast), [0.0, 0.0, 1.0, 0.0]]  # F̂, P1 <- F̂, P2 <- P1


class HermiteHighTerms(Hermite):
    """FreqCa's high band: HiCache's state and update, forecasting only ``G = Σ_{k≥1} D_k·σ^k·H_k(σx)/k!``
    (the series without ``D_0``); the planner's band split adds ``D_0`` and removes ``low(G)``
    (:meth:`cachec.planner.Planner.band_forecast`), which keeps the low band at its last value."""

    name = "hermite_high"

    def predict(self, x: int, n_full: int) -> Matrix:
        row = super().predict(x, n_full)[0]
        return [[0.0] + row[1:]]


def lagrange_weights(at: float, points: list[float]) -> list[float]:
    """The weights ``w_j`` with ``p(at) = Σ_j w_j·p(points[j])`` for every polynomial ``p`` of degree
    below ``len(points)``: the Lagrange basis ``w_j = Π_{l≠j} (at − x_l)/(x_j − x_l)``."""
    weights = []
    for j, xj in enumerate(points):
        w = 1.0
        for m, xm in enumerate(points):
            if m != j:
                w *= (at - xm) / (xj - xm)
        weights.append(w)
    return weights


class AdamsBashforth(ForecastMethod):
    """AB-Cache (cachec's reading, docs/methods.md): the k-th-order linear multistep forecast
    ``F̂_n = Σ_{i=1..k} c_i·F_{n−i}`` over the last k *computed* values of the stream.

    State ``[f_0, …, f_{k−1}]``: the values of the last k full steps, newest first (a full step
    shifts them and puts the fresh value in ``f_0``; slots no full step has filled yet hold the
    first value). The coefficients are those that make the combination exact for every feature
    that is a polynomial of degree k−1 in the step index (truncation error O(h^k)): the Lagrange
    weights of the full steps' positions, evaluated at the cached step. On evenly spaced full
    steps one step apart they are the binomial ``c_i = (−1)^{i+1}·C(k, i)`` (k=2: 2, −1; k=3:
    3, −3, 1); at irregular gaps (a hybrid's decision) they are the variable-step weights of the
    real positions. Until k full steps exist the order is the number of full steps so far.
    k=1 is FORA's reuse and k=2 TaylorSeer's order 1 (same forecast at any gaps).
    """

    name = "adams_bashforth"

    def __init__(self, order: int):
        self.order = order
        self.state = order

    def state_names(self) -> list[str]:
        return [f"f{i}" for i in range(self.state)]

    def update(self, n_prev_full: int, delta: int) -> Matrix:
        m = _zeros(self.state, 1 + self.state)
        m[0][0] = 1.0  # f_0 <- F
        for i in range(1, self.state):
            if n_prev_full >= i:
                m[i][i] = 1.0  # f_i <- f_{i-1} (column 1 + (i - 1))
            else:
                m[i][0] = 1.0  # no value that old yet: hold the fresh one
        return m

    def predict(self, x: int, n_full: int) -> Matrix:  # pragma: no cover - predict_at is what is called
        raise NotImplementedError("AdamsBashforth forecasts from the full steps' positions: call predict_at")

    def predict_at(self, step: int, full_steps: list[int]) -> Matrix:
        newest_first = full_steps[::-1][: self.state]
        weights = lagrange_weights(step, newest_first)
        return [weights + [0.0] * (self.state - len(weights))]


class ForecastTracker:
    """Where a trajectory stands for a forecast method: which coefficients this step needs."""

    def __init__(self, method: ForecastMethod):
        self.method = method
        self.n_full = 0
        self.last_full: int | None = None
        self.full_steps: list[int] = []

    def step_inputs(self, step: int, full: bool) -> dict[str, Matrix]:
        if full:
            delta = step - self.last_full if self.last_full is not None else 1
            coeffs = {UPDATE: self.method.update(self.n_full, delta)}
            self.n_full += 1
            self.last_full = step
            self.full_steps.append(step)
            return coeffs
        return {PREDICT: self.method.predict_at(step, self.full_steps)}
