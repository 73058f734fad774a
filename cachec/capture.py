"""Capture: export a denoiser once into an FX graph with a dynamic batch dimension.

Everything after capture works on this graph and never re-traces Python. We use non-strict
``torch.export`` (the default since torch 2.7) because diffusers models are not Dynamo-clean in
strict mode everywhere, and we ask for the batch dimension explicitly: automatic dynamic dims
specialise 0/1, which would silently bake the example batch into the program. A model whose code
specialises the batch itself is captured at its example batch instead (logged), and what cannot
be captured at all is reported with the construct that failed (:mod:`cachec.structure`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.export import Dim

from cachec.passes.infra import graph_module

from . import structure
from .errors import CaptureError, ModelError
from .output_forms import TENSOR, as_one_tensor
from .program_store import GRAPH_FILE as PROGRAM_FILE  # noqa: F401 - an eager artifact's captured program
from .regions import WRAPPER, module_path

log = logging.getLogger("cachec")

MAX_BATCH = 1024

# torch.export keeps process-global state while it traces or deserialises (a second thread fails
# with "_CURRENT_DESERIALIZER is already set"), so cachec runs one export or load at a time
EXPORT_LOCK = threading.RLock()



@dataclass
class Captured:
    """A denoiser exported to a flat FX graph.

    ``graph_module`` takes one placeholder per tensor input (named as the model's keyword
    argument) and returns a one-tuple ``(sample,)``. ``stream_inputs`` are the token/latent
    inputs that carry the image (and text) streams; every other input is *conditioning*.
    """

    graph_module: fx.GraphModule
    input_names: list[str]
    output_name: str
    stream_inputs: list[str]
    latent_input: str
    model_class: str
    config: dict = field(default_factory=dict)
    example_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_dims: dict[str, int] = field(default_factory=dict)
    cross_attention: set[str] | None = None  # None: unknown, ``attn2`` children are cross-attention
    output_form: str = TENSOR  # the model's output: one tensor, or a list/tuple of per-sample ones
    max_batch: int = MAX_BATCH
    exported: torch.export.ExportedProgram | None = None

    @property
    def example_batch(self) -> int:
        return int(self.example_inputs[self.latent_input].shape[0])

    def copy(self) -> Captured:
        """A copy whose graph the planner's passes may rewrite in place, sharing every tensor.

        Planning consumes its capture; copying one capture per policy is what lets ``cachec
        bench``/``calibrate`` plan several policies after a single ``torch.export`` (the slow
        part). Weights, constants, example inputs and the exported program are shared, never
        duplicated.
        """
        import copy

        gm = self.graph_module
        shared: list[object] = [self.exported, *self.example_inputs.values()]
        shared += list(gm.state_dict(keep_vars=True).values())
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                shared.append(operator.attrgetter(str(node.target))(gm))
        memo = {id(obj): obj for obj in shared if obj is not None}
        with warnings.catch_warnings():  # torch's own pytree deprecation notice while copying specs
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(self, memo)


def flatten_inputs(kwargs: dict) -> dict[str, torch.Tensor]:
    """Flat ``name → tensor`` view of model kwargs; nested dicts become ``outer__inner`` and lists
    or tuples of tensors ``outer__0``, ``outer__1``…

    PixArt takes ``added_cond_kwargs={"resolution": ..., "aspect_ratio": ...}``; the exported
    graph and the runtime both use the flat names, so artifacts need no pytree specs. A ControlNet
    hands the denoiser one residual per block as a list (``controlnet_block_samples``): those are
    inputs that change every step, and a list left out here would be baked into the graph as the
    first call's constants (every later step would add stale residuals, silently).
    """
    flat: dict[str, torch.Tensor] = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            flat[k] = v
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, torch.Tensor):
                    flat[f"{k}__{k2}"] = v2
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v):
            for i, x in enumerate(v):
                flat[f"{k}__{i}"] = x
    return flat


def _rebuild(flat: dict[str, torch.Tensor], template: dict) -> dict:
    out = {}
    for k, v in template.items():
        if isinstance(v, dict):
            out[k] = {k2: flat.get(f"{k}__{k2}", v2) for k2, v2 in v.items()}
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, torch.Tensor) for x in v):
            out[k] = type(v)(flat.get(f"{k}__{i}", x) for i, x in enumerate(v))
        else:
            out[k] = flat.get(k, v)
    return out


class _Denoiser(torch.nn.Module):
    """Calls the model with rebuilt kwargs and returns its first output as a one-tuple.

    A first output that is a list of per-sample tensors is stacked into one tensor and its form
    recorded (``output_form``), so the runtime returns every sample (:mod:`cachec.output_forms`).

    ``forward`` is generated with one explicit parameter per flat input, because export names
    placeholders after the parameters and cannot attach dynamic shapes to ``**kwargs``.
    """

    def __init__(self, model: torch.nn.Module, template: dict):
        super().__init__()
        setattr(self, WRAPPER, model)
        self._template = template

    def call(self, flat: dict[str, torch.Tensor]):
        kwargs = _rebuild(flat, self._template)
        kwargs["return_dict"] = False
        out = getattr(self, WRAPPER)(**kwargs)
        first = out[0] if isinstance(out, (tuple, list)) else out
        sample, self.output_form = as_one_tensor(first, type(getattr(self, WRAPPER)).__name__)
        return (sample,)


def _wrap(model: torch.nn.Module, template: dict, names: list[str]) -> torch.nn.Module:
    for n in names:
        if not n.isidentifier():
            raise ModelError(f"input name {n!r} is not a Python identifier")
    src = f"def forward(self, {', '.join(names)}):\n    return self.call(dict({', '.join(f'{n}={n}' for n in names)}))\n"
    scope: dict = {}
    exec(src, scope)  # noqa: S102 - a generated signature, names checked above
    cls = type("Denoiser", (_Denoiser,), {"forward": scope["forward"]})
    return cls(model, template)


def capture(
    model: torch.nn.Module,
    example_kwargs: dict,
    *,
    stream_inputs: list[str] | None = None,
    latent_input: str | None = None,
    dynamic_batch: bool = True,
) -> Captured:
    """Export ``model(**example_kwargs)`` and return a clean flat graph.

    Non-tensor values in ``example_kwargs`` are baked in as constants; nested dicts of tensors
    are flattened (see :func:`flatten_inputs`). ``latent_input`` and ``stream_inputs`` are found
    from structure when not given (:mod:`cachec.structure`): the latent is the input whose shape
    the output has, the streams are the batched token sequences.
    """
    model = model.eval()
    template = {k: v for k, v in example_kwargs.items() if k != "return_dict"}
    tensors = flatten_inputs(template)
    if not tensors:
        raise ModelError(f"{type(model).__name__}: the example inputs hold no tensor; give the forward's tensors "
                         "(the latent, timestep and conditioning) as keyword arguments")
    return capture_module(
        _wrap(model, template, list(tensors)), tensors, stream_inputs=stream_inputs,
        latent_input=latent_input or structure.first_tensor_input(model, tensors),
        model_class=type(model).__name__, config=dict(getattr(model, "config", {}) or {}),
        dynamic_batch=dynamic_batch, structural_latent=latent_input is None,
    )


def capture_module(
    wrapper: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    *,
    stream_inputs: list[str] | None,
    latent_input: str,
    model_class: str,
    config: dict | None = None,
    cross_attention: set[str] | None = None,
    dynamic_batch: bool = True,
    structural_latent: bool = False,
) -> Captured:
    """Export a module whose forward takes ``tensors`` by name and returns ``(output,)``.

    A dynamic batch cannot be captured from a batch of 1: export specialises a size-1 dimension
    to the constant 1 and then reports the requested ``Dim("batch")`` as violated. Single-image
    generation (FLUX runs at batch 1) is the common case, so a batch-1 example is captured as a
    batch of 2 (each batched input repeated); the program still serves batch 1.

    A model whose code specialises the batch (``torch.tensor([0] * batch_size)``) cannot be
    exported with a dynamic one; then the example batch is captured statically (logged), and the
    program serves exactly that batch. ``cross_attention`` (None: found from the graph) names
    attention modules whose keys and values come from another stream than the latent.
    """
    batch = tensors[latent_input].shape[0]
    example = tensors
    batch_dims = structure.batch_dims(tensors, batch, latent_input) if dynamic_batch else {}
    if dynamic_batch and batch == 1:
        tensors = {k: torch.cat([v, v]) if k in batch_dims else v for k, v in tensors.items()}
    try:
        ep, max_batch = _export(wrapper, tensors, batch_dims, dynamic_batch)
    except Exception as exc:  # noqa: BLE001 - a static batch is tried, then re-raised with the construct
        if not dynamic_batch:
            raise _capture_error(model_class, exc, static=True) from exc
        log.info("cachec: %s does not export with a dynamic batch (%s); capturing the example batch of %d "
                 "statically (the program serves only that batch)", model_class,
                 structure.export_failure_construct(exc), batch)
        tensors, batch_dims, dynamic_batch = example, {}, False
        try:
            ep, max_batch = _export(wrapper, tensors, batch_dims, dynamic_batch)
        except Exception as exc2:  # noqa: BLE001
            raise _capture_error(model_class, exc2, static=True, dynamic_exc=exc) from exc2
    gm = flatten_exported(ep, list(tensors))
    if structural_latent:
        out = next(n for n in gm.graph.nodes if n.op == "output").args[0][0]
        val = out.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = [s if isinstance(s, int) else tensors[latent_input].shape[0] for s in val.shape]
            latent_input = structure.latent_from_output(tensors, shape, latent_input)
    if stream_inputs is None:
        stream_inputs = structure.stream_inputs(tensors, latent_input, batch_dims)
    if cross_attention is None:
        cross_attention = structure.cross_attention(gm, latent_input, _attention_modules(gm))
    return Captured(
        graph_module=gm,
        input_names=list(tensors),
        output_name="output",  # never an input name (the U-Net latent input is called sample)
        stream_inputs=[s for s in stream_inputs if s in tensors],
        latent_input=latent_input,
        model_class=model_class,
        config=config or {},
        example_inputs={k: v.detach().clone() for k, v in tensors.items()},
        batch_dims=batch_dims,
        cross_attention=cross_attention,
        max_batch=max_batch if dynamic_batch else batch,
        exported=ep,
        output_form=getattr(wrapper, "output_form", TENSOR),
    )


def _capture_error(model_class: str, exc: BaseException, *, static: bool,
                   dynamic_exc: BaseException | None = None) -> CaptureError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    tried = " (a dynamic batch failed too, then the example batch statically)" if dynamic_exc is not None else ""
    return CaptureError(
        f"torch.export could not capture {model_class}{tried}: the model uses "
        f"{structure.export_failure_construct(exc)} — {type(exc).__name__}: {first}\n"
        "cachec accepts a denoiser that non-strict torch.export can trace: no Python branch on a tensor's value, "
        "no .tolist()/.item()/numpy on tensors, and example inputs that match the forward's signature "
        "(--debug shows torch's full report)."
    )


def _attention_modules(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Outermost attention modules of the graph (class named ``*Attention*``, not a processor) → nodes."""
    found: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        for fqn, cls in module_path(node):
            if "Attention" in cls and "Processor" not in cls:
                found.setdefault(fqn, []).append(node)
                break
    return found


