"""Hook-based references for cachec's predictive, adaptive and budgeted policies.

Independent of the ``cachec`` package (it shares no code with it; the generic block/stream
helpers come from ``tests/reference_hooks.py``, which is test code too). Written from the
definitions in ``docs/predictive_policies.md``; every rule is restated in the docstring of the
code that implements it.

:class:`PredictiveReference` wraps an *original* diffusers denoiser and follows the protocol of
:class:`reference_hooks.HookedReference`: call it with the model's keyword arguments, it returns
the output tensor; after a trajectory of ``num_steps`` calls :attr:`~PredictiveReference.schedule`
(one letter a step, ``F`` full / ``R`` cached), :attr:`~PredictiveReference.full_steps` and
:attr:`~PredictiveReference.signals` describe it, and the next call starts a new trajectory. The
full forward runs on every step (the reference is about numbers, not speed); forward hooks
substitute what a cached step would use, so every module downstream of a substitution sees
exactly what a cached variant feeds it.

Policies (``s = 0..T-1``; ``forced(s)`` = ``s == 0`` or ``s < warmup`` or ``s >= T - final``)::

    taylorseer:N,O=2,streams=module|step,warmup=2,final=0
    hicache:N,O=2,sigma=0.5,streams=module|step,warmup=3
    foca:N,streams=module|step,warmup=3
    abcache:N,k=2,streams=module|step,warmup=2
    freqca:N=6,O=2,sigma=0.71,cutoff=0.1,warmup=3   (always the step stream)
    speca:tau0=7,N=9,O=2,checks=2,decay=0.3,tau_min=0.1,warmup=3   (reference_speca.py)
    magcache:t,K=5,r=0.1            + ratios=[...] (python list, constructor argument)
    easycache:tau,warmup=5,final=1
    dbcache:F=1,B=0,t=0.08,W=8,M=-1,MC=-1
    budget:nfe=K,base=module|step|forecast   + schedule="FRR..." (constructor argument; default:
                                               the uncalibrated even spacing round(i*T/K))

Streams (what a cached step forecasts or reuses):

* ``module`` — every unit of :func:`reference_hooks.cached_units` (the attention / feed-forward
  modules of every transformer block, a FLUX single block's ``proj_out``); a unit returning a
  tuple has one stream per tensor in it. A cached step replaces the unit's output by the forecast.
* ``step`` — one stream per residual stream of the block stack: ``R = output(last block) −
  input(block 0)`` for ``img`` and, where both ends carry it, ``txt``. A cached step replaces the
  last block's output by ``input(block 0, current) + R̂``.
"""

from __future__ import annotations

import math

import torch
from reference_hooks import HookOwner, block_list, cached_units, in_streams, out_streams, rel_l1, with_streams

# ------------------------------------------------------------------------------------------------
# spec parsing: name -> (defaults, main key). warmup/final are accepted by every policy.

