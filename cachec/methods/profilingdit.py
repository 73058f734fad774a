"""``profilingdit:Tmax,Tmin,bg=a-b/c-d`` — ProfilingDiT (survey eq. 60–61): the blocks are split
into a foreground set F, always recomputed, and a background set B, whose outputs are reused
between full steps on an interval that shrinks over the trajectory (coarse caching early, fine
updates late).

The rule (cachec's reading; docs/methods.md says why):

* B is the parameter ``bg``: block ranges ``a-b`` (or single blocks ``a``), 0-based and inclusive,
  joined by ``/``; every other block is in F. The paper profiles B from attention maps against a
  foreground mask (eq. 60, ``R_attn``), which needs a segmentation of the target content that
  cachec does not have; the profile is done offline and its result given here. Default: every
  block but the first and the last;
* the interval at step ``s`` is eq. 61, ``T_s = Tmax − (Tmax − Tmin)·(s − s0)/(S − s0)`` with
  ``s0 = warmup`` (the first step that may reuse) and ``S = T − 1`` (the last step), so the last
  step's interval is ``Tmin``;
* a step is full when it is forced (step 0, warmup, final) or when ``s − a ≥ T_s`` (``a``: the last
  full step; a real-valued comparison, no rounding); otherwise it is a reuse step;
* reusing a background block is reusing its residual ``out − in`` (Δ-DiT's delta), per maximal run
  of consecutive background blocks: a reused *output* of a block in the middle would throw away
  what the foreground blocks before it computed this step.

``Tmax = Tmin = N`` with one background range is ``delta:N,blocks=a-b`` exactly; ``N = 1`` is
``none``. The method is a thin layer over the planner's range delta (:meth:`Planner.range_delta`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan, insert_after, replace
from . import register
from .base import Controller, Method, Params, param


@dataclass(frozen=True)
class ProfilingDiTParams(Params):
    Tmax: int = param(4, "cache interval at the first step that may reuse (eq. 61's T_max)", 1, 1000)
    Tmin: int = param(2, "cache interval at the last step (eq. 61's T_min, <= Tmax)", 1, 1000)
    bg: str = param("", "background blocks, reused: ranges a-b or single blocks joined by / (default: all blocks "
                        "but the first and last); the others (foreground) always run")


class ProfilingDiTController(Controller):
    """Full when the gap since the last full step reaches eq. 61's interval at this step."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        p = policy.params
        if num_steps is None and p.Tmax != p.Tmin:
            raise PolicyError(f"{policy.spec}: the interval Tmax -> Tmin shrinks over the trajectory, which needs "
                              "its length (num_steps); pass it, or use Tmax = Tmin")

    def interval(self, step: int) -> float:
        """Eq. 61 with s0 = warmup and S = T − 1."""
        p = self.policy.params
        if p.Tmax == p.Tmin:
            return float(p.Tmax)
        s0, S = p.warmup, self.num_steps - 1
        if S <= s0:
            return float(p.Tmin)
        return p.Tmax - (p.Tmax - p.Tmin) * (step - s0) / (S - s0)

    def rule(self, step, signal):
        return step - self.last_full >= self.interval(step)


def parse_ranges(spec: str, text: str) -> list[tuple[int, int]]:
    """``a-b/c/d-e`` as sorted (a, b) pairs; adjacent or overlapping ranges are merged into runs."""
    blocks: set[int] = set()
    for part in text.split("/"):
        try:
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise PolicyError(f"{spec}: bg={text!r} is not block ranges a-b or blocks a joined by / "
                              "(e.g. bg=1-2/4)") from None
        if lo < 0 or hi < lo:
            raise PolicyError(f"{spec}: bg range {part!r} is not a-b with 0 <= a <= b")
        blocks.update(range(lo, hi + 1))
    runs: list[tuple[int, int]] = []
    for i in sorted(blocks):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


@register
class ProfilingDiTMethod(Method):
    name = "profilingdit"
    doc = ("ProfilingDiT: background blocks (bg) reuse their residual, foreground blocks always run; the cache "
           "interval shrinks from Tmax to Tmin over the trajectory")
    granularity = "block"
    main = "Tmax"
    positional = ("Tmax", "Tmin")
    Params = ProfilingDiTParams
    controller_cls = ProfilingDiTController

    def validate(self) -> None:
        p = self.params
        if p.Tmin > p.Tmax:
            raise PolicyError(f"{self.spec}: Tmin={p.Tmin} > Tmax={p.Tmax}; ProfilingDiT caches coarsely early and "
                              "finely late, so accepted: 1 <= Tmin <= Tmax")
        if p.bg:
            parse_ranges(self.spec, p.bg)

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, tuple(self.background_runs(num_blocks)))

    def background_runs(self, num_blocks: int) -> list[tuple[int, int]]:
        """The runs of consecutive background blocks, checked against the model's blocks."""
        if not self.params.bg:
            if num_blocks < 3:
                raise PolicyError(f"{self.spec}: a model of {num_blocks} blocks needs bg=a-b (the default reuses all "
                                  "blocks but the first and last)")
            return [(1, num_blocks - 2)]
        runs = parse_ranges(self.spec, self.params.bg)
        if runs[-1][1] >= num_blocks:
            raise PolicyError(f"{self.spec}: bg={self.params.bg} is outside the model's blocks 0-{num_blocks - 1}")
        return runs

    def plan(self, planner) -> Plan:
        plan = planner.new_plan()
        full = reuse = plan.variants["full"]
        for a, b in self.background_runs(len(planner.blocks)):
            write, apply, _ = planner.range_delta(plan, a, b, f"profilingdit_b{a}_{b}")
            segs = planner.range_segments(a, b)
            full, reuse = insert_after(full, segs[-1], write), replace(reuse, segs, apply)
        plan.variants = {"full": full, "reuse": reuse}
        return plan