@contextlib.contextmanager
def _quiet_export():
    """While torch.export fails it logs warnings and prints the partial graph to stderr; cachec
    reports the failure itself in one message, so that output is kept back and shown only on
    success (where it is ordinary warnings) or when cachec logs at DEBUG (``--debug``)."""
    if logging.getLogger("cachec").isEnabledFor(logging.DEBUG):
        yield
        return
    torch_log = logging.getLogger("torch")
    old_level = torch_log.level
    held = io.StringIO()
    torch_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        torch_log.setLevel(old_level)
    sys.stderr.write(held.getvalue())  # reached only when the export succeeded


def _export(wrapper, tensors, batch_dims, dynamic_batch):
    with EXPORT_LOCK, _quiet_export():
        return _export_dynamic(wrapper, tensors, batch_dims, dynamic_batch)


def _export_dynamic(wrapper, tensors, batch_dims, dynamic_batch):
    """Export with a dynamic batch of 1..MAX_BATCH; if the model's code bounds the batch more
    tightly (the SD U-Net's upsampling does), retry once with the bound export suggests."""
    if not dynamic_batch:
        with torch.no_grad():
            return torch.export.export(wrapper, (), tensors, strict=False), None

    def run(max_batch):
        b = Dim("batch", min=1, max=max_batch)
        shapes = {k: ({batch_dims[k]: b} if k in batch_dims else None) for k in tensors}
        with torch.no_grad():
            return torch.export.export(wrapper, (), tensors, dynamic_shapes=shapes, strict=False)

    try:
        return run(MAX_BATCH), MAX_BATCH
    except Exception as exc:  # noqa: BLE001 - only a suggested batch bound is retried
        found = re.search(r"Dim\('batch', max=(\d+)\)", str(exc))
        if not found:
            raise
        bound = int(found.group(1))
        return run(bound), bound


def flatten_exported(ep: torch.export.ExportedProgram, tensor_names: list[str]) -> fx.GraphModule:
    """Turn the exported program into a plain GraphModule: tensor placeholders, ``(sample,)`` out.

    ``ep.module()`` carries pytree in/out specs, a guards call and metadata asserts; we keep the
    ATen nodes, drop the export scaffolding (done by :mod:`cachec.passes.strip_export`), and
    name the single output ``sample``.
    """
    unlifted = ep.module()
    gm = graph_module(unlifted, unlifted.graph).eval()  # its code is made when (if) it runs
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in placeholders:
        if node.name not in tensor_names:
            if node.users and not all(u.op == "call_module" for u in node.users):
                raise ModelError(f"non-tensor input {node.name!r} is used by the model graph")
    out = next(n for n in graph.nodes if n.op == "output")
    flat = out.args[0]
    if isinstance(flat, (list, tuple)):
        flat = flat[0]
    out.args = ((flat,),)
    gm.graph.lint()
    gm.recompile()
    return gm