SPECS: dict[str, tuple[dict, str]] = {
    "taylorseer": ({"N": 4, "O": 2, "streams": "module", "warmup": 2, "final": 0}, "N"),
    "hicache": ({"N": 5, "O": 2, "sigma": 0.5, "streams": "module", "warmup": 3, "final": 0}, "N"),
    "foca": ({"N": 5, "streams": "module", "warmup": 3, "final": 0}, "N"),
    "abcache": ({"N": 3, "k": 2, "streams": "module", "warmup": 2, "final": 0}, "N"),
    "speca": ({"N": 9, "O": 2, "checks": 2, "tau0": 7.0, "decay": 0.3, "tau_min": 0.1, "streams": "module",
               "warmup": 3, "final": 0}, "tau0"),
    "freqca": ({"N": 6, "O": 2, "sigma": 0.71, "cutoff": 0.1, "streams": "step", "warmup": 3, "final": 0}, "N"),
    "magcache": ({"t": 0.24, "K": 5, "r": 0.1, "ratios": "", "warmup": 0, "final": 0}, "t"),
    "easycache": ({"tau": 0.05, "warmup": 5, "final": 1}, "tau"),
    "dbcache": ({"F": 1, "B": 0, "t": 0.08, "W": 8, "M": -1, "MC": -1, "warmup": 0, "final": 0}, "F"),
    "budget": ({"nfe": 10, "base": "module", "calib": "", "warmup": 0, "final": 0}, "nfe"),
}
FORECAST_POLICIES = ("taylorseer", "hicache", "foca", "abcache", "freqca")


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"taylorseer:3,O=1"`` -> ``("taylorseer", {"N": 3, "O": 1, "streams": "module", ...})``.

    A leading bare value is the policy's main key; every value takes the type of its default.
    """
    name, _, args = spec.partition(":")
    defaults, main = SPECS[name]
    params = dict(defaults)
    for i, item in enumerate(a for a in args.split(",") if a.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            assert i == 0, f"{spec}: only the first value may be bare"
            key, value = main, item
        key = key.strip()
        assert key in params, f"{spec}: unknown key {key!r}"
        params[key] = type(defaults[key])(value.strip())
    if name in FORECAST_POLICIES:
        assert params["streams"] in ("module", "step"), spec
    if name == "budget":
        assert params["base"] in ("module", "step", "forecast") and not params["calib"], spec
    return name, params


# ------------------------------------------------------------------------------------------------
# per-stream forecasters: update(F, s) at a full step, predict(s) at a cached step


def hermite(k: int, z: float) -> float:
    """Physicists' Hermite polynomial: ``H_0 = 1, H_1 = 2z, H_{n+1} = 2z·H_n − 2n·H_{n−1}``."""
    if k == 0:
        return 1.0
    h0, h1 = 1.0, 2.0 * z
    for n in range(1, k):
        h0, h1 = h1, 2.0 * z * h1 - 2.0 * n * h0
    return h1


class TaylorStream:
    """TaylorSeer's state ``D_0..D_O`` of one stream.

    Full step ``s`` with value ``F`` (``Δ = s − s_prevfull``): ``D_0 ← F``; for ``i = 0..O−1``,
    if the previous full step had ``D_i`` then ``D_{i+1} ← (D_i^new − D_i^old)/Δ``, else
    ``D_{i+1}`` and all higher orders are absent. Cached step: ``x = s − s_lastfull``,
    ``F̂ = Σ_{i present} D_i · basis(x, i)`` with the Taylor basis ``x^i / i!``.
    """

    def __init__(self, order: int):
        self.order = order
        self.D: list[torch.Tensor] = []
        self.last: int | None = None

    def update(self, F: torch.Tensor, s: int) -> None:
        new = [F.clone()]
        if self.last is not None:
            delta = s - self.last
            for i in range(self.order):
                if i >= len(self.D):  # the previous full step had no D_i
                    break
                new.append((new[i] - self.D[i]) / delta)
        self.D, self.last = new, s

    def basis(self, x: int, i: int) -> float:
        return x**i / math.factorial(i)

    def predict(self, s: int) -> torch.Tensor:
        x = s - self.last
        out = self.D[0].clone()
        for i in range(1, len(self.D)):
            out = out + self.D[i] * self.basis(x, i)
        return out


class HermiteStream(TaylorStream):
    """HiCache: TaylorSeer's state and update; forecast ``F̂ = D_0 + Σ_{k≥1} D_k·σ^k·H_k(σx)/k!``."""

    def __init__(self, order: int, sigma: float):
        super().__init__(order)
        self.sigma = sigma

    def basis(self, x: int, k: int) -> float:
        return self.sigma**k * hermite(k, self.sigma * x) / math.factorial(k)


