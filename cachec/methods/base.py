"""What every cache method is made of: typed parameters, a controller, a plan.

A method module (one per method under :mod:`cachec.methods`) defines

* ``Params`` — a frozen dataclass of its parameters, each declared with :func:`param` (default,
  one-line doc, range). The spec parser (:mod:`cachec.policy`) converts and range-checks spec
  values from it and ``cachec policies`` prints it, so a parameter is declared exactly once.
  Every method has ``warmup`` and ``final`` (first / last K steps always full).
* a :class:`Method` subclass — the parsed, immutable method: which variants the program needs
  (``variants``; :meth:`Method.plan` returns a :class:`~cachec.planner.plan.Plan` of them, built
  from the planner's primitives), which parameters the compiled variants depend on
  (:meth:`Method.plan_key`), and its controller.
* a :class:`Controller` — the small per-trajectory state machine of the *step protocol*: for each
  step it yields :class:`Action` s (which variant to run, the host-side inputs of the step, the
  values it wants read back), and the runtime runs them. Probing methods yield a probe variant
  first and decide on the value it hands back. The runtime knows no method: it runs actions.

Why a controller sees only the step index, the trajectory length and host scalars (plus, for
token methods, the cache buffers of its scores): the runtime stays model-agnostic and every
schedule rule is testable against the papers without a model.

Adding a method
---------------

One new file, ``cachec/methods/mymethod.py`` (plus its tests); nothing else changes — the spec
parser, ``cachec policies``, the planner, the runtime and every backend find it through the
registry (:data:`cachec.methods.METHODS`)::

    @dataclass(frozen=True)
    class MyParams(Params):
        N: int = param(3, "interval: one full step, then N-1 reuse steps", 1, 1000)

    class MyController(Controller):                # the schedule: which steps are full
        def rule(self, step, signal):
            return step - self.last_full >= self.policy.params.N

    @register
    class MyMethod(Method):                        # classes are named XxxMethod
        name, doc, main = "mine", "reuse every attention/MLP output for N-1 steps", "N"
        Params, controller_cls = MyParams, MyController
        variants = ("full", "reuse")               # what the controller runs; the planner checks them

        def plan(self, planner) -> Plan:           # returns the Plan; changes nothing else
            return planner.module_reuse()

``plan`` receives a read-only :class:`~cachec.planner.Planner` (the model's blocks, regions,
segments and value specs) and returns a :class:`~cachec.planner.plan.Plan`: its ``variants`` (op
lists of :class:`~cachec.program.Run` / ``Load`` / ``Store``), the segments it ``added`` (cache
writes, probes, forecasts), the ``examples`` of the values it made, and what the controller reads
(``signal``, ``feedback``, ``step_inputs``, ``meta``). A method of an existing family returns the
family's primitive (``module_reuse``, ``range_reuse``, ``probe_skip``, ``group_reuse``,
``forecast``); one with a plan of its own starts from ``planner.new_plan()`` and composes the
building blocks (``add_segment``, ``cache_ops``, ``range_delta``, ``forecast_ops``,
``split_base``, ``rewritten`` for a segment through passes, and the op-list functions of
:mod:`cachec.planner.plan`), keeping any graph code only it needs in its own module (EasyCache's
write in :mod:`cachec.methods.easycache`, DeepCache's branch in :mod:`cachec.methods.skip_branch`,
FasterCache's CFG-Cache in :mod:`cachec.methods.cfg_cache`). TeaCache's ``plan`` is a short
example of the second kind. A method module that registers nothing (shared code of a family)
is imported with the others and ignored by the registry.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from ..errors import PolicyError
from ..program import ModelFacts, PlanFacts, per_item

if TYPE_CHECKING:
    from ..planner.plan import Plan

# ---------------------------------------------------------------------------------------------
# parameters


@dataclass(frozen=True)
class Param:
    """One declared parameter, as the parser and ``cachec policies`` see it."""

    name: str
    kind: type  # int | float | str
    default: object
    doc: str
    lo: float | None = None
    hi: float | None = None
    file: bool = False  # names a file the method reads: set by whoever runs cachec, never by a served request


def param(default, doc: str, lo: float | None = None, hi: float | None = None, *, file: bool = False):
    """A dataclass field of a method's ``Params``: its default, one-line doc and accepted range.
    ``file``: the value may name a file the method reads (``cachec serve`` lets no request set it)."""
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "file": file})


_KINDS = {"int": int, "float": float, "str": str}
COMMON = ("warmup", "final")


@dataclass(frozen=True)
class Params(Mapping):
    """Base of every method's parameters. A subclass redeclares ``warmup``/``final`` to change
    their defaults. Also a read-only mapping ``name -> value``, which is what specs, manifests
    and reports are written from."""

    warmup: int = param(0, "first K steps always full", 0)
    final: int = param(0, "last K steps always full", 0)

    @classmethod
    def schema(cls) -> tuple[Param, ...]:
        """The declared parameters: the method's own in declaration order, then warmup and final."""
        fields = dataclasses.fields(cls)
        ordered = [f for f in fields if f.name not in COMMON] + [f for f in fields if f.name in COMMON]
        return tuple(Param(f.name, _KINDS[f.type] if isinstance(f.type, str) else f.type, f.default,
                           f.metadata["doc"], f.metadata["lo"], f.metadata["hi"], f.metadata.get("file", False))
                     for f in ordered)

    def __getitem__(self, key: str):
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return (p.name for p in self.schema())

    def __len__(self) -> int:
        return len(dataclasses.fields(self))


