"""The policy language: ``NAME[:ARGS]`` specs, their parameters, and per-step decisions.

A :class:`Policy` is the parsed, immutable spec. It says which program it needs (its *plan*,
built by :mod:`cachec.planner`) and creates a :class:`Controller`, the small mutable state
machine that decides, step by step, whether a step is computed fully. Controllers only ever see
the step index, the trajectory length and, for dynamic policies, one probe scalar — so the
runtime stays model-agnostic and the decisions are easy to test against the papers' rules.

Grammar (DESIGN.md)::

    SPEC := NAME [":" ARGS]
    ARGS := VALUE | KEY "=" VALUE ("," KEY "=" VALUE)*      (a leading bare VALUE is the main key)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import resources

from .errors import PolicyError

log = logging.getLogger("cachec")


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int | float | str
    default: object
    doc: str
    lo: float | None = None
    hi: float | None = None


_COMMON = (
    Param("warmup", int, 0, "first K steps always full", 0),
    Param("final", int, 0, "last K steps always full", 0),
)


class Controller:
    """Per-trajectory decision state. ``decide`` returns True for a full step."""

    def __init__(self, policy: Policy, num_steps: int | None):
        self.policy = policy
        self.num_steps = num_steps
        self.last_full: int | None = None

    def forced(self, step: int) -> bool:
        p = self.policy.params
        if step == 0 or self.last_full is None or step < p["warmup"]:
            return True
        return self.num_steps is not None and step >= self.num_steps - p["final"]

    def decide(self, step: int, signal: float | None = None) -> bool:
        full = self.forced(step) or self.rule(step, signal)
        if full:
            self.last_full = step
        return full

    def rule(self, step: int, signal: float | None) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def step_inputs(self, step: int, full: bool) -> dict[str, list]:
        """Small host-computed tensors the step's path reads (forecast coefficients); none by default."""
        return {}

    def observe(self, values: dict[str, float]) -> None:
        """Scalars a path hands back after it ran (EasyCache's transformation rate); ignored by default."""


class Policy:
    """Base of all policies; subclasses set ``name``, ``doc``, ``main``, ``params``, ``granularity``."""

    name = ""
    doc = ""
    granularity = "step"
    dynamic = False
    main: str | None = None
    positional: tuple[str, ...] = ()  # keys that may be given as bare leading values (toca:3,0.9); default (main,)
    own_params: tuple[Param, ...] = ()
    default_final = 0
    default_warmup = 0

    def __init__(self, params: dict):
        self.params = params
        self.data: dict | None = None  # resolved calibration data (MagCache ratios, budget schedule)

    needs_data = False

    def data_source(self) -> str:
        """What the policy's data comes from (a constants key or a calibration file); '' if none."""
        return ""

    def load_data(self) -> dict:  # pragma: no cover - only policies with needs_data
        raise NotImplementedError

    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        common = tuple(
            Param(p.name, p.kind, cls.default_warmup if p.name == "warmup" else cls.default_final, p.doc, p.lo, p.hi)
            for p in _COMMON
        )
        return cls.own_params + common

    @property
    def spec(self) -> str:
        parts = []
        for p in self.all_params():
            v = self.params[p.name]
            if p.name == self.main:
                parts.insert(0, str(v))  # the main value is always written, bare and first
            elif v != p.default:
                parts.append(f"{p.name}={v}")
        return self.name + (":" + ",".join(parts) if parts else "")

    def controller(self, num_steps: int | None) -> Controller:
        if self.needs_data and self.data is None:
            self.data = self.load_data()
        forced = self.params.get("warmup", 0) + self.params.get("final", 0)
        if num_steps is not None and self.name != "none" and forced >= num_steps:
            # every step would be full, silently: say so instead
            raise PolicyError(f"{self.spec}: warmup={self.params.get('warmup', 0)} and final={self.params.get('final', 0)} "
                              f"force all {num_steps} steps of the trajectory to be full, so nothing would be cached; "
                              "lower them or run more steps")
        return self.controller_cls(self, num_steps)

    def plan_key(self, num_blocks: int) -> tuple:
        """The parameters the compiled variants depend on (the rest may change at run time)."""
        return (self.name,)

    def plan_granularity(self) -> str:
        """The granularity of this instance's variants (a parameter may choose it)."""
        return self.granularity

    def forecast_method(self):
        """The :class:`~cachec.forecast.ForecastMethod` of a forecasting policy, else None."""
        return None

    def streams(self) -> str:
        return self.params.get("streams", "module")

    controller_cls: type[Controller] = Controller

    def __repr__(self) -> str:
        return f"Policy({self.spec})"


