"""``adacache:codebook=…,block=-1`` — AdaCache (Kahatapitiya et al., 2024, "Adaptive caching for
faster video generation with diffusion transformers"): how long a cache lives depends on the
content — the faster a chosen block's residual changes between computed steps, the sooner the next
full step comes. A *codebook* maps the rate of change to the reuse interval.

The rule (cachec's reading; docs/methods.md says why):

* every full step computes all blocks, stores every attention/MLP output (FORA's cache) and the
  chosen block's residual ``Δ = out − in`` (all its streams), and measures its change against the
  residual stored at the previous full step ``a``:
  ``c = Σ‖Δ_old − Δ_new‖₁ / Σ‖Δ_new‖₁ / (s − a)`` — the survey's eq. 37 made relative and
  divided by the distance ``k = s − a`` (a rate, so gaps of different length compare);
* the codebook ``t₁:n₁/t₂:n₂/…`` (thresholds ascending) gives the next interval: ``n_j`` for the
  first ``j`` with ``c < t_j``, and 1 (the next step is full) when ``c`` reaches the last
  threshold; before a rate exists (the first full step) the interval is 1;
* a step is full when forced (step 0, warmup, final) or when ``s − a ≥ n``; otherwise every
  attention/MLP output is reused under the current adaLN (as FORA).

A codebook of one entry ``t:N`` with ``t`` above any rate is ``fora:N,warmup=2`` (steps 0 and 1
full, then one every N); ``t:1`` is ``none``. AdaCache's motion regularisation (eq. 38) needs a
video motion estimate and is not included (β = 0). One device→host read per full step (``c``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan, insert_after
from ..planner.segments import StreamPair, delta_write
from ..program import Load, Run, Store, cache_name
from . import register
from .base import Action, Controller, Method, Params, param
from .blockcache import _relative_change

SIGNAL = "adacache__rate"
DEFAULT_CODEBOOK = "0.03:6/0.05:5/0.07:4/0.09:3/0.11:2"


@dataclass(frozen=True)
class AdaCacheParams(Params):
    codebook: str = param(DEFAULT_CODEBOOK, "rate thresholds and reuse intervals t1:n1/t2:n2/... (t ascending): "
                                            "interval n_j for the first t_j above the rate, 1 above them all")
    block: int = param(-1, "block whose residual's change rate is measured (-1: the middle block, L // 2)", -1, 100000)


def parse_codebook(spec: str, text: str) -> list[tuple[float, int]]:
    """``"0.1:4/0.2:2"`` -> ``[(0.1, 4), (0.2, 2)]``; a mistake is a PolicyError saying the form."""
    form = "entries t:n joined by '/', thresholds t > 0 ascending, intervals n >= 1 (e.g. 0.08:6/0.16:4/0.3:2)"
    entries = []
    for item in text.split("/"):
        t, sep, n = item.partition(":")
        try:
            entry = (float(t), int(n))
        except ValueError:
            entry = None
        if not sep or entry is None or not entry[0] > 0 or entry[0] == float("inf") or entry[1] < 1:
            raise PolicyError(f"{spec}: codebook entry {item!r} is not t:n; the codebook is {form}")
        entries.append(entry)
    if any(b[0] <= a[0] for a, b in zip(entries, entries[1:], strict=False)):
        raise PolicyError(f"{spec}: codebook={text!r} has thresholds out of order; the codebook is {form}")
    return entries


class AdaCacheController(Controller):
    """Full steps measure the chosen block's change rate; the codebook turns it into the next interval."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.codebook = parse_codebook(policy.spec, policy.params.codebook)
        self.interval = 1
        self.rates: list[float] = []

    def next_interval(self, rate: float) -> int:
        return next((n for t, n in self.codebook if rate < t), 1)

    def actions(self, step, ctx):
        if not (self.forced(step) or step - self.last_full >= self.interval):
            yield Action("reuse", "R")
            return
        values = yield Action("full", "F", read=(SIGNAL,))
        if self.last_full is not None:
            rate = values[SIGNAL] / (step - self.last_full)
            self.rates.append(rate)
            self.interval = self.next_interval(rate)
        self.last_full = step


@register
class AdaCacheMethod(Method):
    name = "adacache"
    doc = ("AdaCache: full steps measure a block's residual change rate; a codebook of thresholds maps it to how many "
           "steps the attention/MLP outputs are reused next")
    granularity = "attn, mlp"
    dynamic = True  # decides from measured changes: a batch shares its decisions (`cachec serve` runs it alone)
    Params = AdaCacheParams
    controller_cls = AdaCacheController

    def validate(self) -> None:
        parse_codebook(self.spec, self.params.codebook)

    def check_program(self, variants, meta: dict, values):
        """No probe signal: it reads the full variant's feedback, the measured change."""
        missing = sorted(set(self.variants) - set(variants))
        if missing:
            return "variants", f"has no {missing[0]!r} variant, which policy {self.spec} runs"
        if SIGNAL not in (meta.get("feedback") or ()) or SIGNAL not in values:
            return "meta.feedback", f"should name {SIGNAL!r}, the change rate policy {self.spec} reads"
        return None

    def measured_block(self, num_blocks: int) -> int:
        b = self.params.block
        if b == -1:
            return num_blocks // 2
        if b >= num_blocks:
            raise PolicyError(f"{self.spec}: block={b} is outside the model's blocks 0-{num_blocks - 1}")
        return b

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.measured_block(num_blocks))

    def plan(self, planner) -> Plan:
        """FORA's plan, with the measured block's residual change computed and its residual
        stored after that block in the full variant."""
        b = self.measured_block(len(planner.blocks))
        plan = planner.module_reuse()
        ex = plan.examples
        segs = planner.range_segments(b, b)
        if not segs:
            raise ModelError(f"adacache: block {b} ({planner.blocks[b]}) has no segment of its own")
        inputs, outputs = planner.range_io(segs)
        pairs = [StreamPair(p.output, p.base, cache_name("adacache", "res", str(k)))
                 for k, p in enumerate(planner.pair_streams(inputs, outputs, "adacache"))]
        old = {p.cache: f"adacache__old{k}" for k, p in enumerate(pairs)}
        for p in pairs:
            ex[p.cache] = ex[old[p.cache]] = ex[p.output]
        ex[SIGNAL] = torch.empty(())
        probe = planner.add_segment(plan, "adacache_change", _relative_change(
            [(old[p.cache], p.output, p.base) for p in pairs], SIGNAL, ex), "probe")
        write = planner.add_segment(plan, "adacache_write", delta_write(pairs, ex), "cache")
        # the change is measured before the write: a backend may write the new residual straight
        # into the buffer the old one is read from (ONNX Runtime's bound outputs)
        ops = ([Load(c, v) for c, v in old.items()] + [Run(probe), Run(write)]
               + [Store(p.cache, p.cache) for p in pairs])
        plan.variants["full"] = insert_after(plan.variants["full"], segs[-1], ops)
        plan.feedback = [SIGNAL]
        return plan
