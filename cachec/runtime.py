"""The runtime: runs a compiled program step by step, owning cache buffers and the policy state.

It has no knowledge of any one model. Per call (one denoising step) it

1. binds the call's arguments to the program's inputs and checks shapes and dtypes;
2. detects a new trajectory (explicit :meth:`CacheRuntime.reset`, the configured number of
   steps reached, a timestep that does not continue the previous one, or a batch/shape change —
   the last is logged, since silently mixing caches of two shapes would be wrong);
3. asks the policy's controller for the step's action, running the probe head first for
   dynamic policies, and runs the chosen path on the backend;
4. copies cache writes into buffers allocated once per shape (fixed addresses, reused across
   steps and trajectories), and counts NFE and FLOPs from the graph.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import torch

from cachec.backends import get_backend
from cachec.backends.eager import batch_of

from .capture import flatten_inputs
from .errors import PolicyError, ShapeError
from .policy import Policy, parse_policy
from .program import Program

log = logging.getLogger("cachec")


@dataclass
class TrajectoryStats:
    """What one trajectory cost: its schedule (F/R per step), NFE and FLOPs."""

    schedule: str = ""
    flops: float = 0.0  # whole batch
    full_flops: float = 0.0  # one full step for the whole batch, uncached program
    step_flops: list[float] = field(default_factory=list)
    signals: list[float | None] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.schedule)

    @property
    def full_steps(self) -> list[int]:
        return [i for i, c in enumerate(self.schedule) if c == "F"]

    @property
    def nfe(self) -> float:
        return self.flops / self.full_flops if self.full_flops else 0.0

    def to_json(self) -> dict:
        return {
            "steps": self.steps,
            "schedule": self.schedule,
            "full_steps": self.full_steps,
            "nfe": round(self.nfe, 4),
            "flops": self.flops,
            "full_step_flops": self.full_flops,
        }


class CacheRuntime(torch.nn.Module):
    """A denoiser with caching: call it like the original model, once per denoising step."""

    def __init__(
        self,
        program: Program,
        policy: str | Policy | None = None,
        *,
        backend: str = "eager",
        num_steps: int | None = None,
        signature: list[str] | None = None,
        full_step_flops: float | None = None,
        backend_options: dict | None = None,
    ):
        super().__init__()
        self.program = program
        self.policy = parse_policy(policy or program.meta["policy"])
        compiled = parse_policy(program.meta["policy"])
        # the variants depend on the policy's kind only: thresholds and intervals may change at
        # run time, and `none` runs the full variant of any program (the same-backend baseline)
        blocks = len(program.meta["blocks"])
        if self.policy.name != "none" and self.policy.plan_key(blocks) != compiled.plan_key(blocks):
            raise PolicyError(
                f"this program was compiled for policy {compiled.spec!r}; {self.policy.spec!r} needs other "
                "variants: compile for it, change only run-time parameters (intervals, thresholds, "
                "warmup/final), or use 'none'"
            )
        self.backend = get_backend(backend)
        self.paths = self.backend.lower(program, **(backend_options or {}))
        self.num_steps = num_steps
        self.signature = signature or list(program.inputs)
        self.full_step_flops = full_step_flops or program.meta.get("none_flops") or program.path_flops("full")
        self.caches: dict[str, torch.Tensor] = {}
        self.history: list[TrajectoryStats] = []
        self._controller = None
        self._step = 0
        self._last_t: float | None = None
        self._shape_key: tuple | None = None

    # -- trajectory -----------------------------------------------------------------------------
    def reset(self, num_steps: int | None = None) -> None:
        """Start a new trajectory (caches are logically empty; buffers keep their memory)."""
        if num_steps is not None:
            self.num_steps = num_steps
        self._controller = self.policy.controller(self.num_steps)
        self._step = 0
        self._last_t = None
        self.history.append(TrajectoryStats())

    @property
    def stats(self) -> TrajectoryStats:
        """The current (or last) trajectory's statistics."""
        return self.history[-1] if self.history else TrajectoryStats()

    def _bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        if args:
            kwargs = dict(kwargs)
            for name, value in zip(self.signature, args, strict=False):
                kwargs.setdefault(name, value)
        flat = flatten_inputs(kwargs)
        missing = [n for n in self.program.inputs if n not in flat]
        if missing:
            raise ShapeError(f"missing inputs {missing}; this program takes {self.program.inputs}")
        inputs = {n: flat[n] for n in self.program.inputs}
        for name, t in inputs.items():
            spec = self.program.values.get(name)
            if spec is None:
                continue
            want_dtype = getattr(torch, spec.dtype)
            if t.dtype != want_dtype:
                raise ShapeError(f"input {name} has dtype {t.dtype}; the program was compiled for {want_dtype}")
            if len(spec.shape) != t.dim() or any(d != "B" and d != s for d, s in zip(spec.shape, t.shape, strict=True)):
                raise ShapeError(
                    f"input {name} has shape {tuple(t.shape)}; the program accepts {tuple(spec.shape)} (B = any batch)"
                )
        return inputs

    def _timestep(self, inputs) -> float | None:
        t = inputs.get("timestep")
        if t is None:
            return None
        return float(t.reshape(-1)[0]) if t.numel() else None

    def _maybe_new_trajectory(self, inputs) -> None:
        key = tuple((n, tuple(t.shape)) for n, t in inputs.items())
        t = self._timestep(inputs)
        reason = None
        if self._controller is None:
            reason = "first call"
        elif self._shape_key is not None and key != self._shape_key:
            reason = "input shapes changed"
            log.warning("cachec: input shapes changed inside a trajectory; caches reset (never mixed)")
        elif self.num_steps is not None and self._step >= self.num_steps:
            reason = "configured number of steps reached"
        elif t is not None and self._last_t is not None and t >= self._last_t:
            reason = "timestep does not continue the trajectory"
        if reason is not None:
            log.debug("cachec: new trajectory (%s)", reason)
            self.reset()
        if key != self._shape_key:
            self._allocate_caches(inputs)
        self._shape_key = key
        self._last_t = t

    def _batch(self, inputs) -> int:
        return batch_of(self.program, inputs)

    def _allocate_caches(self, inputs) -> None:
        """One zero-filled buffer per cache for this batch size; their addresses stay fixed."""
        latent = next(iter(inputs.values()))
        batch = self._batch(inputs)
        self.caches.clear()
        for name, spec in self.program.caches().items():
            self.caches[name] = torch.zeros(spec.concrete(batch), dtype=getattr(torch, spec.dtype), device=latent.device)

    # -- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", False)
        inputs = self._bind(args, kwargs)
        self._maybe_new_trajectory(inputs)
        env: dict[str, torch.Tensor] = dict(inputs)
        batch = self._batch(inputs)
        step, ctl, stats = self._step, self._controller, self.stats
        flops = 0.0
        signal = None
        if self.policy.dynamic:
            flops += self._run("head", env)
            signal = float(env[self.program.meta["signal"]])
            full = ctl.decide(step, signal)
            flops += self._run("tail_full" if full else "tail_reuse", env)
        else:
            full = ctl.decide(step)
            flops += self._run("full" if full else "reuse", env)
        stats.schedule += "F" if full else "R"
        stats.step_flops.append(flops * batch)
        stats.signals.append(signal)
        stats.flops += flops * batch
        stats.full_flops = self.full_step_flops * batch
        self._step += 1
        out = env[self.program.output]
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def _run(self, path: str, env: dict) -> float:
        return self.paths[path](env, self.caches)


def signature_of(model: torch.nn.Module) -> list[str]:
    return [p for p in inspect.signature(model.forward).parameters if p not in ("self", "args", "kwargs")]
