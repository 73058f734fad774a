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
        return self.controller_cls(self, num_steps)

    def plan_key(self, num_blocks: int) -> tuple:
        """The parameters the compiled variants depend on (the rest may change at run time)."""
        return (self.name,)

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


def teacache_coefficients() -> dict[str, list[float]]:
    return method_constants()["teacache_coefficients"]


def method_constants() -> dict:
    """Published constants shipped inside the package (copied from shared/data)."""
    text = resources.files("cachec").joinpath("constants/method_constants.json").read_text()
    return json.loads(text)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (NonePolicy, StaticPolicy, ForaPolicy, DeltaPolicy, FBCachePolicy, TeaCachePolicy)
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
        lines.append(f"{cls.name:<9} {cls.doc}")
        lines.append(f"{'':<9} granularity: {cls.granularity}, schedule: {'dynamic' if cls.dynamic else 'static'}")
        for p in cls.all_params():
            main = " (main value)" if p.name == cls.main else ""
            rng = ""
            if p.lo is not None or p.hi is not None:
                rng = f", range {p.lo if p.lo is not None else '-inf'}..{p.hi if p.hi is not None else 'inf'}"
            lines.append(f"{'':<11}{p.name + '=' + repr(p.default):<16} {p.kind.__name__}{rng}: {p.doc}{main}")
    return "\n".join(lines)
