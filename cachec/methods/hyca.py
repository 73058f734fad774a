"""``hyca:N,calib=FILE`` — HyCa (hybrid ODE solvers per feature dimension): full every N steps; on a
cached step each *cluster of channels* of every attention/MLP output is forecast by its own solver,
a Taylor series of finite differences (TaylorSeer) of the order that forecast that cluster best on a
calibration trajectory.

``cachec calibrate`` clusters each stream's channels by their dynamics and measures every order's
error per cluster and interval (:mod:`cachec.channel_clusters`); the file's ``hyca`` section is this
method's data, stored like MagCache's ratios (an artifact carries it). The controller picks, per
cluster, the order among ``solvers=`` of least error at this N, so N and the solver set stay run-time
parameters. The cached step's forecast is ``F̂ = Σ_i C_i·[order(c) ≥ i]·D_i`` — TaylorSeer's state and
coefficients, the per-channel orders a run-time input — so ``solvers=O`` (every cluster order O)
is ``taylorseer:N,O=O`` exactly, and one cluster of order O likewise (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PolicyError
from ..forecast import PREDICT, Taylor
from ..planner.plan import Plan, per_segment
from ..planner.segments import example, traced
from ..program import Run
from . import register
from .base import Action, Method, Params, param
from .forecasting import ForecastController

ORDER_PREFIX = "hyca__order__"


@dataclass(frozen=True)
class HyCaParams(Params):
    N: int = param(4, "interval: one full step, then N-1 forecast steps", 1, 1000)
    solvers: str = param("012", "Taylor orders a cluster may use, as digits (012: reuse, order 1, order 2)")
    calib: str = param("", "calibration file from `cachec calibrate` (its hyca section: channel clusters and "
                           "each order's error)", file=True)
    warmup: int = param(2, "first K steps always full", 0)


def stream_key(segment: str, k: int) -> str:
    """The name a stream has in the calibration: ``SEGMENT__K`` (as its cache ``cache__SEGMENT__K__d0``)."""
    return f"{segment}__{k}"


class HyCaController(ForecastController):
    """FORA's interval with TaylorSeer's coefficients; cached steps also hand each stream its
    per-channel orders (int64 tensors, made once per device)."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.orders = policy.channel_orders()
        self.tensors: dict = {}

    def order_inputs(self, device) -> dict[str, torch.Tensor]:
        if device not in self.tensors:
            self.tensors[device] = {ORDER_PREFIX + key: torch.tensor(v, dtype=torch.int64, device=device)
                                    for key, v in self.orders.items()}
        return self.tensors[device]

    def check_against_program(self, planned) -> None:
        """The program was planned (and its streams checked) with the data it carries: data read at
        run time from another file must name the same streams with the same channel counts."""
        compiled = (planned.policy_data or {}).get("streams") or {}
        widths = {k: len(v["labels"]) for k, v in compiled.items()}
        if widths != {k: len(v) for k, v in self.orders.items()}:
            raise PolicyError(f"hyca: the calibration {self.policy.params.calib} names other streams or channel "
                              "counts than the program was compiled with: compile for it, or use the program's file")

    def actions(self, step, ctx):
        if step == 0 or not self.tensors:
            self.check_against_program(ctx.planned)
        full = self.decide(step)
        inputs = dict(self.step_inputs(step, full))
        if not full:
            inputs.update(self.order_inputs(ctx.device))
        yield Action("full" if full else "reuse", "F" if full else "R", inputs)


