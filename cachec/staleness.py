"""Staleness: a compiled program must never run weights or a module tree its model no longer has.

A program is captured once, from the denoiser as it was then. Afterwards a user may edit the
denoiser: load LoRA adapters (PEFT replaces ``Linear`` modules by LoRA layers), switch or weight
them (``set_adapters`` changes each layer's ``scaling``), fuse/unfuse them (weights edited in
place and the layer's ``merged_adapters`` changed), unload them, replace a parameter, or pass a
LoRA scale through ``joint_attention_kwargs`` (a Python float that capture bakes into the graph).

A :class:`Watch` belongs to one runtime and compares a cheap *fingerprint* of its source (the
module tree with every PEFT layer's adapter state, and each parameter's identity, storage
address and version counter) with the fingerprint taken when its program was built. The runtime
asks it once per trajectory (host-side Python only: no device sync, no per-step cost) and on each
call compares the call's non-tensor arguments with the compiled ones (a dict compare). When
something changed, the watch rebuilds the program from the live model (logged once per rebuild)
and the runtime lowers it again, starting every branch over. What a backend reads live is not a
reason to rebuild: eager and Inductor variants read the model's own parameter objects, so an
in-place edit (``fuse_lora`` without ``safe_fusing``) is already in their next call; backends that
copied the weights into lowered files (ONNX Runtime, TensorRT, AOTInductor) rebuild for it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger("cachec")

# a PEFT tuner layer's attributes that change what its forward computes (peft.tuners.lora.layer)
ADAPTER_STATE = ("_active_adapter", "merged_adapters", "_disable_adapters", "scaling", "use_dora")


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype))
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def _address(t: torch.Tensor) -> int:
    """A tensor's storage address, or its identity for a tensor subclass without one (torchao's
    quantized weights wrap their data: asking them for a pointer raises)."""
    try:
        return t.data_ptr()
    except RuntimeError:
        return id(t)


@dataclass(frozen=True)
class Fingerprint:
    """What a program depends on, split by what a live backend sees by itself: ``structure`` (module
    classes, adapter state, tensor identities and shapes, storage addresses) always needs a
    rebuild; ``versions`` (in-place edits) only for a backend that copied the weights."""

    structure: tuple
    versions: tuple

    def change(self, now: Fingerprint, live_weights: bool) -> str | None:
        """Why ``now`` needs another program than this one, or None."""
        if now.structure != self.structure:
            return "its modules, LoRA adapters or parameters changed"
        if not live_weights and now.versions != self.versions:
            return "its weights were edited in place (this backend holds a copy of them)"
        return None


def tensors_fingerprint(named: list[tuple[str, torch.Tensor]], modules: tuple = ()) -> Fingerprint:
    structure = modules + tuple((n, id(t), tuple(t.shape), t.dtype, t.device, _address(t)) for n, t in named)
    return Fingerprint(structure, tuple(t._version for _, t in named))


def model_fingerprint(model: torch.nn.Module) -> Fingerprint:
    """The module tree (each module's class and PEFT adapter state) and every parameter and buffer."""
    modules = tuple(
        # PEFT keeps this state as plain attributes: read from __dict__ (no failed lookup per module)
        (name, type(m).__qualname__, tuple(_frozen(vars(m)[a]) for a in ADAPTER_STATE if a in vars(m)))
        for name, m in model.named_modules()
    )
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return tensors_fingerprint(named, modules)


def call_constants(kwargs: dict) -> tuple:
    """A call's non-tensor arguments, nested dicts included (``joint_attention_kwargs={"scale": 0.5}``):
    capture bakes them into the graph, so a call that changes one needs another program."""
    out = []
    for k, v in kwargs.items():
        if k == "return_dict" or isinstance(v, torch.Tensor) or v is None:
            continue
        if isinstance(v, dict):
            out += [(f"{k}__{k2}", _frozen(v2)) for k2, v2 in v.items() if not isinstance(v2, torch.Tensor)]
        else:
            out.append((k, _frozen(v)))
    return tuple(sorted(out))


class Watch:
    """Keeps one runtime's program current with its source.

    ``snapshot()`` fingerprints the source as it is now; ``build(example)`` captures and plans a new
    program from it for the call ``example`` (model keyword arguments: its non-tensor values are
    baked into the program, its tensors give the shapes).
    """

    def __init__(self, snapshot: Callable[[], Fingerprint], build: Callable[[dict], object], example: dict,
                 what: str = "the denoiser"):
        self.snapshot = snapshot
        self.build = build
        self.example = dict(example)
        self.constants = call_constants(example)
        self.what = what
        self.fingerprint = snapshot()
        self.rebuilds = 0

    def check_call(self, runtime, kwargs: dict) -> None:
        """Every call: rebuild for a call whose non-tensor arguments differ from the compiled ones."""
        constants = call_constants(kwargs)
        if constants != self.constants:
            self.example = {k: v for k, v in kwargs.items() if k != "return_dict"}
            self._rebuild(runtime, f"a call changed its non-tensor arguments to {dict(constants)}")

    def check_trajectory(self, runtime) -> None:
        """Once per trajectory: rebuild when the source changed since the program was built."""
        reason = self.fingerprint.change(self.snapshot(), live_weights=runtime.backend.movable)
        if reason is not None:
            self._rebuild(runtime, reason)

    def _rebuild(self, runtime, reason: str) -> None:
        log.warning("cachec: %s changed since it was compiled (%s); compiling it again", self.what, reason)
        program = self.build(self.example)
        self.constants = call_constants(self.example)
        self.fingerprint = self.snapshot()
        self.rebuilds += 1
        runtime.replace_program(program)


def model_watch(model: torch.nn.Module, example: dict, build: Callable[[dict], object]) -> Watch:
    """The watch of a runtime compiled from ``model`` (``cachec.compile``, ``cachec.enable``)."""
    return Watch(lambda: model_fingerprint(model), build, example, what=type(model).__name__)
