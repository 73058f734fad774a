"""``torch.compile(model, backend="cachec", options={"policy": "fora:3"})``.

Dynamo hands this backend the denoiser's whole forward as one graph (torch IR, parameters as
placeholders, ``nn_module_stack`` on every node). We lift the parameters back into a module,
export it to ATen with the node metadata preserved, and run the usual passes. The callable we
return owns a :class:`~cachec.runtime.CacheRuntime`: the step counter, the policy state and the
cache buffers live there, outside anything Dynamo traces, so a step is one graph with no breaks
and a new step never recompiles. Dynamo specialises on shapes, so this program is compiled for
the shapes of the first call; another batch size makes Dynamo call the backend again.
"""

from __future__ import annotations

import re
import weakref

import torch
import torch.fx.traceback as fx_traceback
from torch import fx

from .capture import capture_module
from .errors import BackendError
from .planner import compile_program
from .policy import parse_policy
from .runtime import CacheRuntime
from .staleness import Watch, tensors_fingerprint

_USER_INPUT = re.compile(r"^L\['([A-Za-z_][A-Za-z0-9_]*)'\]$")
_RUNTIMES: list[tuple[weakref.ref, set[int]]] = []


class _DynamoDenoiser(torch.nn.Module):
    """Runs the Dynamo graph with its module state held as buffers (so export sees weights as
    weights, not inputs) and node metadata preserved (so regions can be found)."""

    def __init__(self, gm: fx.GraphModule, slots: list[tuple[str, object]]):
        super().__init__()
        self.gm = gm
        self.slots = slots  # per placeholder: ("input", name) or ("state", buffer name)

    def call(self, inputs: dict[str, torch.Tensor]):
        args = [inputs[key] if kind == "input" else getattr(self, key) for kind, key in self.slots]
        with fx_traceback.preserve_node_meta():
            out = fx.Interpreter(self.gm).run(*args)
        return (out[0] if isinstance(out, (tuple, list)) else out,)


def _wrapper(gm: fx.GraphModule, example_inputs: list, sources: list[str]) -> tuple[torch.nn.Module, dict]:
    slots, user, state = [], {}, 0
    holder_buffers = {}
    for src, value in zip(sources, example_inputs, strict=True):
        m = _USER_INPUT.match(src)
        if m and m.group(1) != "self":
            slots.append(("input", m.group(1)))
            user[m.group(1)] = value
        else:
            name = f"state{state}"
            state += 1
            slots.append(("state", name))
            holder_buffers[name] = value
    names = list(user)
    src = f"def forward(self, {', '.join(names)}):\n    return self.call(dict({', '.join(f'{n}={n}' for n in names)}))\n"
    scope: dict = {}
    exec(src, scope)  # noqa: S102 - a generated signature from Dynamo's local names
    cls = type("DynamoDenoiser", (_DynamoDenoiser,), {"forward": scope["forward"]})
    module = cls(gm, slots)
    for name, t in holder_buffers.items():
        module.register_buffer(name, t.detach(), persistent=False)  # same storage, not a Parameter
    return module, user


def cachec_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None):
    """The Dynamo backend registered as ``cachec``."""
    options = dict(options or {})
    policy = parse_policy(options.pop("policy", "none"))
    num_steps = options.pop("num_steps", None)
    lower = options.pop("lower", "inductor")
    mode = options.pop("mode", None)
    if options:
        raise BackendError(f"unknown cachec options {sorted(options)}; accepted: policy, num_steps, lower, mode")
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if isinstance(outputs, (tuple, list)) and len(outputs) != 1:
        raise BackendError(f"cachec compiles a denoiser whose graph returns one tensor; this graph returns {len(outputs)}")
    sources = [n.meta["grapharg"].source.name for n in gm.graph.nodes if n.op == "placeholder"]
    program, user = _program(gm, example_inputs, sources, policy)
    backend_options = {"mode": mode} if lower == "inductor" else {}
    runtime = CacheRuntime(program, policy, backend=lower, num_steps=num_steps, signature=list(user),
                           backend_options=backend_options)
    params = {id(t) for kind_t in zip(sources, example_inputs, strict=True) for t in [kind_t[1]]
              if not _USER_INPUT.match(kind_t[0])}
    _RUNTIMES.append((weakref.ref(runtime), params))
    user_positions = [i for i, s in enumerate(sources) if _USER_INPUT.match(s)]
    names = list(user)
    latest = [example_inputs]  # the last call's arguments: its weights are what the program must hold
    runtime.watch = _state_watch(gm, sources, policy, latest)

    def compiled(*args):
        latest[0] = args
        out = runtime(**{n: args[i] for n, i in zip(names, user_positions, strict=True)})[0]
        return (out,) if isinstance(outputs, (tuple, list)) else out

    compiled.runtime = runtime
    return compiled


def _program(gm: fx.GraphModule, example_inputs: list, sources: list[str], policy):
    """Capture and plan the Dynamo graph with ``example_inputs`` (weights included) as its state."""
    wrapper, user = _wrapper(gm, example_inputs, sources)
    floating = [n for n, t in user.items() if t.is_floating_point() and t.dim() >= 2]
    if not floating:
        raise BackendError(f"cachec found no latent input (a floating tensor of rank >= 2) among {sorted(user)}")
    # the first floating input in the graph's (the forward's) order; capture confirms it from the output shape
    captured = capture_module(wrapper, user, stream_inputs=None, latent_input=floating[0],
                              model_class="dynamo", dynamic_batch=False, structural_latent=True)
    return compile_program(captured, policy), user


def _state_watch(gm: fx.GraphModule, sources: list[str], policy, latest: list) -> Watch:
    """Dynamo recompiles for a new module tree, adapter state or parameter object (its guards), but
    not for a parameter whose storage was replaced (``param.data = ...``): the program holds the
    old storage. The watch compares the state the last call passed (once per trajectory) and
    captures again from it."""
    state = [i for i, s in enumerate(sources) if not _USER_INPUT.match(s)]

    def snapshot():
        return tensors_fingerprint([(sources[i], latest[0][i]) for i in state])

    return Watch(snapshot, lambda _example: _program(gm, list(latest[0]), sources, policy)[0], {},
                 what="the torch.compile'd model")


def runtimes_of(model: torch.nn.Module) -> list[CacheRuntime]:
    """The cachec runtimes that ``torch.compile`` built for ``model`` (matched by its tensors)."""
    mod = getattr(model, "_orig_mod", model)
    ids = {id(t) for t in list(mod.parameters()) + list(mod.buffers())}
    found = []
    for ref, params in _RUNTIMES:
        rt = ref()
        if rt is not None and params & ids:
            found.append(rt)
    return found


def register() -> None:
    """Register the backend with Dynamo (the installed package also declares the entry point)."""
    from torch._dynamo import list_backends, register_backend

    if "cachec" not in list_backends(exclude_tags=()):
        register_backend(name="cachec")(cachec_backend)