@register
class HyCaMethod(Method):
    name = "hyca"
    doc = ("HyCa: channels of each attention/MLP output clustered on a calibration trajectory; each cluster "
           "forecast by the Taylor order that fit it best; full every N")
    granularity = "module"
    main = "N"
    Params = HyCaParams
    controller_cls = HyCaController
    needs_data = True
    rank = 9

    def validate(self):
        s = self.params.solvers
        if not s or not s.isdigit() or len(set(s)) != len(s) or max(s) > "2":
            raise PolicyError(f"hyca: solvers={s!r}; accepted: distinct digits 0..2, the Taylor orders a cluster "
                              "may use (e.g. 012, 01, 2)")
        if not self.params.calib:
            raise PolicyError("hyca needs calib=FILE, a calibration file written by `cachec calibrate` (its hyca "
                              "section holds the channel clusters)")

    def order(self) -> int:
        """The highest order in the solver set: the forecast state the graph keeps."""
        return max(int(c) for c in self.params.solvers)

    def forecast_method(self):
        return Taylor(self.order())

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.order())

    def data_source(self) -> str:
        return self.params.calib

    def load_data(self) -> dict:
        from ..schedules import read_calibration

        src = self.params.calib
        section = read_calibration(src).get("hyca")
        if not isinstance(section, dict) or not isinstance(section.get("streams"), dict) or not section["streams"]:
            raise PolicyError(f"hyca: calibration file {src} has no hyca section (channel clusters); write it again "
                              f"with this cachec: cachec calibrate MODEL --out {src}")
        return {"max_gap": section.get("max_gap"), "streams": section["streams"]}

    def channel_orders(self) -> dict[str, list[int]]:
        """Per stream, each channel's Taylor order: its cluster's order of least calibrated error at
        this N among ``solvers`` (the lowest order on a tie)."""
        data, p = self.resolved().data, self.params
        max_gap = data["max_gap"]
        if not isinstance(max_gap, int) or p.N > max_gap:
            raise PolicyError(f"hyca: N={p.N}, but the calibration measured intervals up to {max_gap}; use N <= "
                              f"{max_gap}")
        allowed = sorted(int(c) for c in p.solvers)
        orders = {}
        for key, stream in data["streams"].items():
            try:
                best = [min(allowed, key=lambda o, e=errs: (e[o][p.N - 1], o)) for errs in stream["errors"]]
                orders[key] = [best[label] for label in stream["labels"]]
            except (KeyError, IndexError, TypeError):
                raise PolicyError(f"hyca: the calibration's stream {key} is malformed (labels, and errors per "
                                  "cluster, order 0..2 and interval); write the file again with `cachec calibrate`") from None
        return orders

    def plan(self, planner) -> Plan:
        return plan_hyca(planner, self)


def _check_streams(policy: HyCaMethod, seen: dict[str, int]) -> None:
    """The calibration names exactly this model's streams, each with its channel count."""
    streams = policy.resolved().data["streams"]
    where = f"hyca: the calibration file {policy.params.calib}"
    for key, channels in seen.items():
        labels = streams.get(key, {}).get("labels") if isinstance(streams.get(key), dict) else None
        if not isinstance(labels, list) or len(labels) != channels:
            raise PolicyError(f"{where} has no clusters for {channels} channels of stream {key}: it was measured on "
                              "another model; calibrate this one")
    extra = sorted(set(streams) - set(seen))
    if extra:
        raise PolicyError(f"{where} names stream {extra[0]}, which this model does not have: it was measured on "
                          "another model; calibrate this one")


def masked_forecast(states: int, outputs: int):
    """``(C, order_0.., D_0_0.., D_1_0..) -> F̂_k = Σ_i C[0, i]·[order_k ≥ i]·D_k_i`` per output k."""
    def fn(coeffs, *rest):
        orders, ds = rest[:outputs], rest[outputs:]
        out = []
        for k in range(outputs):
            d = ds[k * states:(k + 1) * states]
            acc = coeffs[0, 0] * d[0]
            for i in range(1, states):
                acc = acc + coeffs[0, i] * (orders[k] >= i).to(d[i].dtype) * d[i]
            out.append(acc)
        return tuple(out)

    return fn


def plan_hyca(planner, policy: HyCaMethod) -> Plan:
    """TaylorSeer's module forecast (:meth:`~cachec.planner.Planner.forecast_ops`), its cached step's
    mix replaced by the per-channel masked forecast of :func:`masked_forecast`."""
    method = policy.forecast_method()
    plan = planner.new_plan()
    ex = plan.examples
    by_seg = planner.region_by_segment()
    channels = {stream_key(seg, k): int(ex[value].shape[-1])
                for seg in by_seg for k, value in enumerate(planner.segments[seg].outputs)}
    _check_streams(policy, channels)  # before any segment is traced: a file for another model fails fast

    def rewrite(op: Run):
        if op.segment not in by_seg:
            return None
        outputs = planner.segments[op.segment].outputs
        update, forecast = planner.forecast_ops(plan, op.segment, outputs, method)
        loads = [o for o in forecast if not isinstance(o, Run)]
        coeff = (PREDICT, torch.zeros(tuple(ex[PREDICT].shape), dtype=ex[PREDICT].dtype))
        orders, states = [], []
        for k, value in enumerate(outputs):
            name = ORDER_PREFIX + stream_key(op.segment, k)
            ex[name] = torch.empty(channels[stream_key(op.segment, k)], dtype=torch.int64)
            orders.append((name, torch.zeros(ex[name].shape, dtype=torch.int64)))
            states += [(load.value, example(ex[value])) for load in loads[k * method.state:(k + 1) * method.state]]
        gm = traced(masked_forecast(method.state, len(outputs)), [coeff, *orders, *states], list(outputs),
                    "HyCaForecast")
        seg = planner.add_segment(plan, f"{op.segment}_hyca_predict", gm, "cache")
        return {"full": [op, *update], "reuse": [*loads, Run(seg)]}

    plan.variants = per_segment(plan.variants["full"], ["full", "reuse"], rewrite)
    return plan
