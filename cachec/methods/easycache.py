"""``easycache:tau`` — EasyCache (Zhou et al., 2025): at the raw-latent level, ``v ≈ x + Δ`` with
``Δ = v − x`` of the last full step. The controller accumulates the predicted output change
``k·|Δx|/|v|`` (k, the transformation rate, measured between full steps) and reuses below tau."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..errors import ModelError
from ..planner import next_value
from ..planner.plan import Plan
from ..planner.segments import StreamPair, computed, delta_apply, graph_module, item_means, mean_abs
from ..program import Load, Run, Store, cache_name, per_item
from . import register
from .base import Controller, Method, ProbeParams, param

aten = torch.ops.aten


@dataclass(frozen=True)
class EasyCacheParams(ProbeParams):
    tau: float = param(0.05, "threshold on the accumulated relative output change", 0.0, 100.0)
    warmup: int = param(5, "first K steps always full", 0)
    final: int = param(1, "last K steps always full", 0)


class EasyCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.rate: float | None = None  # k, known after two full steps
        self.norm: float | None = None  # mean|v| of the last full step
        self.err = 0.0
        self.n_full = 0

    def forced(self, step):
        return super().forced(step) or self.rate is None or not self.norm  # k is known after two full steps

    def rule(self, step, signal):
        self.err += self.rate * signal / self.norm
        return not (self.err < self.policy.params.tau)

    def on_full(self, step):
        self.err = 0.0

    def observe(self, values):
        if self.n_full > 0:
            self.rate = values["easycache__k"]
        self.norm = values["easycache__vnorm"]
        self.n_full += 1


@register
class EasyCacheMethod(Method):
    name = "easycache"
    doc = "EasyCache: accumulate the predicted output change k*|Δx|/|v| (k measured at full steps); reuse v = x + Δ below tau"
    dynamic = True
    main = "tau"
    Params = EasyCacheParams
    controller_cls = EasyCacheController
    variants = ("full", "head", "tail_full", "tail_reuse")
    rank = 10

    def plan(self, planner) -> Plan:
        """The head is only a probe on the latent input (``d = mean|x − x_prev|``); the full tail runs
        the model and hands the controller the transformation rate ``k`` and ``mean|v|``."""
        x, v = planner.captured.latent_input, planner.captured.output_name
        if planner.spec(x) != planner.spec(v):
            raise ModelError(f"easycache reuses the output as latent + Δ, so the output must have the latent's "
                             f"shape; {x} is {planner.spec(x).shape} and the output {planner.spec(v).shape} "
                             "(a learned-sigma DiT doubles the channels)")
        plan = planner.new_plan()
        meta = plan.examples
        x_prev, x_pf, v_pf, delta = (cache_name("easycache", n) for n in ("x_prev", "x_full", "v_full", "delta"))
        d, k, vnorm = "easycache__d", "easycache__k", "easycache__vnorm"
        for c in (x_prev, x_pf, v_pf, delta, "easycache__x", next_value(x_pf), next_value(v_pf)):
            meta[c] = meta[x]
        for c in (d, k, vnorm):
            meta[c] = torch.empty(())
        probe = planner.add_segment(plan, "easycache_probe", latent_step_probe(x, x_prev, d, "easycache__x", meta,
                                                                             planner.item_dim(x)), "probe")
        write = planner.add_segment(
            plan, "easycache_write",
            easycache_write(x, v, x_pf, v_pf, delta, k, vnorm, next_value(x_pf), next_value(v_pf), meta,
                            planner.item_dim(x)), "cache")
        apply = planner.add_segment(plan, "easycache_apply", delta_apply([StreamPair(v, x, delta)], meta), "cache")
        full = plan.variants["full"]
        head = [Load(x_prev, x_prev), Run(probe), Store("easycache__x", x_prev)]
        tail_full = list(full) + [Load(x_pf, x_pf), Load(v_pf, v_pf), Run(write),
                                  Store(next_value(x_pf), x_pf), Store(next_value(v_pf), v_pf), Store(delta, delta)]
        tail_reuse = [Load(delta, delta), Run(apply)]
        if planner.delta_forecast is not None:  # a hybrid (methods/hybrid.py): Δ forecast, not copied
            update, forecast = planner.forecast_ops(plan, "easycache_delta", [delta], planner.delta_forecast)
            tail_full += update
            tail_reuse = forecast + [Run(apply)]
        plan.variants = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": full}
        plan.signal, plan.feedback = d, [k, vnorm]
        return plan


# ---------------------------------------------------------------------------------------------
# EasyCache's graphs: the probe on the latent and the full step's write

def latent_step_probe(latent: str, previous: str, signal: str, emit_as: str, meta: dict[str, object],
                      batch_dim: int | None = None) -> fx.GraphModule:
    """EasyCache's input change ``mean|x − x_prev|``; also returns ``x`` (stored as the next ``x_prev``)
    and, with ``batch_dim``, the change of each batch item."""
    g = fx.Graph()
    x, prev = g.placeholder(latent), g.placeholder(previous)
    x.meta["val"], prev.meta["val"] = meta.get(latent), meta.get(previous)
    ex = meta.get(latent)
    d = mean_abs(g, computed(g, aten.sub.Tensor, (x, prev), ex), ex)
    copy = computed(g, aten.clone.default, (x,), ex)
    outs = [(signal, d), (emit_as, copy)]
    if batch_dim is not None:
        outs.append((per_item(signal), item_means(g, d.args[0], ex, batch_dim)))
    return graph_module(g, outs, "LatentStepProbe")


def easycache_write(latent: str, output: str, latent_full: str, output_full: str, delta: str, rate: str,
                    output_norm: str, next_latent_full: str, next_output_full: str,
                    meta: dict[str, object], batch_dim: int | None = None) -> fx.GraphModule:
    """At an EasyCache full step: the transformation rate ``k = mean|v − v_pf| / mean|x − x_pf|``
    against the previous full step, ``mean|v|``, the new ``Δ = v − x`` and copies of ``x``, ``v``
    (``next_*``, stored as the next full step's references); with ``batch_dim`` also ``k`` and
    ``mean|v|`` of each batch item."""
    g = fx.Graph()
    names = (latent, output, latent_full, output_full)
    x, v, x_pf, v_pf = (g.placeholder(n) for n in names)
    for node, n in zip((x, v, x_pf, v_pf), names, strict=True):
        node.meta["val"] = meta.get(n)
    ex = meta.get(latent)
    num = mean_abs(g, computed(g, aten.sub.Tensor, (v, v_pf), ex), ex)
    den = mean_abs(g, computed(g, aten.sub.Tensor, (x, x_pf), ex), ex)
    k = computed(g, aten.div.Tensor, (num, den), torch.empty(()))
    norm = mean_abs(g, v, ex)
    d = computed(g, aten.sub.Tensor, (v, x), ex)
    outs = [(rate, k), (output_norm, norm), (delta, d),
            (next_latent_full, computed(g, aten.clone.default, (x,), ex)),
            (next_output_full, computed(g, aten.clone.default, (v,), ex))]
    if batch_dim is not None:
        num_i, den_i = (item_means(g, m.args[0], ex, batch_dim) for m in (num, den))
        outs += [(per_item(rate), computed(g, aten.div.Tensor, (num_i, den_i), num_i.meta["val"])),
                 (per_item(output_norm), item_means(g, norm.args[0], ex, batch_dim))]
    return graph_module(g, outs, "EasyCacheWrite")
