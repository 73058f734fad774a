"""The runtime: runs a compiled program step by step, owning cache buffers and the policy state.

It has no knowledge of any one model. Per call (one denoising step) it

1. binds the call's arguments to the program's inputs and checks shapes and dtypes;
2. detects a new trajectory (explicit :meth:`CacheRuntime.reset`, the configured number of
   steps reached, a timestep that does not continue the previous one, or a batch/shape change —
   the last is logged, since silently mixing caches of two shapes would be wrong);
3. runs the step protocol: the policy's controller yields actions (a variant to run, its
   host-side inputs, the values to read back — a probe's signal, say) and the runtime runs each
   on the backend, one loop for every method;
4. copies cache writes into buffers allocated once per shape (fixed addresses, reused across
   steps and trajectories), and counts NFE and FLOPs from the graph.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import statistics
from dataclasses import dataclass, field

import torch

from cachec.backends import get_backend

from .batch_items import ItemRunner
from .call_checks import check_inputs, check_labels
from .capture import flatten_inputs
from .compatibility import compatible, compiled_method
from .devices import resolve_device
from .errors import PolicyError, ShapeError
from .methods.base import Action, Method, StepContext
from .output_forms import restore
from .policy import parse_policy
from .program import Program, per_item
from .quantized import program_quantization
from .single_caller import SingleCaller
from .step_inputs import say_unread_on_reuse

log = logging.getLogger("cachec")


@dataclass
class TrajectoryStats:
    """What one trajectory cost: its schedule (F/R per step), NFE and FLOPs."""

    schedule: str = ""
    flops: float = 0.0  # whole batch
    full_flops: float = 0.0  # one full step for the whole batch, uncached program
    step_flops: list[float] = field(default_factory=list)
    signals: list[float | None] = field(default_factory=list)
    # each batch item's letters (per-sample decisions may differ; `M` in `schedule` marks such a step)
    item_schedules: list[str] = field(default_factory=list)

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


@dataclass
class BranchState:
    """The cache state of one sequence of denoising calls (one CFG branch of one trajectory).

    Kept apart from the lowered program so that several branches (``cond``/``uncond`` with
    sequential classifier-free guidance) share the segments and weights but never a cache.
    """

    caches: dict[str, torch.Tensor] = field(default_factory=dict)
    controller: object | None = None
    step: int = 0
    num_steps: int | None = None
    last_t: float | None = None
    direction: float | None = None  # +1 / -1: the sign of the timestep's change, learned from the first two steps
    # the trajectory's timesteps on the host, by step, when its caller gave them (``reset(timesteps=...)``):
    # a timestep-window policy (PAB, FasterCache) then looks its step up instead of reading the device
    timesteps: tuple[float, ...] | None = None
    shape_key: tuple | None = None
    history: list[TrajectoryStats] = field(default_factory=list)


DEFAULT_BRANCH = "default"
STEP_INPUT_TABLE_SIZE = 256  # distinct step-input values kept on the device (a few per trajectory in practice)


class CacheRuntime(torch.nn.Module):
    """A denoiser with caching: call it like the original model, once per denoising step.

    Diffusers pipelines can use it as ``pipe.transformer`` / ``pipe.unet``: it has the model's
    ``config``, ``dtype`` and ``device``, honours ``return_dict``, and implements
    ``cache_context(name, ...)``, with which pipelines that call the denoiser twice per step
    (sequential CFG: FLUX true CFG, Wan) name the branch. Each branch keeps its own caches and
    policy state. Loops that do not name branches get the same separation automatically: a second
    call at the same timestep is the next branch of that step.

    Not shared between threads: a call from a second thread while another is inside a step or in
    the middle of a trajectory raises :class:`~cachec.errors.ConcurrentUseError` (never a silently
    mixed result; see :mod:`cachec.single_caller`). Give each thread its own runtime.
    """

    def __init__(
        self,
        program: Program,
        policy: str | Method | None = None,
        *,
        backend: str = "eager",
        num_steps: int | None = None,
        signature: list[str] | None = None,
        full_step_flops: float | None = None,
        backend_options: dict | None = None,
        config: dict | None = None,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        self.program = program
        compiled = compiled_method(program)
        requested = parse_policy(policy) if policy else compiled  # a caller's spec: the public API's edge
        # the rule of cachec.compatibility; data read once here, not per trajectory
        self.policy = compatible(requested, compiled, len(program.planned.blocks),
                                 program.planned.policy_data).resolved()
        self.backend = get_backend(backend)
        self.backend.check_policy(self.policy)
        self.backend.check_weights(program_quantization(program))  # torchao weights: refused before lowering
        self.backend_options = dict(backend_options or {})
        self._device: torch.device | None = None  # where lowered files run (backends without weights to move)
        if device is not None:
            self._move_segments(resolve_device(device))
        problem = self.policy.per_sample_problem(program.planned.signal, program.values)
        if problem:
            raise PolicyError(f"the program {problem}")
        self.variants = self.backend.lower(program, **self.backend_options)  # variant name -> run(env, caches)
        self.items = ItemRunner(program)  # per-sample decisions: variants run on some items of a batch
        say_unread_on_reuse(program)  # ControlNet residuals a reused step does not read: said, not silent
        self.num_steps = num_steps
        self.signature = signature or list(program.inputs)
        self.full_step_flops = full_step_flops or program.planned.none_flops or program.variant_flops("full")
        self.config = _frozen_config(config if config is not None else program.model.config)
        self.branches: dict[str, BranchState] = {}
        self._context: str | None = None  # set by cache_context()
        self._context_step: int | None = None
        self._last_call: tuple | None = None  # (timestep or None, shapes, auto-branch index) of the last call
        self._calls_per_step: int | None = None  # learned from the timesteps while the length is unknown
        self._current = DEFAULT_BRANCH
        self._step_tensors: dict[tuple, torch.Tensor] = {}  # host-computed step inputs on the device, by value
        self._caller = SingleCaller()  # concurrent use from two threads is refused (cachec.single_caller)
        self.watch = None  # a staleness.Watch when the runtime knows the model it was compiled from
        self._watch_due = True  # the watch looks at the model once per trajectory

    # -- what pipelines read -------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.program.values[self.program.inputs[0]].dtype)

    @property
    def device(self) -> torch.device:
        """Where the weights live (eager/Inductor segments); for a backend that runs lowered files,
        the device it was loaded on or moved to, else where the caches were allocated."""
        for seg in self.program.segments.values():
            for p in seg.module.parameters() if seg.module is not None else ():
                return p.device
        if self._device is not None:
            return self._device
        buffers = [t for b in self.branches.values() for t in b.caches.values()]
        return buffers[0].device if buffers else torch.device("cpu")

    def to(self, *args, **kwargs):
        """Move the compiled program to another device (``pipe.to("cuda")`` calls this).

        Weights move in place and the variants are lowered again. A backend that runs lowered files
        (ONNX Runtime, TensorRT, AOTInductor) has no weights to move: its files run wherever the
        step's inputs are, within what the backend can run on (``Backend.move_problem`` says why
        not, e.g. an AOTInductor package compiled for the CPU). Either way cache buffers are dropped
        and allocated anew on the next call (a trajectory never continues across devices). A dtype
        cannot change: the graphs were captured for one.
        """
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype != self.dtype:
            raise ShapeError(f"this program was compiled for {self.dtype}; it cannot run in {dtype} "
                             "(compile it again with that dtype)")
        if device is None or torch.device(device) == self.device:
            return self
        target = resolve_device(device)
        self._move_segments(target)
        if self.backend.movable:
            self.variants = self.backend.lower(self.program, **self.backend_options)
        for branch in self.branches.values():
            branch.caches.clear()
            branch.shape_key = None
            branch.controller = None  # the next call starts a new trajectory
        return self

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """New weights of the same names, shapes and dtypes, without compiling again (another LoRA
        fused into them, say): :func:`cachec.weights.load_weights`."""
        from .weights import load_weights

        load_weights(self, state_dict)

    def replace_program(self, program: Program) -> None:
        """Run ``program`` from now on (a :class:`~cachec.staleness.Watch` rebuilt it from the changed
        model): lowered again, and every branch starts a new trajectory with new caches."""
        self.program = program
        self.variants = self.backend.lower(program, **self.backend_options)
        self.items = ItemRunner(program)
        self.full_step_flops = program.planned.none_flops or program.variant_flops("full")
        self._step_tensors.clear()
        for branch in self.branches.values():
            branch.caches.clear()
            branch.shape_key = None
            if branch.step > 0 or branch.controller is None:
                self._reset_branch(branch)

    def _move_segments(self, device: torch.device) -> None:
        if not self.backend.movable:
            # its lowered files have no weights to move, only a device they cannot run on to refuse
            problem = self.backend.move_problem(self.program, device, **self.backend_options)
            if problem:
                raise ShapeError(problem)
            self._device = device
            return
        for seg in self.program.segments.values():
            seg.to(device)

    @contextlib.contextmanager
    def cache_context(self, name: str, step_index: int | None = None, num_inference_steps: int | None = None,
                      **_ignored):
        """Name the branch of the calls inside (diffusers' ``CacheMixin.cache_context`` protocol).

        ``step_index == 0`` starts a new trajectory for the branch and ``num_inference_steps``
        sets its length, so pipelines that pass them need no timestep heuristics.
        """
        self._context, self._context_step = name, step_index
        if num_inference_steps is not None:
            self._branch(name).num_steps = num_inference_steps
        try:
            yield
        finally:
            self._context, self._context_step = None, None

    # -- trajectory -----------------------------------------------------------------------------
    def reset(self, num_steps: int | None = None, timesteps=None) -> None:
        """Start a new trajectory on every branch (caches are logically empty; buffers keep their memory).

        ``timesteps``: the model's timestep input of each coming step (host numbers, as the model
        receives them). A policy gated on a timestep window then decides from them by step index,
        without a device→host read per step; they hold for this trajectory only.

        Refused (:class:`~cachec.errors.ConcurrentUseError`) from a thread other than the one in the
        middle of a trajectory; afterwards any thread may run the next one."""
        known = _host_timesteps(timesteps, num_steps or self.num_steps)  # refused before anything changes
        self._caller.claim_reset(self._mid_trajectory)
        if num_steps is not None:
            self.num_steps = num_steps
        self._watch_due = True
        for name in list(self.branches) or [DEFAULT_BRANCH]:
            self._reset_branch(self._branch(name), num_steps)
            self.branches[name].timesteps = known
        self._last_call = None
        self._calls_per_step = None

    def _mid_trajectory(self) -> bool:
        """Whether some branch has run part of a trajectory (all of a known length is over)."""
        return any(0 < b.step < (b.num_steps or self.num_steps or float("inf")) for b in self.branches.values())

    def _branch(self, name: str) -> BranchState:
        if name not in self.branches:
            self.branches[name] = BranchState()
        return self.branches[name]

    def _reset_branch(self, branch: BranchState, num_steps: int | None = None) -> None:
        if num_steps is not None:
            branch.num_steps = num_steps
        branch.controller = self.policy.controller(branch.num_steps or self.num_steps)
        branch.step = 0
        branch.last_t = None
        branch.direction = None
        branch.timesteps = None
        branch.history.append(TrajectoryStats())

    @property
    def stats(self) -> TrajectoryStats:
        """The current (or last) trajectory's statistics, of the branch that ran last."""
        return self.branch_stats(self._current)

    def branch_stats(self, name: str = DEFAULT_BRANCH) -> TrajectoryStats:
        branch = self.branches.get(name)
        return branch.history[-1] if branch is not None and branch.history else TrajectoryStats()

    @property
    def history(self) -> list[TrajectoryStats]:
        """Every trajectory of the branch that ran last, oldest first."""
        branch = self.branches.get(self._current)
        return branch.history if branch is not None else []

    @property
    def caches(self) -> dict[str, torch.Tensor]:
        """The cache buffers of the branch that ran last."""
        branch = self.branches.get(self._current)
        return branch.caches if branch is not None else {}

    def bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        """The model's call arguments as the program's input tensors, checked against the compiled
        shapes and dtypes, one batch within max_batch, and class labels in range where that needs
        no device→host sync (:mod:`cachec.call_checks`; public: calibration drives variants with it)."""
        if args:
            kwargs = dict(kwargs)
            for name, value in zip(self.signature, args, strict=False):
                kwargs.setdefault(name, value)
        flat = flatten_inputs(kwargs)
        missing = [n for n in self.program.inputs if n not in flat]
        if missing:
            raise ShapeError(f"missing inputs {missing}; this program takes {self.program.inputs}")
        unknown = [n for n, v in flat.items() if n not in self.program.inputs and isinstance(v, torch.Tensor)]
        if unknown:
            # silently dropping a tensor (an attention mask, say) could change the result
            raise ShapeError(f"inputs {unknown} are not inputs of this program, which takes {self.program.inputs}; "
                             "compile with example inputs that include them")
        inputs = {n: flat[n] for n in self.program.inputs}
        for name, t in inputs.items():
            spec = self.program.values.get(name)
            if spec is None:
                continue
            want_dtype = getattr(torch, spec.dtype)
            if t.dtype != want_dtype:
                if name == "timestep" and _exact_cast(t, want_dtype):
                    inputs[name] = t = t.to(want_dtype)  # pipelines hand out int or float timesteps
                else:
                    raise ShapeError(f"input {name} has dtype {t.dtype}; the program was compiled for {want_dtype}")
            if len(spec.shape) != t.dim() or any(d != "B" and d != s for d, s in zip(spec.shape, t.shape, strict=True)):
                raise ShapeError(
                    f"input {name} has shape {tuple(t.shape)}; the program accepts {tuple(spec.shape)} (B = any batch)"
                )
        check_inputs(self.program, inputs)
        check_labels(inputs, self.config)  # labels on the CPU; on a GPU once per trajectory, in forward
        return inputs

    def _timestep(self, inputs) -> float | None:
        """The call's timestep on the host: one device→host sync on a GPU, so read only when needed."""
        t = inputs.get("timestep")
        if t is None:
            return None
        return float(t.reshape(-1)[0]) if t.numel() else None

    def _step_timestep(self, branch: BranchState, step: int, inputs) -> float | None:
        """The step's timestep for a controller: from the trajectory's given timesteps when it has
        them (no device read), else read from the call's input."""
        if branch.timesteps is not None and step < len(branch.timesteps):
            return branch.timesteps[step]
        return self._timestep(inputs)

    def _branch_of_call(self, inputs, key: tuple) -> tuple[str, float | None]:
        """The branch this call belongs to, and the call's timestep if it had to be read.

        A pipeline's named context decides without reading anything. Otherwise the branch is the
        call's index among consecutive calls with the same timestep and input shapes (the first
        call of a step is the default branch; sequential CFG's second call is ``call1``). Telling
        that apart needs the timestep's value, a device→host sync on a GPU, so when the trajectory
        length is known the runtime reads it only until it has seen how many calls a step makes
        (the first step of a trajectory and the first call of the next), and then counts calls.
        """
        if self._context is not None:
            self._last_call = None
            return self._context, None
        known_length = self.num_steps is not None or self._branch(DEFAULT_BRANCH).num_steps is not None
        pattern = self._calls_per_step
        if known_length and pattern is not None and self._last_call is not None and key == self._last_call[1]:
            index = (self._last_call[2] + 1) % pattern
            t = None
        else:
            t = self._timestep(inputs)
            same_step = self._last_call is not None and t is not None and (t, key) == self._last_call[:2]
            index = self._last_call[2] + 1 if same_step else 0
            if index == 0 and self._last_call is not None and self._last_call[1] == key:
                self._calls_per_step = self._last_call[2] + 1  # the previous step's calls, now complete
        self._last_call = (t, key, index)
        return (DEFAULT_BRANCH if index == 0 else f"call{index}"), t

    def _maybe_new_trajectory(self, branch: BranchState, key: tuple, inputs, t: float | None) -> None:
        num_steps = branch.num_steps or self.num_steps
        if t is None and num_steps is None and not (self._context is not None and self._context_step is not None):
            t = self._timestep(inputs)  # no other way to see where a trajectory ends
        reason = None
        if branch.controller is None:
            reason = "first call"
        elif self._context is not None and self._context_step == 0 and branch.step > 0:
            reason = "the pipeline's step_index is 0"
        elif branch.shape_key is not None and key != branch.shape_key:
            reason = "input shapes changed"
            log.warning("cachec: input shapes changed inside a trajectory; caches reset (never mixed)")
        elif num_steps is not None and branch.step >= num_steps:
            reason = "configured number of steps reached"
        elif t is not None and branch.last_t is not None and not _continues(t, branch.last_t, branch.direction):
            reason = "timestep does not continue the trajectory"
        if reason is not None:
            log.debug("cachec: new trajectory (%s)", reason)
            self._reset_branch(branch)
            if self._context is None and branch is self.branches.get(DEFAULT_BRANCH):
                # a new trajectory may call differently: learn it again, from this call's timestep
                # (a call counted without reading it would not match the next call's)
                self._calls_per_step = None
                if t is None:
                    t = self._timestep(inputs)
                self._last_call = (t, key, 0)
        if self.watch is not None and (reason is not None or self._watch_due):
            self._watch_due = False
            self.watch.check_trajectory(self)  # may replace the program: every branch starts over
        if key != branch.shape_key:
            branch.caches.clear()
            branch.caches.update(self.new_caches(inputs))
        branch.shape_key = key
        if t is not None and branch.last_t is not None and branch.direction is None and t != branch.last_t:
            branch.direction = 1.0 if t > branch.last_t else -1.0  # flow-matching pipelines may count up
        branch.last_t = t

    def _batch(self, inputs) -> int:
        return self.program.batch_of(inputs)

    def new_caches(self, inputs) -> dict[str, torch.Tensor]:
        """One zero-filled buffer per cache for the batch of ``inputs``; their addresses stay fixed
        for the trajectory (CUDA graphs and IOBinding rely on it)."""
        latent = next(iter(inputs.values()))
        batch = self._batch(inputs)
        return {name: torch.zeros(spec.concrete(batch), dtype=getattr(torch, spec.dtype), device=latent.device)
                for name, spec in self.program.caches().items()}

    # -- one step -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        """One denoising step; a second thread's call meanwhile is refused (:mod:`cachec.single_caller`)."""
        self._caller.enter(self._mid_trajectory)
        try:
            return self._forward(*args, **kwargs)
        finally:
            self._caller.exit()

    @torch.no_grad()
    def _forward(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)  # as diffusers models: an output object, indexable by [0]
        inputs = self.bind(args, kwargs)
        if self.watch is not None:
            self.watch.check_call(self, kwargs)  # a changed LoRA scale in attention kwargs, say
        key = tuple((n, tuple(v.shape)) for n, v in inputs.items())
        self._current, t = self._branch_of_call(inputs, key)
        branch = self._branch(self._current)
        self._maybe_new_trajectory(branch, key, inputs, t)
        if branch.step == 0:
            check_labels(inputs, self.config, read_device=True)  # on a GPU: one device->host sync per trajectory
        env: dict[str, torch.Tensor] = dict(inputs)
        batch = self._batch(inputs)
        step, stats = branch.step, branch.history[-1]
        flops, letter, signal = self._step(branch, step, env, batch)
        stats.schedule += letter
        stats.step_flops.append(flops * batch)
        stats.signals.append(signal)
        stats.flops += flops * batch
        stats.full_flops = self.full_step_flops * batch
        branch.step += 1
        out = restore(env[self.program.output], self.program.model.output_form)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)
        return (out,)

    def _step(self, branch: BranchState, step: int, env: dict, batch: int) -> tuple[float, str, float | None]:
        """The step protocol: run the controller's actions until it has no more; returns the step's
        per-sample FLOPs, its schedule letter and the probe signal it read (if any).

        An action on some items only (per-sample decisions) runs on those items
        (:class:`~cachec.batch_items.ItemRunner`) and counts its FLOPs for them; the step's letter is
        then ``M`` when the items took different letters, and each item's letter is recorded in the
        trajectory's ``item_schedules``."""
        device = env[self.program.inputs[0]].device
        ctx = StepContext(self.program.planned, self.program.model, branch.caches, batch, device, timestep=lambda: self._step_timestep(branch, step, env))
        actions = branch.controller.actions(step, ctx)
        signal_name = self.program.planned.signal
        flops, signal = 0.0, None
        letters = [""] * batch
        action = next(actions)
        while True:
            self._set_inputs(action, env, device)
            run = self.variants[action.variant]
            if action.items is None:
                flops += run(env, branch.caches) + action.flops_delta
                read_from = env
            else:
                variant_flops, read_from = self.items.run(run, action.variant, env, branch.caches, action.items, batch)
                flops += (variant_flops + action.flops_delta) * len(action.items) / batch
            if action.letter:  # a whole-batch letter marks the items no earlier action of the step marked
                for i in action.items if action.items is not None else (i for i in range(batch) if not letters[i]):
                    letters[i] = action.letter
            values = {n: _host_value(read_from[n]) for n in action.read}  # each one device->host sync
            if signal_name in values:
                signal = values[signal_name]
            elif per_item(signal_name or "") in values:
                signal = statistics.fmean(values[per_item(signal_name)])
            try:
                action = actions.send(values)
            except StopIteration:
                break
        stats = branch.history[-1]
        if len(stats.item_schedules) != batch:
            stats.item_schedules = [stats.schedule] * batch  # the steps before were one decision for the batch
        for i, letter in enumerate(letters):
            stats.item_schedules[i] += letter
        letter = letters[0] if len(set(letters)) == 1 else "M"
        return flops, letter, signal

    def _set_inputs(self, action: Action, env: dict, device) -> None:
        """An action's host-side inputs as the values its variant reads.

        The program's declared step inputs (forecast coefficients) are made tensors of their
        compiled dtype; a program compiled for a forecast policy but run as ``none`` still reads
        the update coefficients on its full variant, and zeros serve (no forecast reads that
        state). Other inputs (token positions) are tensors already.
        """
        for name in self.program.planned.step_inputs:
            spec = self.program.values.get(name)
            if spec is None:
                continue
            env[name] = self._step_input(name, action.inputs.get(name), spec, device)
        for name, value in action.inputs.items():
            if isinstance(value, torch.Tensor):
                env[name] = value

    def _step_input(self, name: str, value, spec, device) -> torch.Tensor:
        """The device tensor of a host-computed step input, made once per distinct value.

        Why: ``torch.tensor(value, device="cuda")`` copies from pageable host memory, and torch
        waits for that copy (a stream synchronisation) before going on: a forecast policy would
        stall the host once per step. The values repeat (a forecast's coefficients depend only on
        where a step sits in the schedule: its distance to the last full step and the full steps
        before it), so after the first trajectory every step finds its tensors here. Variants only
        read their inputs, so one tensor serves every step that needs its value.
        """
        key = (name, device, _frozen_value(value))
        tensor = self._step_tensors.get(key)
        if tensor is None:
            if len(self._step_tensors) >= STEP_INPUT_TABLE_SIZE:
                self._step_tensors.clear()  # values that never repeat: keep the table bounded
            dtype = getattr(torch, spec.dtype)
            tensor = (torch.zeros(spec.concrete(1), dtype=dtype, device=device) if value is None
                      else torch.tensor(value, dtype=dtype, device=device))
            self._step_tensors[key] = tensor
        return tensor