@dataclass(frozen=True)
class ProbeParams(Params):
    """Base of the parameters of a method that decides on a probe (head / tail variants): such a
    method may decide per batch item (:class:`PerSample`) instead of once for the batch."""

    per_sample: int = param(0, "1: each batch item decides on its own probe signal (its schedule as run alone); "
                               "0: one decision for the whole batch", 0, 1)


# ---------------------------------------------------------------------------------------------
# the step protocol


@dataclass
class Action:
    """One thing the runtime does in a step, as a controller asks for it.

    ``variant`` names a variant of the program. ``letter`` is the step's schedule letter
    (``F`` full, ``R`` reuse, ``P`` partial) when this action concludes the step, and empty for a
    probe that comes before the decision. ``inputs`` are host-side step inputs: coefficient
    matrices (nested lists, made tensors of the program's dtype) or tensors (token positions).
    ``read`` names values to hand back to the controller, as host floats, after the variant ran
    (the probe signal, a tail's feedback): each is one device→host sync; a per-item value
    (:func:`cachec.program.per_item`) comes back as a list of floats, one per item the variant ran
    on. ``flops_delta`` corrects the variant's per-sample FLOPs (a partial step runs fewer tokens
    than the graph was counted at). ``items`` are the batch items the variant runs on (None: the
    whole batch): the runtime gathers those items of the variant's inputs and caches, runs the
    variant on them, and scatters the output and the written caches back (per-sample decisions).
    A whole-batch action's letter goes to the items that no earlier action of the step lettered
    (FasterCache's CFG rebuild letters the unconditional half after the conditional half ran).
    """

    variant: str
    letter: str = ""
    inputs: dict = field(default_factory=dict)
    read: tuple[str, ...] = ()
    flops_delta: float = 0.0
    items: tuple[int, ...] | None = None


@dataclass
class StepContext:
    """What a controller may look at besides the step index: what the program's planning decided
    (probe signal name, feedback names, blocks, regions, token regions) and what its capture
    recorded (the model's class), the branch's cache buffers (token scores), the batch size, the
    device of the step's tensors and (lazily) the step's timestep."""

    planned: PlanFacts
    model: ModelFacts
    caches: dict
    batch: int
    device: object
    # the step's timestep on the host, only when a controller calls it: looked up in the trajectory's
    # timesteps when its caller gave them (reset(timesteps=...)), else read (one device->host sync).
    # PAB and FasterCache gate their reuse on a timestep window, as their reference hooks do
    timestep: Callable[[], float | None] | None = None