class FoCaStream:
    """FoCa (cachec's reading): a feature ODE integrated one denoising step at a time.

    State: ``L`` last full value, ``G`` slope per step, ``P1`` the value one step back (computed
    or forecast), ``P2`` two steps back.

    * Full step, value ``F``: ``G ← (F − L)/Δ`` if a previous full step exists, else ``G ← 0``;
      ``P2 ← P1`` (``P2 ← F`` on the first full step); ``P1 ← F``; ``L ← F``.
    * Cached step: BDF2 predictor ``F̃ = 4/3·P1 − 1/3·P2 + 2/3·G``, Heun corrector on the
      slopes ``G`` and ``F̃ − P1``: ``F̂ = P1 + ½·(G + (F̃ − P1))``; then ``P2 ← P1, P1 ← F̂``.
    """

    def __init__(self):
        self.L = self.G = self.P1 = self.P2 = None
        self.last: int | None = None

    def update(self, F: torch.Tensor, s: int) -> None:
        F = F.clone()
        if self.last is None:
            self.G, self.P2 = torch.zeros_like(F), F
        else:
            self.G, self.P2 = (F - self.L) / (s - self.last), self.P1
        self.P1 = self.L = F
        self.last = s

    def predict(self, s: int) -> torch.Tensor:
        predictor = 4 / 3 * self.P1 - 1 / 3 * self.P2 + 2 / 3 * self.G
        forecast = self.P1 + 0.5 * (self.G + (predictor - self.P1))
        self.P2, self.P1 = self.P1, forecast
        return forecast.clone()


class AdamsBashforthStream:
    """AB-Cache (cachec's reading): the forecast at step ``s`` is the value at ``s`` of the
    polynomial of degree ``m − 1`` through the last ``m = min(k, full steps so far)`` computed
    values at their steps — the k-step linear combination exact for features polynomial of degree
    k − 1 in the step (on steps one apart: ``2F_{n−1} − F_{n−2}`` for k = 2, ``3F_{n−1} − 3F_{n−2} +
    F_{n−3}`` for k = 3). Evaluated here by Newton's divided differences (cachec uses Lagrange
    weights), so the two computations are independent.
    """

    def __init__(self, k: int):
        self.k = k
        self.points: list[tuple[int, torch.Tensor]] = []  # (step, value), oldest first

    def update(self, F: torch.Tensor, s: int) -> None:
        self.points = (self.points + [(s, F.clone())])[-self.k:]

    def predict(self, s: int) -> torch.Tensor:
        xs = [p[0] for p in self.points]
        table = [p[1] for p in self.points]  # divided differences, built in place
        coeffs = [table[0]]
        for level in range(1, len(xs)):
            table = [(table[i + 1] - table[i]) / (xs[i + level] - xs[i]) for i in range(len(table) - 1)]
            coeffs.append(table[0])
        out, basis = torch.zeros_like(coeffs[0]), 1.0
        for level, c in enumerate(coeffs):  # Newton form: Σ c_j Π_{i<j} (s − x_i)
            out = out + c * basis
            basis *= s - xs[level]
        return out