# --------------------------------------------------------------------------------------------
# static policies


class _Always(Controller):
    def rule(self, step, signal):
        return True


class NonePolicy(Policy):
    name = "none"
    doc = "no caching: every step is a full forward (the reference)"
    controller_cls = _Always


class _Interval(Controller):
    def rule(self, step, signal):
        return step - self.last_full >= self.policy.params["N"]


class ForaPolicy(Policy):
    name = "fora"
    doc = "FORA: reuse every block's attention and MLP outputs under the current adaLN; full every N steps"
    granularity = "module"
    main = "N"
    own_params = (Param("N", int, 3, "interval: one full step, then N-1 reuse steps", 1, 1000),)
    controller_cls = _Interval


class DeltaPolicy(Policy):
    name = "delta"
    doc = "Δ-DiT: reuse the residual delta of a block range (blocks=a-b, 0-based, inclusive); full every N"
    granularity = "block"
    main = "N"
    own_params = (
        Param("N", int, 2, "interval: one full step, then N-1 reuse steps", 1, 1000),
        Param("blocks", str, "", "block range a-b (default: all blocks but the first and last)"),
    )
    controller_cls = _Interval

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.block_range(num_blocks))

    def block_range(self, num_blocks: int) -> tuple[int, int]:
        text = self.params["blocks"]
        if not text:
            if num_blocks < 3:
                raise PolicyError(f"delta needs blocks=a-b for a model of {num_blocks} blocks")
            return 1, num_blocks - 2
        try:
            a, b = (int(x) for x in text.split("-"))
        except ValueError:
            raise PolicyError(f"delta: blocks={text!r} is not a range a-b of block indices") from None
        if not (0 <= a <= b < num_blocks):
            raise PolicyError(f"delta: blocks={text} is outside the model's blocks 0-{num_blocks - 1}")
        return a, b