Actions = Generator[Action, dict, None]


class Controller:
    """Per-trajectory decision state. ``decide`` returns True for a full step; ``actions`` turns a
    decision into the step's actions (the step protocol).

    ``decide`` is written once: a step is full when it is ``forced`` (step 0, warmup, final — a
    method may add its own: MagCache's retention) or when the method's ``rule`` says so; after a
    full step ``on_full`` resets what the method accumulates between full steps. Methods override
    those three, and ``actions`` only when a step is more than one decision (token methods)."""

    def __init__(self, policy: Method, num_steps: int | None):
        self.policy = policy
        self.num_steps = num_steps
        self.last_full: int | None = None

    def forced(self, step: int) -> bool:
        p = self.policy.params
        if step == 0 or self.last_full is None or step < p.warmup:
            return True
        return self.num_steps is not None and step >= self.num_steps - p.final

    def decide(self, step: int, signal: float | None = None) -> bool:
        full = self.forced(step) or self.rule(step, signal)
        if full:
            self.last_full = step
            self.on_full(step)
        return full

    def rule(self, step: int, signal: float | None) -> bool:  # pragma: no cover - abstract
        """Whether a step that is not forced is full (may accumulate state across cached steps)."""
        raise NotImplementedError

    def on_full(self, step: int) -> None:
        """Reset what the rule accumulates between full steps; nothing by default."""

    def step_inputs(self, step: int, full: bool) -> dict[str, list]:
        """Small host-computed inputs of the step's variant (forecast coefficients); none by default."""
        return {}

    def observe(self, values: dict[str, float]) -> None:
        """Scalars a variant handed back after it ran (EasyCache's transformation rate); ignored by default."""

    def actions(self, step: int, ctx: StepContext) -> Actions:
        """A step with one decision: probe first if the program has a probe (dynamic methods), decide,
        then run the full or the cached variant, and hand the full variant's feedback back."""
        signal = None
        if self.policy.dynamic:
            name = ctx.planned.signal
            values = yield Action("head", read=(name,))
            signal = values[name]
        full = self.decide(step, signal)
        variant = ("tail_full" if full else "tail_reuse") if self.policy.dynamic else ("full" if full else "reuse")
        feedback = tuple(ctx.planned.feedback) if full and self.policy.dynamic else ()
        values = yield Action(variant, "F" if full else "R", self.step_inputs(step, full), read=feedback)
        if feedback:
            self.observe(values)


class PerSample(Controller):
    """Per-sample decisions: one controller of the method per batch item, each deciding on its own
    item's probe signal (:func:`cachec.program.per_item`), so an item's schedule is the one it has
    run alone and never depends on its batch neighbours.

    A step runs the head on the whole batch (one device→host sync: the vector of item signals),
    then ``tail_full`` on the items that recompute and ``tail_reuse`` on the others, each on its
    items only (the runtime gathers and scatters them); when every item agrees the tail runs on the
    whole batch, exactly as one decision per batch would. Every item is its own unit, the two halves
    of a batched classifier-free-guidance call included: they decide apart, as the two branches of
    sequential CFG do (each branch keeps its own caches and decisions), so batched and sequential
    CFG give the same result.
    """

    def __init__(self, policy: Method, num_steps: int | None):
        super().__init__(policy, num_steps)
        self.items: list[Controller] | None = None

    def actions(self, step: int, ctx: StepContext) -> Actions:
        name = per_item(ctx.planned.signal)
        if self.items is None or len(self.items) != ctx.batch:
            self.items = [self.policy.controller_cls(self.policy, self.num_steps) for _ in range(ctx.batch)]
        values = yield Action("head", read=(name,))
        full = [c.decide(step, s) for c, s in zip(self.items, values[name], strict=True)]
        recompute = tuple(i for i, f in enumerate(full) if f)
        reuse = tuple(i for i, f in enumerate(full) if not f)
        feedback = tuple(ctx.planned.feedback)
        if recompute:
            items = recompute if reuse else None
            values = yield Action("tail_full", "F", self.items[recompute[0]].step_inputs(step, True), items=items,
                                  read=tuple(per_item(n) for n in feedback))
            for k, i in enumerate(recompute):
                if feedback:
                    self.items[i].observe({n: values[per_item(n)][k] for n in feedback})
        if reuse:
            yield Action("tail_reuse", "R", self.items[reuse[0]].step_inputs(step, False),
                         items=reuse if recompute else None)


