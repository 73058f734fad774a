"""Calibration: measure what reuse costs at each step, then spend a fixed NFE budget best.

``cachec calibrate`` runs the uncached model over a trajectory on S calibration inputs and
measures, for every pair (last full step i, later step j), the error of step j's output when
it is served from step i's caches instead of computed: ``e[i][j] = rms(out_j(cached) − out_j)``.
Each step's error is weighted by the step's *gain*, how much an output error at that step shows
in the final sample — measured by perturbing the step's output (in the direction a stale cache
errs: the output's own step-to-step change) and running the rest of the trajectory — so
``Σ_j gain_j·e[last_full(j)][j]`` is a first-order prediction of the final error (it treats
errors of different steps as adding up, and measures them on the uncached trajectory). For the
``forecast`` base (TaylorSeer order 1) the error depends on the last two full steps, so it is
measured for every (p, i, j).

Given the measurements, :func:`cachec.schedules.budget_schedule` (pure schedule maths, kept
apart) finds the schedule with exactly K full steps that minimises the predicted error. That
answers "best quality at a fixed NFE" and makes the cost of a trajectory deterministic. The file also records MagCache's magnitude ratios
``γ_t = mean_tokens(‖r_t‖/‖r_{t−1}‖)`` of the block-stack residual r, from the same runs, and
OmniCache's curvature of the uncached trajectory (:func:`curvature`).

The calibration file's format is described (and read) in :mod:`cachec.schedules`. A front end,
like ``cachec run``/``bench``: it takes an open :class:`~cachec.session.Session`, gets its runtimes
from :meth:`Session.runtime <cachec.session.Session.runtime>` (the session's programs, backend,
signature and device) and measures through the runtime's public API only (``bind``,
``new_caches``, ``variants``).
"""

from __future__ import annotations

import statistics

import torch

from . import channel_clusters
from .errors import PolicyError
from .schedules import BASES, FORMAT, VERSION

# the two programs calibration runs: the stack residual (base step, and MagCache's ratios), and
# TaylorSeer order 1 on module streams (its forecast with no earlier full step is FORA's reuse)
STACK_POLICY, FORECAST_POLICY = "static:FR", "taylorseer:2,O=1,warmup=0"


# --------------------------------------------------------------------------------------------
# measuring


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


@torch.no_grad()
def calibrate(session, *, steps: int, samples: int, seed: int = 0, bases=("module", "step", "forecast"),
              max_gap: int = 10, progress=None) -> dict:
    """Measure reuse errors for ``bases`` and the MagCache ratios on ``samples`` inputs (one batch)
    of the model ``session`` opened.

    Two programs serve all bases: the block-stack residual (``step``, and the ratios), and
    TaylorSeer order 1 on module streams, whose forecast without an earlier full step is FORA's
    reuse (``module``) and with one is the ``forecast`` base.
    """
    say = progress or (lambda msg: None)
    unknown = [b for b in bases if b not in BASES]
    if unknown:
        raise PolicyError(f"calibrate: unknown base {unknown[0]!r}; accepted: {', '.join(BASES)}")
    errors: dict[str, object] = {}
    hyca = None
    bundle = session.bundle
    stack = _Recorder(session, STACK_POLICY, steps)
    say(f"calibrate: uncached trajectory, {steps} steps x {samples} samples")
    stack.record(bundle, seed, samples)
    say("calibrate: how an output error at each step moves the final sample")
    gains = stack.sensitivities(bundle)
    ratios = _magnitude_ratios([r[2] for r in stack.records])
    bends = curvature([r[1] for r in stack.records])
    if "step" in bases:
        say("calibrate: reuse errors of the block-stack residual (base=step)")
        errors["step"] = stack.reuse_errors()
    if "module" in bases or "forecast" in bases:
        fc = _Recorder(session, FORECAST_POLICY, steps)
        say("calibrate: module features of the uncached trajectory")
        fc.record(bundle, seed, samples)
        say("calibrate: reuse and forecast errors of module streams (base=module, forecast)")
        forecast = fc.forecast_errors(max_gap)
        say("calibrate: channel clusters of module streams and each order's error (hyca)")
        hyca = channel_clusters.measure(fc.stream_trajectories(), max_gap=max_gap)
        if "module" in bases:
            errors["module"] = [[0.0] * (i + 1) + forecast[f"-1,{i}"] for i in range(steps)]
        if "forecast" in bases:
            errors["forecast"] = forecast
    return {"format": FORMAT, "version": VERSION, "model": bundle.name, "steps": steps, "samples": samples,
            "seed": seed, "max_gap": max_gap, "gains": gains, "ratios": ratios, "curvature": bends, "errors": errors,
            **({"hyca": hyca} if hyca else {})}