class _Static(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        sched = policy.params["schedule"]
        if num_steps is not None and len(sched) != num_steps:
            raise PolicyError(f"static schedule has {len(sched)} letters but the trajectory has {num_steps} steps")

    def rule(self, step, signal):
        sched = self.policy.params["schedule"]
        if step >= len(sched):
            raise PolicyError(f"static schedule has {len(sched)} letters; step {step} is past its end")
        return sched[step] == "F"


class StaticPolicy(Policy):
    name = "static"
    doc = "explicit step schedule, one letter a step: F = full, R = reuse the whole block stack's residual"
    main = "schedule"
    own_params = (Param("schedule", str, "F", "letters F/R, one per step; the first must be F"),)
    controller_cls = _Static

    def validate(self):
        s = self.params["schedule"]
        if not s or set(s) - {"F", "R"} or s[0] != "F":
            raise PolicyError(f"static:{s!r}: the schedule is letters F (full) and R (reuse), starting with F")


# --------------------------------------------------------------------------------------------
# dynamic policies


class _FBCache(Controller):
    def rule(self, step, signal):
        return not (signal < self.policy.params["t"])


class FBCachePolicy(Policy):
    name = "fbcache"
    doc = "First-Block Cache: block 0's residual is the probe; below t (rel. L1 to the last full step) the other blocks' delta is reused"
    dynamic = True
    main = "t"
    own_params = (Param("t", float, 0.08, "threshold on the relative L1 change of block 0's residual", 0.0, 10.0),)
    controller_cls = _FBCache


class _TeaCache(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.acc = 0.0
        self.poly = policy.polynomial()

    def decide(self, step, signal=None):
        if self.forced(step):
            self.acc = 0.0
            self.last_full = step
            return True
        self.acc += self.poly(signal)
        if self.acc < self.policy.params["t"]:
            return False
        self.acc = 0.0
        self.last_full = step
        return True


class TeaCachePolicy(Policy):
    name = "teacache"
    doc = "TeaCache: rescaled relative L1 of block 0's modulated input, accumulated; reuse the stack residual below t"
    dynamic = True
    main = "t"
    default_final = 1
    own_params = (
        Param("t", float, 0.25, "threshold on the accumulated rescaled distance", 0.0, 100.0),
        Param("coeffs", str, "", "rescale polynomial from method_constants.json (e.g. flux.1-dev); empty: identity"),
    )
    controller_cls = _TeaCache

    def validate(self):
        name = self.params["coeffs"]
        if name and name not in teacache_coefficients():
            raise PolicyError(
                f"teacache: unknown coeffs={name!r}; known: {', '.join(sorted(teacache_coefficients()))}"
            )

    def polynomial(self):
        name = self.params["coeffs"]
        if not name:
            log.info("teacache: no coeffs= given, the rescale polynomial is the identity")
            return lambda x: x
        c = teacache_coefficients()[name]

        def poly(x: float) -> float:
            acc = 0.0
            for a in c:  # highest degree first (numpy.poly1d order)
                acc = acc * x + a
            return acc

        return poly


# --------------------------------------------------------------------------------------------
# forecast policies (docs/predictive_policies.md)

_STREAMS = Param("streams", str, "module",
                 "module: forecast every attention/MLP output; step: one residual of the whole block stack")


class _ForecastInterval(_Interval):
    """The fixed interval of FORA; cached steps are forecasts whose coefficients this supplies."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        from .forecast import ForecastTracker

        self.tracker = ForecastTracker(policy.forecast_method())

    def step_inputs(self, step, full):
        return self.tracker.step_inputs(step, full)


class _ForecastPolicy(Policy):
    granularity = "module, step (streams=)"
    main = "N"
    controller_cls = _ForecastInterval

    def validate(self):
        if self.params["streams"] not in ("module", "step"):
            raise PolicyError(f"{self.name}: streams={self.params['streams']!r}; accepted: module, step")

    def plan_granularity(self) -> str:
        return self.params["streams"]

    def plan_key(self, num_blocks: int) -> tuple:
        m = self.forecast_method()
        return (m.name, m.state, m.predict_writes, self.params["streams"])


class TaylorSeerPolicy(_ForecastPolicy):
    name = "taylorseer"
    doc = "TaylorSeer: forecast each cached stream by a Taylor series of finite differences taken at full steps; full every N"
    default_warmup = 2
    own_params = (
        Param("N", int, 4, "interval: one full step, then N-1 forecast steps", 1, 1000),
        Param("O", int, 2, "Taylor order (0 = FORA's reuse)", 0, 4),
        _STREAMS,
    )

    def forecast_method(self):
        from .forecast import Taylor

        return Taylor(self.params["O"])


class HiCachePolicy(_ForecastPolicy):
    name = "hicache"
    doc = "HiCache: TaylorSeer's finite differences on a scaled Hermite basis; full every N"
    default_warmup = 3
    own_params = (
        Param("N", int, 5, "interval: one full step, then N-1 forecast steps", 1, 1000),
        Param("O", int, 2, "order of the Hermite expansion", 0, 4),
        Param("sigma", float, 0.5, "Hermite scale σ", 0.0, 10.0),
        _STREAMS,
    )

    def forecast_method(self):
        from .forecast import Hermite

        return Hermite(self.params["O"], self.params["sigma"])


class FoCaPolicy(_ForecastPolicy):
    name = "foca"
    doc = "FoCa: features integrated as an ODE step by step (BDF2 predictor, Heun corrector; cachec's reading); full every N"
    default_warmup = 3
    own_params = (Param("N", int, 5, "interval: one full step, then N-1 forecast steps", 1, 1000), _STREAMS)

    def forecast_method(self):
        from .forecast import FoCa

        return FoCa()


# --------------------------------------------------------------------------------------------
# adaptive step policies


class _MagCache(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        if num_steps is None:
            raise PolicyError("magcache resamples its magnitude ratios to the trajectory length, so it needs the "
                              "number of steps (num_steps=..., cachec.reset(model, num_steps), or a pipeline "
                              "that passes num_inference_steps)")
        ratios = policy.data["ratios"]
        n = len(ratios)
        self.gamma = [ratios[round(s * (n - 1) / (num_steps - 1))] if num_steps > 1 else ratios[0]
                      for s in range(num_steps)]
        self.retain = round(policy.params["r"] * num_steps)
        self._reset()

    def _reset(self):
        self.Gamma, self.err, self.k = 1.0, 0.0, 0

    def decide(self, step, signal=None):
        p = self.policy.params
        if self.forced(step) or step < self.retain:
            self._reset()
            self.last_full = step
            return True
        self.Gamma *= self.gamma[step]
        self.k += 1
        self.err += abs(1.0 - self.Gamma)
        if self.err <= p["t"] and self.k <= p["K"]:
            return False
        self._reset()
        self.last_full = step
        return True


class MagCachePolicy(Policy):
    name = "magcache"
    doc = "MagCache: accumulate |1 - Π magnitude ratios| of the stack residual; reuse it below t, at most K in a row"
    main = "t"
    needs_data = True
    own_params = (
        Param("t", float, 0.24, "threshold on the accumulated ratio error", 0.0, 100.0),
        Param("K", int, 5, "most consecutive reused steps", 0, 1000),
        Param("r", float, 0.1, "retention: the first round(r*T) steps are full", 0.0, 1.0),
        Param("ratios", str, "", "magnitude ratios: a method_constants.json key (flux.1-dev) or a file from `cachec calibrate`"),
    )
    controller_cls = _MagCache

    def validate(self):
        if not self.params["ratios"]:
            keys = ", ".join(k for k, v in method_constants()["magcache"].items() if "mag_ratios" in v)
            raise PolicyError(f"magcache needs ratios=KEY ({keys}) or ratios=FILE written by `cachec calibrate`")

    def data_source(self) -> str:
        return self.params["ratios"]

    def load_data(self) -> dict:
        src = self.params["ratios"]
        published = {k.split(" ")[0]: v for k, v in method_constants()["magcache"].items() if "mag_ratios" in v}
        if src in published:
            return {"ratios": list(published[src]["mag_ratios"])}
        from .calibration import read_calibration

        return {"ratios": read_calibration(src)["ratios"]}


class _EasyCache(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.rate: float | None = None  # k, known after two full steps
        self.norm: float | None = None  # mean|v| of the last full step
        self.err = 0.0
        self.n_full = 0

    def decide(self, step, signal=None):
        if self.forced(step) or self.rate is None or not self.norm:
            full = True
        else:
            self.err += self.rate * signal / self.norm
            full = not (self.err < self.policy.params["tau"])
        if full:
            self.err = 0.0
            self.last_full = step
        return full

    def observe(self, values):
        if self.n_full > 0:
            self.rate = values["easycache__k"]
        self.norm = values["easycache__vnorm"]
        self.n_full += 1


class EasyCachePolicy(Policy):
    name = "easycache"
    doc = "EasyCache: accumulate the predicted output change k*|Δx|/|v| (k measured at full steps); reuse v = x + Δ below tau"
    dynamic = True
    granularity = "step"
    main = "tau"
    default_warmup = 5
    default_final = 1
    own_params = (Param("tau", float, 0.05, "threshold on the accumulated relative output change", 0.0, 100.0),)
    controller_cls = _EasyCache


class _DBCache(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.cached = 0
        self.consecutive = 0

    def decide(self, step, signal=None):
        p = self.policy.params
        hit = (not self.forced(step) and step >= p["W"] and signal < p["t"]
               and (p["M"] < 0 or self.cached < p["M"]) and (p["MC"] < 0 or self.consecutive < p["MC"]))
        if hit:
            self.cached += 1
            self.consecutive += 1
            return False
        self.consecutive = 0
        self.last_full = step
        return True


class DBCachePolicy(Policy):
    name = "dbcache"
    doc = "DBCache (cache-dit): the first F blocks probe, the middle blocks' delta is reused below t, the last B blocks always run"
    dynamic = True
    main = "F"
    own_params = (
        Param("F", int, 1, "probe blocks computed every step", 1, 1000),
        Param("B", int, 0, "last blocks computed every step", 0, 1000),
        Param("t", float, 0.08, "threshold on the relative L1 change of the probe residual", 0.0, 10.0),
        Param("W", int, 8, "warm-up: no cache hit before step W", 0, 100000),
        Param("M", int, -1, "most cached steps in a trajectory (-1: no limit)", -1, 100000),
        Param("MC", int, -1, "most consecutive cached steps (-1: no limit)", -1, 100000),
    )
    controller_cls = _DBCache

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params["F"], self.params["B"])


# --------------------------------------------------------------------------------------------
# NFE budgets


class _Budget(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        schedule = policy.schedule_for(num_steps)
        self.schedule = schedule
        self.tracker = None
        if policy.params["base"] == "forecast":
            from .forecast import ForecastTracker

            self.tracker = ForecastTracker(policy.forecast_method())

    def decide(self, step, signal=None):
        if step >= len(self.schedule):
            raise PolicyError(f"{self.policy.spec}: its schedule has {len(self.schedule)} steps; step {step} is past its end")
        full = self.schedule[step] == "F"
        if full:
            self.last_full = step
        return full

    def step_inputs(self, step, full):
        return self.tracker.step_inputs(step, full) if self.tracker is not None else {}


class BudgetPolicy(Policy):
    name = "budget"
    doc = "exactly nfe=K full steps: evenly spaced, or the calibrated schedule of least predicted error (calib=FILE)"
    own_params = (
        Param("nfe", int, 10, "number of full steps K (forced warmup/final steps included)", 1, 100000),
        Param("base", str, "module", "what cached steps do: module (FORA reuse), step (stack residual), forecast (TaylorSeer order 1)"),
        Param("calib", str, "", "calibration file from `cachec calibrate` (empty: evenly spaced full steps)"),
    )
    main = "nfe"
    controller_cls = _Budget

    def validate(self):
        if self.params["base"] not in ("module", "step", "forecast"):
            raise PolicyError(f"budget: base={self.params['base']!r}; accepted: module, step, forecast")
        self.needs_data = bool(self.params["calib"])

    granularity = "module, step (base=)"

    def plan_granularity(self) -> str:
        return {"module": "module", "step": "step", "forecast": "module"}[self.params["base"]]

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params["base"])

    def forecast_method(self):
        if self.params["base"] != "forecast":
            return None
        from .forecast import Taylor

        return Taylor(1)

    def data_source(self) -> str:
        return self.params["calib"]

    def load_data(self) -> dict:
        from .calibration import budget_schedule, read_calibration

        calib = read_calibration(self.params["calib"])
        p = self.params
        schedule, predicted = budget_schedule(calib, p["nfe"], p["base"], warmup=p["warmup"], final=p["final"])
        return {"schedule": schedule, "predicted_error": predicted, "steps": calib["steps"]}

    def schedule_for(self, num_steps: int | None) -> str:
        from .calibration import even_schedule

        if self.params["calib"]:
            if self.data is None:
                self.data = self.load_data()
            schedule = self.data["schedule"]
            if num_steps is not None and num_steps != len(schedule):
                raise PolicyError(f"{self.spec}: the calibrated schedule has {len(schedule)} steps but the trajectory "
                                  f"has {num_steps}; calibrate for {num_steps} steps (cachec calibrate --steps {num_steps})")
            return schedule
        if num_steps is None:
            raise PolicyError(f"{self.spec} spaces its full steps over the trajectory, so it needs the number of "
                              "steps (num_steps=..., or a pipeline that passes num_inference_steps)")
        p = self.params
        return even_schedule(num_steps, p["nfe"], warmup=p["warmup"], final=p["final"])


def teacache_coefficients() -> dict[str, list[float]]:
    return method_constants()["teacache_coefficients"]


def method_constants() -> dict:
    """Published constants shipped inside the package (copied from shared/data)."""
    text = resources.files("cachec").joinpath("constants/method_constants.json").read_text()
    return json.loads(text)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (NonePolicy, StaticPolicy, ForaPolicy, DeltaPolicy, FBCachePolicy, TeaCachePolicy,
                        TaylorSeerPolicy, HiCachePolicy, FoCaPolicy, MagCachePolicy, EasyCachePolicy, DBCachePolicy,
                        BudgetPolicy)
}

# token-wise policies (ToCa, DuCa) live in their own module, which imports this one
from .token_policy import TOKEN_POLICIES  # noqa: E402

POLICIES.update(TOKEN_POLICIES)


# --------------------------------------------------------------------------------------------
# parsing


def _convert(policy: str, p: Param, raw: str):
    if p.kind is str:
        return raw
    try:
        value = p.kind(raw)
    except ValueError:
        raise PolicyError(f"{policy}: {p.name}={raw!r} is not a{'n' if p.kind is int else ''} {p.kind.__name__}") from None
    if p.kind is float and not math.isfinite(value):  # nan compares false with every bound: it would pass
        raise PolicyError(f"{policy}: {p.name}={raw} is not a finite number")
    if (p.lo is not None and value < p.lo) or (p.hi is not None and value > p.hi):
        lo = "-inf" if p.lo is None else p.lo
        hi = "inf" if p.hi is None else p.hi
        raise PolicyError(f"{policy}: {p.name}={raw} is out of range; accepted: {lo} .. {hi}")
    return value


def parse_policy(spec: str | Policy) -> Policy:
    """Parse a spec string into a :class:`Policy`; every mistake raises :class:`PolicyError`."""
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"a policy spec is a non-empty string like 'fora:3'; got {spec!r}. Known: {', '.join(POLICIES)}")
    spec = spec.strip()
    name, _, args = spec.partition(":")
    name = name.strip().lower()
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)} (see `cachec policies`)")
    cls = POLICIES[name]
    params_by_name = {p.name: p for p in cls.all_params()}
    values = {p.name: p.default for p in cls.all_params()}
    positional = cls.positional or ((cls.main,) if cls.main is not None else ())
    if args.strip():
        keyed = False
        for i, item in enumerate(args.split(",")):
            item = item.strip()
            if "=" in item:
                key, _, raw = item.partition("=")
                key = key.strip()
                keyed = True
            elif not keyed and i < len(positional):
                key, raw = positional[i], item
            else:
                accepted = ", ".join(params_by_name)
                bare = f" (bare values: {', '.join(positional)}, first and in that order)" if positional else ""
                raise PolicyError(f"{name}: {item!r} needs the form KEY=VALUE; keys: {accepted}{bare}")
            if key not in params_by_name:
                raise PolicyError(f"{name}: unknown key {key!r}; accepted keys: {', '.join(params_by_name)}")
            values[key] = _convert(name, params_by_name[key], raw.strip())
    policy = cls(values)
    validate = getattr(policy, "validate", None)
    if validate is not None:
        validate()
    return policy


def describe_policies() -> str:
    """The table printed by ``cachec policies``."""
    lines = []
    for cls in POLICIES.values():
        lines.append(f"{cls.name:<10} {cls.doc}")
        lines.append(f"{'':<10} granularity: {cls.granularity}, schedule: {'dynamic' if cls.dynamic else 'static'}")
        for p in cls.all_params():
            main = " (main value)" if p.name == cls.main else ""
            rng = ""
            if p.lo is not None or p.hi is not None:
                rng = f", range {p.lo if p.lo is not None else '-inf'}..{p.hi if p.hi is not None else 'inf'}"
            lines.append(f"{'':<11}{p.name + '=' + repr(p.default):<16} {p.kind.__name__}{rng}: {p.doc}{main}")
    return "\n".join(lines)