class Always(Controller):
    """Every step full (the reference, and any program run as ``none``)."""

    def rule(self, step, signal):
        return True


class Interval(Controller):
    """A full step every N steps (FORA's schedule)."""

    def rule(self, step, signal):
        return step - self.last_full >= self.policy.params.N


# ---------------------------------------------------------------------------------------------
# methods


class Method:
    """Base of every cache method; subclasses set ``name``, ``doc``, ``Params``, ``main`` and the
    class attributes below, implement :meth:`plan`, and register with :func:`cachec.methods.register`."""

    name = ""
    doc = ""
    granularity = "step"  # what `cachec policies` prints: step | block | module | token | ...
    dynamic = False  # decides per step from a probe (head / tail_full / tail_reuse variants)
    main: str | None = None  # the bare value of a spec (fora:4 ≡ fora:N=4)
    positional: tuple[str, ...] = ()  # keys that may be given as bare leading values (toca:3,0.9); default (main,)
    Params: type[Params] = Params
    controller_cls: type[Controller] = Always
    variants: tuple[str, ...] = ("full", "reuse")  # what the runtime runs; the planner checks them
    needs_data = False  # reads calibration data or published constants (MagCache ratios, budget schedule)
    # its schedule is bound to one trajectory length (an explicit F/R mask, a calibrated schedule) and
    # refuses any other: a warm-up runs the whole trajectory, not a short one
    length_bound = False
    needs: frozenset[str] = frozenset()  # backend capabilities its variants need (cachec.backends.Backend)
    # reads a batch as classifier-free-guidance halves [uncond; cond] (FasterCache's CFG-Cache): loops
    # whose batch items are separate samples (cachec run / bench / serve) refuse it
    cfg_pairs = False
    rank = 1000  # position in `cachec policies` (new methods list after the built-in ones)

    def __init__(self, params: Params, data: dict | None = None):
        self.params = params
        self._data = data  # set here only: a method never changes after construction

    @property
    def data(self) -> dict | None:
        """The method's resolved data (calibration, published constants), or None while unread."""
        return self._data

    def with_data(self, data: dict) -> Method:
        """This method with ``data`` resolved: a new instance, so a parsed method is never mutated
        (the same spec may be shared by a runtime, a served request and a planner)."""
        return type(self)(self.params, data)  # the parameters were validated when self was made

    def with_params(self, **changes) -> Method:
        """This method with some parameters changed: a new, validated instance without data (data
        depends on the parameters). For values cachec itself chooses (a stream choice, a served
        file reset to the server's): a user's values come through the parser, which checks ranges."""
        import dataclasses

        out = type(self)(dataclasses.replace(self.params, **changes))
        out.validate()
        return out

    def resolved(self) -> Method:
        """This method with its data read, if it needs data and has none yet (reads the file once)."""
        if self.needs_data and self.data is None:
            return self.with_data(self.load_data())
        return self

    # -- the spec ---------------------------------------------------------------------------------
    @classmethod
    def all_params(cls) -> tuple[Param, ...]:
        return cls.Params.schema()

    def validate(self) -> None:
        """Check parameters against each other (ranges are checked by the parser)."""

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

    def __repr__(self) -> str:
        return f"Method({self.spec})"

    # -- data -------------------------------------------------------------------------------------
    def data_source(self) -> str:
        """What the method's data comes from (a constants key or a calibration file); '' if none."""
        return ""

    def load_data(self) -> dict:  # pragma: no cover - only methods with needs_data
        raise NotImplementedError

    # -- run time ---------------------------------------------------------------------------------
    def controller(self, num_steps: int | None) -> Controller:
        if self.needs_data and self.data is None:
            return self.resolved().controller(num_steps)
        forced = self.params.warmup + self.params.final
        if num_steps is not None and self.name != "none" and forced >= num_steps:
            # every step would be full, silently: say so instead
            raise PolicyError(f"{self.spec}: warmup={self.params.warmup} and final={self.params.final} "
                              f"force all {num_steps} steps of the trajectory to be full, so nothing would be cached; "
                              "lower them or run more steps")
        if self.params.get("per_sample"):
            return PerSample(self, num_steps)
        return self.controller_cls(self, num_steps)

    # -- compile time -----------------------------------------------------------------------------
    def plan_key(self, num_blocks: int) -> tuple:
        """The parameters the compiled variants depend on (the rest may change at run time)."""
        return (self.name,)

    def plan_granularity(self) -> str:
        """The granularity of this instance's variants (a parameter may choose it)."""
        return self.granularity

    def forecast_method(self):
        """The :class:`~cachec.forecast.ForecastMethod` of a forecasting method, else None."""
        return None

    def streams(self) -> str:
        return self.params.get("streams", "module")

    def plan(self, planner) -> Plan:
        """This method's :class:`~cachec.planner.plan.Plan` on ``planner`` (a read-only
        :class:`cachec.planner.Planner`), built from its primitives (see the module docstring)."""
        raise NotImplementedError

    def unsupported(self, backend: str, capable: list[str]) -> str:
        """The message for a backend that lacks a capability in ``needs`` (``capable``: backends that have them)."""
        return f"{self.name} needs {', '.join(sorted(self.needs))}, which the {backend} backend lacks; use --backend " \
               f"{' or '.join(capable)}"

    def required_variants(self) -> set[str]:
        return set(self.variants)

    def check_program(self, variants, meta: dict, values) -> tuple[str, str] | None:
        """Whether a program description can run this method: ``(field, problem)`` or None."""
        missing = sorted(self.required_variants() - set(variants))
        if missing:
            return "variants", f"has no {missing[0]!r} variant, which policy {self.spec} runs"
        if self.dynamic and meta.get("signal") not in values:
            from ..schema import show_value

            return "meta.signal", f"should name the probe value a dynamic policy reads, got {show_value(meta.get('signal'))}"
        problem = self.per_sample_problem(meta.get("signal"), values)
        return ("meta.signal", problem) if problem else None

    def per_sample_problem(self, signal: str | None, values) -> str | None:
        """Why a program cannot run this policy with per-sample decisions (None: it can, or they are off)."""
        if not self.params.get("per_sample"):
            return None
        if not self.dynamic or not signal:
            return f"names no probe signal, and {self.spec} decides per sample on one"
        if per_item(signal) not in values:
            return (f"has no per-item probe signal {per_item(signal)!r}, which per_sample=1 reads: compile the "
                    "program again with this cachec, with a dynamic batch dimension")
        return None


def method_constants() -> dict:
    """Published constants shipped inside the package (copied from shared/data)."""
    text = resources.files("cachec").joinpath("constants/method_constants.json").read_text()
    return json.loads(text)


def choice(policy: str, key: str, value: str, accepted: tuple[str, ...]) -> None:
    """A string parameter that takes one of a few words."""
    if value not in accepted:
        raise PolicyError(f"{policy}: unknown {key}={value!r}; accepted: {', '.join(accepted)}")