def _frozen_value(value):
    """A hashable copy of a step input's value (nested lists of numbers)."""
    return tuple(_frozen_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def _host_value(t: torch.Tensor) -> float | list[float]:
    """A value read back for a controller: a float, or a list of floats for a per-item vector (one
    device→host copy either way)."""
    return float(t) if t.dim() == 0 else t.tolist()


def _host_timesteps(timesteps, num_steps: int | None) -> tuple[float, ...] | None:
    """``reset``'s timesteps as host floats, one per step of the trajectory (refused otherwise)."""
    if timesteps is None:
        return None
    try:
        values = tuple(float(t) for t in timesteps)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"reset(timesteps=...) takes one number per step (a list or a 1-D tensor); {exc}") from None
    if num_steps is not None and len(values) != num_steps:
        raise ShapeError(f"reset(timesteps=...) has {len(values)} values for a trajectory of {num_steps} steps; "
                         "give one per step")
    return values


def _continues(t: float, last_t: float, direction: float | None) -> bool:
    """Whether timestep ``t`` continues a trajectory whose previous step was ``last_t``.

    A trajectory moves monotonically; its direction is learned from its first two steps (most
    schedulers count down, several flow-matching pipelines pass ``1 - t/1000`` and count up). A
    repeated timestep or a step against the direction starts a new trajectory.
    """
    if t == last_t:
        return False
    return direction is None or (t - last_t) * direction > 0


def _exact_cast(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether casting ``t`` to ``dtype`` keeps every value (integer timesteps as floats and back)."""
    return bool(torch.equal(t.to(dtype).to(t.dtype), t))


def _frozen_config(config: dict):
    """The model's config as diffusers exposes it (``config.sample_size`` and ``config["sample_size"]``)."""
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(config)


def signature_of(model: torch.nn.Module) -> list[str]:
    return [p for p in inspect.signature(model.forward).parameters if p not in ("self", "args", "kwargs")]