class _Recorder:
    """Runs a program's paths directly: records the uncached trajectory (inputs, output, caches
    after each step), then serves later steps from earlier steps' caches, many cache states per
    call stacked along the batch (the programs keep the batch dynamic)."""

    MAX_STATES = 64  # cache states stacked into one call

    def __init__(self, session, spec: str, steps: int):
        self.rt = session.runtime(spec, steps=steps)
        self.program, self.steps = self.rt.program, steps
        self.records: list[tuple[dict, torch.Tensor, dict]] = []

    def _coeffs(self, name: str, matrix, device) -> torch.Tensor:
        return torch.tensor(matrix, dtype=getattr(torch, self.program.values[name].dtype), device=device)

    def record(self, bundle, seed: int, samples: int) -> None:
        from .forecast import UPDATE, Taylor
        from .sampling import sample

        out = self.program.output

        def full_step(**kw):
            inputs = self.rt.bind((), {k: v for k, v in kw.items() if k != "return_dict"})
            env, caches = dict(inputs), self.rt.new_caches(inputs)  # zero state: every step is a first full step
            if UPDATE in self.program.values:
                env[UPDATE] = self._coeffs(UPDATE, Taylor(1).update(0, 1), next(iter(inputs.values())).device)
            self.rt.variants["full"](env, caches)
            self.records.append((inputs, env[out].clone(), {k: v.clone() for k, v in caches.items()}))
            return (env[out],)

        sample(full_step, bundle, self.steps, seed, samples)

    def stream_trajectories(self) -> dict[str, list[torch.Tensor]]:
        """Each module stream's value at every recorded step (its ``d0`` cache), by ``SEGMENT__K``."""
        names = [n for n in self.records[0][2] if n.endswith("__d0")]
        return {n[len("cache__"):-len("__d0")]: [r[2][n] for r in self.records] for n in names}

    def sensitivities(self, bundle) -> list[float]:
        """Per step j: ``rms(final' − final) / rms(δ)`` when step j's output is perturbed by δ and
        every later step is computed — how much an output error at j shows in the sample.

        δ follows the output's own step-to-step change (the direction a stale cache errs in),
        scaled small enough to stay in the linear regime. All perturbed trajectories advance
        together, batched, each with its own copy of the scheduler.
        """
        import copy

        from .sampling import scheduler_output

        latent, out_name = bundle.latent_input, self.program.output
        scheduler = bundle.scheduler()
        scheduler.set_timesteps(self.steps)
        timesteps = list(scheduler.timesteps)
        groups: list[list] = []  # [start step, latent, scheduler copy, delta rms]
        ref_final = None
        for k, t in enumerate(timesteps):
            inputs, v = self.records[k][0], self.records[k][1]
            x = inputs[latent]
            if groups:
                env = {n: self._batched(n, [val] * len(groups)) for n, val in inputs.items()}
                env[latent] = torch.cat([g[1] for g in groups])
                self.rt.variants["full"](env, {})
                outs = env[out_name].chunk(len(groups))
                for g, o in zip(groups, outs, strict=True):
                    g[1] = g[2].step(scheduler_output(o, g[1]), t, g[1], return_dict=False)[0]
            other = self.records[k - 1][1] if k > 0 else self.records[1][1]
            direction = other - v
            delta = direction * (1e-3 * _rms(v) / max(_rms(direction), 1e-12))
            fork = copy.deepcopy(scheduler)
            x_next = fork.step(scheduler_output(v + delta, x), t, x, return_dict=False)[0]
            groups.append([k, x_next, fork, _rms(delta)])
            x_ref = scheduler.step(scheduler_output(v, x), t, x, return_dict=False)[0]
            ref_final = x_ref
        return [_rms(g[1] - ref_final) / g[3] for g in groups]

    def _batched(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        spec = self.program.values.get(name)
        dim = spec.shape.index("B") if spec is not None and "B" in spec.shape else None
        return tensors[0] if dim is None else torch.cat(tensors, dim=dim)

    def serve(self, j: int, states: list[dict], extra: dict | None = None) -> list[float]:
        """rms error of step j's output served from each cache state (vs the uncached output)."""
        errs = []
        inputs, ref = self.records[j][0], self.records[j][1]
        for k in range(0, len(states), self.MAX_STATES):
            chunk = states[k:k + self.MAX_STATES]
            env = {n: self._batched(n, [v] * len(chunk)) for n, v in inputs.items()}
            env.update(extra or {})
            caches = {c: self._batched(c, [s[c] for s in chunk]) for c in chunk[0]}
            self.rt.variants["reuse"](env, caches)
            for y in env[self.program.output].chunk(len(chunk), dim=0):
                errs.append(_rms(y - ref))
        return errs

    def reuse_errors(self) -> list[list[float]]:
        """``e[i][j]``: step j served from the caches of full step i (0 where j <= i)."""
        m = [[0.0] * self.steps for _ in range(self.steps)]
        for j in range(1, self.steps):
            for i, e in enumerate(self.serve(j, [self.records[i][2] for i in range(j)])):
                m[i][j] = e
        return m

    def forecast_errors(self, max_gap: int) -> dict[str, list[float]]:
        """TaylorSeer-1 errors for (previous full p, last full i, step j), p = -1 meaning none.

        With no earlier full step the forecast is FORA's reuse (order 0 is all that exists), served
        for every (i, j). With one, only gaps ``i − p`` and ``j − i`` up to ``max_gap`` are
        measured: the cost is cubic in the steps otherwise, and a budget schedule with longer gaps
        is rarely the best. The state after full steps p and i is the method's own update applied
        on the host to the recorded D_0 of both steps — the map the update segment computes.
        """
        from .forecast import PREDICT, Taylor

        method = Taylor(1)
        device = self.records[0][1].device
        out: dict[str, list[float]] = {}
        reuse = {i: [] for i in range(self.steps)}
        order0 = {PREDICT: self._coeffs(PREDICT, method.predict(1, 1), device)}  # F̂ = D_0 for any x
        for j in range(1, self.steps):
            for i, e in enumerate(self.serve(j, [self.records[i][2] for i in range(j)], order0)):
                reuse[i].append(e)
        for i in range(self.steps):
            out[f"-1,{i}"] = reuse[i]
        for i in range(1, self.steps):
            fresh = self.records[i][2]
            ps = list(range(max(0, i - max_gap), i))
            states = []
            for p in ps:
                u, old = method.update(1, i - p), self.records[p][2]
                state = {}
                for name, d0 in fresh.items():
                    if name.endswith("__d0"):
                        stem = name[: -len("d0")]
                        state[name] = d0
                        state[stem + "d1"] = u[1][0] * d0 + u[1][1] * old[name] + u[1][2] * old[stem + "d1"]
                states.append(state)
            rows = {p: [] for p in ps}
            for j in range(i + 1, min(i + max_gap, self.steps - 1) + 1):
                coeffs = {PREDICT: self._coeffs(PREDICT, method.predict(j - i, 2), device)}
                for p, e in zip(ps, self.serve(j, states, coeffs), strict=True):
                    rows[p].append(e)
            out.update({f"{p},{i}": rows[p] for p in ps})
        return out


def _magnitude_ratios(caches: list[dict]) -> list[float]:
    """MagCache's ``γ_t = mean_tokens(‖r_t‖₂ / ‖r_{t−1}‖₂)`` of the stack residual (img stream), γ_0 = 1."""
    name = next(n for n in caches[0] if n.startswith("cache__stack"))
    ratios = [1.0]
    for prev, cur in zip(caches, caches[1:], strict=False):
        r0, r1 = prev[name].double(), cur[name].double()
        dim = -1 if r0.dim() == 3 else 1  # tokens x features, or channels of a feature map
        ratios.append(float((r1.norm(dim=dim) / r0.norm(dim=dim).clamp_min(1e-12)).mean()))
    return ratios


def curvature(outputs: list[torch.Tensor]) -> list[float]:
    """OmniCache's curvature of the trajectory: ``κ_j = 1 − cos(v_j, v_{j−1})`` of the model outputs,
    per sample (batch dim 0), averaged over the samples; ``κ_0 = 0``."""
    bends = [0.0]
    for prev, cur in zip(outputs, outputs[1:], strict=False):
        a, b = prev.double().flatten(1), cur.double().flatten(1)
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
        bends.append(float((1.0 - cos).mean()))
    return bends


# --------------------------------------------------------------------------------------------
# threshold -> NFE map


def parse_threshold_map(spec: str) -> tuple[str, list[float]]:
    """``teacache:0.05,0.1,0.2`` or ``fbcache:0.02..0.2/10`` -> (policy name, thresholds)."""
    from .methods import METHODS

    name, _, values = spec.partition(":")
    cls = METHODS.get(name.strip())
    if cls is None or not cls.dynamic and name.strip() != "magcache":
        dynamic = sorted(n for n, c in METHODS.items() if c.dynamic) + ["magcache"]
        raise PolicyError(f"--threshold-map: {name!r} is not a threshold policy; accepted: {', '.join(dynamic)}")
    try:
        if ".." in values:
            lo_hi, _, count = values.partition("/")
            lo, hi = (float(v) for v in lo_hi.split(".."))
            n = int(count or 8)
            if n < 1 or hi < lo:
                raise ValueError
            thresholds = [lo + (hi - lo) * k / max(n - 1, 1) for k in range(n)]
        else:
            thresholds = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        thresholds = []
    if not thresholds:
        raise PolicyError(f"--threshold-map {spec!r}: give NAME:T1,T2,... or NAME:LO..HI/COUNT (e.g. teacache:0.05..0.4/8)")
    return name.strip(), thresholds


def threshold_map(session, spec: str, *, steps: int, samples: int, extra: str = "", progress=None) -> list[dict]:
    """For each threshold: full steps and NFE over ``samples`` seeds (batch 1 each), min/median/max.

    Dynamic policies decide per trajectory from the content, so the spread over seeds is what a
    user choosing a threshold for a compute budget needs to see, not one number."""
    from .policy import parse_policy
    from .sampling import sample

    say = progress or (lambda msg: None)
    name, thresholds = parse_threshold_map(spec)
    main = parse_policy(name + (":" + extra if extra else "")).main
    # --threshold-map and --params are one spec per threshold, parsed here (the command's edge)
    methods = [parse_policy(f"{name}:{main}={t:g}" + ("," + extra if extra else "")) for t in thresholds]
    program = session.program(methods[0])  # the thresholds are run-time parameters: one program serves all
    rows = []
    for method in methods:
        pol = method.spec
        rt = session.runtime(method, steps=steps, program=program)
        nfes, fulls = [], []
        for seed in range(samples):
            rt.reset(steps)
            sample(rt, session.bundle, steps, seed, 1)
            nfes.append(rt.stats.nfe)
            fulls.append(len(rt.stats.full_steps))
        say(f"threshold map: {pol}: full steps {fulls}")
        rows.append({"policy": pol, "full_min": min(fulls), "full_median": statistics.median(fulls),
                     "full_max": max(fulls), "nfe_min": min(nfes), "nfe_median": statistics.median(nfes),
                     "nfe_max": max(nfes)})
    return rows