def dct_low_band(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The low band of ``x`` (``[batch, tokens, channels]``): orthonormal DCT-II over the tokens —
    2-D over the ``s × s`` grid when the token count is a square ``s²``, else 1-D over the sequence —
    keeping the frequencies ``(k_h, k_w)`` with ``√((k_h/h)² + (k_w/w)²) ≤ cutoff · (its largest
    value)``, then the inverse DCT (scipy, in float64)."""
    from scipy.fft import dctn, idctn

    b, n, c = x.shape
    side = math.isqrt(n)
    h, w = (side, side) if side * side == n else (1, n)
    grid = x.detach().double().numpy().reshape(b, h, w, c)
    freq = dctn(grid, axes=(1, 2), norm="ortho")
    kh = (torch.arange(h, dtype=torch.float64) / h)[:, None]
    kw = (torch.arange(w, dtype=torch.float64) / w)[None, :]
    radius = torch.sqrt(kh**2 + kw**2)
    keep = (radius <= cutoff * radius.max() + 1e-9).numpy()
    low = idctn(freq * keep[None, :, :, None], axes=(1, 2), norm="ortho")
    return torch.from_numpy(low.reshape(b, n, c)).to(x.dtype)


class FreqCaStream(HermiteStream):
    """FreqCa on one stream (the stack residual): HiCache's state and update at full steps; a
    cached step returns ``low(D_0) + high(F̂_hermite)`` — the low band of the last computed value,
    the high band of the Hermite forecast (``high = x − low(x)``)."""

    def __init__(self, order: int, sigma: float, cutoff: float):
        super().__init__(order, sigma)
        self.cutoff = cutoff

    def predict(self, s: int) -> torch.Tensor:
        forecast = super().predict(s)
        return dct_low_band(self.D[0], self.cutoff) + forecast - dct_low_band(forecast, self.cutoff)


def make_forecaster(name: str, p: dict):
    """The per-stream forecaster of a policy (``budget`` reuses by order 0, forecasts by order 1)."""
    if name == "taylorseer":
        return lambda: TaylorStream(p["O"])
    if name == "hicache":
        return lambda: HermiteStream(p["O"], p["sigma"])
    if name == "foca":
        return FoCaStream
    if name == "abcache":
        return lambda: AdamsBashforthStream(p["k"])
    if name == "freqca":
        return lambda: FreqCaStream(p["O"], p["sigma"], p["cutoff"])
    if name == "speca":
        return lambda: TaylorStream(p["O"])
    if name == "budget":
        return lambda: TaylorStream(1 if p["base"] == "forecast" else 0)
    return lambda: TaylorStream(0)  # magcache: reuse the stack residual


# ------------------------------------------------------------------------------------------------
# schedules that do not depend on the model


def magcache_gammas(ratios: list[float], T: int) -> list[float]:
    """``γ_s = ratios[round(s·(n−1)/(T−1))]``, n = len(ratios): nearest-index resampling to T steps."""
    n = len(ratios)
    return [ratios[round(s * (n - 1) / (T - 1))] for s in range(T)]


def even_budget_schedule(nfe: int, T: int) -> str:
    """Without calibration a budget's K full steps are ``round(i·T/K)`` for i = 0..K−1."""
    full = {round(i * T / nfe) for i in range(nfe)}
    return "".join("F" if s in full else "R" for s in range(T))


def _mean_abs(x: torch.Tensor) -> float:
    return float(x.abs().mean())


# ------------------------------------------------------------------------------------------------


class PredictiveReference(HookOwner):
    """A predictive / adaptive / budgeted policy on the original model, by hooks.

    ``ratios`` (magcache) is the ratio list itself; ``schedule`` (budget) the F/R letters to
    follow (by default the uncalibrated even spacing).

    Per trajectory: :attr:`schedule`, :attr:`full_steps`; :attr:`signals` the probe value of each
    step (dbcache ``rel``, easycache ``d``, magcache ``E``; ``None`` where there is none);
    :attr:`compared` every value a dynamic decision compared with its threshold (for tests that
    keep thresholds away from them).
    """

    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int, *, ratios: list[float] | None = None,
                 schedule: str | None = None):
        self.model = model
        self.name, self.p = parse_spec(spec)
        self.T = num_steps
        self.blocks = block_list(model)
        self.handles: list = []
        self.new_stream = make_forecaster(self.name, self.p)
        if self.name == "magcache":
            assert ratios is not None, "magcache: pass ratios=[...]"
            self.gammas = magcache_gammas(list(ratios), num_steps)
        if self.name == "budget":
            self.budget_schedule = schedule or even_budget_schedule(self.p["nfe"], num_steps)
            assert len(self.budget_schedule) == num_steps and set(self.budget_schedule) <= {"F", "R"}
        self.reset()

        hook = self.handles.append
        if self.name == "budget":  # fora (module), static (step), taylorseer order 1 on module streams
            streams = "step" if self.p["base"] == "step" else "module"
        elif self.name == "magcache":  # the stack residual, as static
            streams = "step"
        else:
            streams = self.p.get("streams")  # None: dbcache, easycache
        if streams == "module":
            for unit in cached_units(model):
                hook(unit.register_forward_hook(self._unit_hook))
        elif streams == "step":
            hook(self.blocks[0].register_forward_pre_hook(self._stack_in, with_kwargs=True))
            hook(self.blocks[-1].register_forward_hook(self._stack_out))
        elif self.name == "dbcache":
            L, F, B = len(self.blocks), self.p["F"], self.p["B"]
            assert F >= 1 and F + B < L, f"dbcache: F={F}, B={B} leave no middle block of {L}"
            hook(self.blocks[0].register_forward_pre_hook(self._stack_in, with_kwargs=True))
            hook(self.blocks[F - 1].register_forward_hook(self._db_probe))
            hook(self.blocks[L - B - 1].register_forward_hook(self._db_mid))
        else:
            assert self.name == "easycache", self.name  # works on the call's input and output

    # -- trajectory ------------------------------------------------------------------------------
    def reset(self) -> None:
        self.step = 0
        self.schedule = ""
        self.signals: list[float | None] = []
        self.compared: list[float] = []  # every value a dynamic decision compared with its threshold
        self.last_full: int | None = None
        self.full: bool | None = None
        self.streams: dict = {}  # stream key -> forecaster
        self.cur: dict = {}
        # magcache
        self.Gamma, self.E, self.k = 1.0, 0.0, 0
        # easycache
        self.x_prev = self.x_pf = self.v_pf = self.delta = self.rate = None
        self.err = 0.0
        # dbcache
        self.r_ref, self.R_mid = None, {}
        self.n_cached = self.consecutive = 0

    @property
    def full_steps(self) -> list[int]:
        return [i for i, c in enumerate(self.schedule) if c == "F"]

    def forced(self, s: int) -> bool:
        """``s == 0`` (or no full step yet), ``s < warmup``, ``s >= T − final``; magcache adds
        ``s < round(r·T)``."""
        if s == 0 or self.last_full is None or s < self.p["warmup"] or s >= self.T - self.p["final"]:
            return True
        return self.name == "magcache" and s < round(self.p["r"] * self.T)

    def _decide(self, full: bool) -> None:
        self.full = full
        if full:
            self.last_full = self.step

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        s = self.step
        self.full, self.signal, self.cur = None, None, {}
        if self.name in FORECAST_POLICIES:
            self._decide(self.forced(s) or s - self.last_full >= self.p["N"])
        elif self.name == "budget":
            self._decide(self.budget_schedule[s] == "F")
        elif self.name == "magcache":
            self._magcache_decide(s)
        elif self.name == "easycache":
            latent = kwargs["sample"] if "sample" in kwargs else kwargs["hidden_states"]
            self._easycache_decide(s, latent)
        out = self.model(**dict(kwargs, return_dict=False))[0]
        if self.name == "easycache":
            out = self._easycache_output(latent, out)
        assert self.full is not None, "the policy's probe did not run"
        self.schedule += "F" if self.full else "R"
        self.signals.append(self.signal)
        self.step += 1
        return out

    # -- streams ---------------------------------------------------------------------------------
    def _fold(self, key, value: torch.Tensor) -> torch.Tensor:
        """A full step folds the stream's value into its state; a cached step returns its forecast."""
        if key not in self.streams:
            assert self.full, f"stream {key} is forecast before any full step"
            self.streams[key] = self.new_stream()
        fc = self.streams[key]
        if self.full:
            fc.update(value, self.step)
            return value
        return fc.predict(self.step)

    def _unit_hook(self, module, args, out):
        """``module`` streams: every tensor a unit returns is one stream."""
        if isinstance(out, tuple):
            new = tuple(None if o is None else self._fold((module, i), o) for i, o in enumerate(out))
            return None if self.full else new
        new = self._fold((module, 0), out)
        return None if self.full else new

    def _stack_in(self, module, args, kwargs):
        self.cur["in0"] = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}

    def _stack_out(self, module, args, out):
        """``step`` streams: ``R = output(last) − input(block 0)`` per residual stream; cached steps
        return ``input(block 0, current) + R̂``."""
        base, outs = self.cur["in0"], out_streams(out)
        new = {k: base[k] + self._fold(("stack", k), outs[k] - base[k]) for k in outs if k in base}
        return None if self.full else with_streams(out, dict(outs, **new))

    # -- magcache --------------------------------------------------------------------------------
    def _magcache_decide(self, s: int) -> None:
        """Forced steps (and ``s < round(r·T)``) are full and reset ``Γ = 1, E = 0, k = 0``.
        Otherwise ``Γ ← Γ·γ_s, k ← k + 1, E ← E + |1 − Γ|``; cached iff ``E ≤ t`` and ``k ≤ K``,
        else full (and reset). The signal is E before a reset."""
        if self.forced(s):
            self.Gamma, self.E, self.k = 1.0, 0.0, 0
            self._decide(True)
            return
        self.Gamma *= self.gammas[s]
        self.k += 1
        self.E += abs(1.0 - self.Gamma)
        self.signal = self.E
        if self.k <= self.p["K"]:
            self.compared.append(self.E)
        cached = self.E <= self.p["t"] and self.k <= self.p["K"]
        if not cached:
            self.Gamma, self.E, self.k = 1.0, 0.0, 0
        self._decide(not cached)

    # -- easycache -------------------------------------------------------------------------------
    def _easycache_decide(self, s: int, x: torch.Tensor) -> None:
        """Every step ``d = mean|x_s − x_{s−1}|`` (the signal). Forced steps are full; so is a step
        before the rate ``k`` is known. Otherwise ``E += k·d / mean|v_pf|``, cached iff ``E < tau``."""
        d = _mean_abs(x - self.x_prev) if self.x_prev is not None else None
        self.x_prev = x.clone()
        self.signal = d
        if self.forced(s) or self.rate is None:
            self._decide(True)
            return
        self.err += self.rate * d / _mean_abs(self.v_pf)
        self.compared.append(self.err)
        self._decide(not (self.err < self.p["tau"]))

    def _easycache_output(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Full: ``k = mean|v − v_pf| / mean|x − x_pf|`` (once a previous full step exists), then
        ``v_pf ← v, x_pf ← x, Δ ← v − x, E ← 0``. Cached: ``v̂ = x + Δ``."""
        if not self.full:
            return x + self.delta
        if self.v_pf is not None:
            self.rate = _mean_abs(v - self.v_pf) / _mean_abs(x - self.x_pf)
        self.v_pf, self.x_pf, self.delta, self.err = v.clone(), x.clone(), v - x, 0.0
        return v

    # -- dbcache ---------------------------------------------------------------------------------
    def _db_probe(self, module, args, out):
        """After block F−1: ``r = output(block F−1) − input(block 0)`` (img), ``rel = mean|r −
        r_ref| / mean|r_ref|`` (the signal). Cached iff not forced, ``s ≥ W``, ``rel < t``, cached
        steps so far ``< M`` (M ≥ 0) and consecutive cached steps ``< MC`` (MC ≥ 0). Full steps
        store ``r_ref = r``."""
        s, p = self.step, self.p
        outs = out_streams(out)
        r = outs["img"] - self.cur["in0"]["img"]
        rel = rel_l1(r, self.r_ref) if self.r_ref is not None else None
        self.signal = rel
        eligible = (not self.forced(s) and s >= p["W"] and rel is not None and (p["M"] < 0 or self.n_cached < p["M"])
                    and (p["MC"] < 0 or self.consecutive < p["MC"]))
        if eligible:
            self.compared.append(rel)
        cached = eligible and rel < p["t"]
        if cached:
            self.n_cached += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
            self.r_ref = r.clone()
        self.cur["probe"] = {k: v.clone() for k, v in outs.items()}
        self._decide(not cached)

    def _db_mid(self, module, args, out):
        """After block L−B−1: full steps store ``R_mid = output(block L−B−1) − output(block F−1)``
        per residual stream; cached steps replace that output by ``output(block F−1) + R_mid``
        (the last B blocks then run on it)."""
        base, outs = self.cur["probe"], out_streams(out)
        if self.full:
            self.R_mid = {k: outs[k] - base[k] for k in outs if k in base}
            return None
        return with_streams(out, dict(outs, **{k: base[k] + d for k, d in self.R_mid.items()}))
