"""Caching inside diffusers pipelines: ``cachec.enable(pipe, policy=...)``.

A pipeline calls its denoiser with shapes that only the pipeline knows (resolution, prompt
length, CFG batch). :class:`CachedDenoiser` therefore compiles lazily: the first call's own
inputs are the example inputs for capture, and each further input signature (another resolution
or prompt length; the batch is dynamic) gets its own compiled runtime, so caches of different
shapes are never mixed. It looks like the model to the pipeline (``config``, ``dtype``,
``device``, ``return_dict``, ``cache_context``) and keeps the original module, so ``pipe.to``
and ``cachec.disable(pipe)`` behave as a user expects.

``enable`` wraps every denoiser of the pipeline (Wan 2.2's two experts each get their own
programs, caches and step numbering: :mod:`cachec.experts`), and the diffusers LoRA API keeps
working on them (:mod:`cachec.lora`); a runtime compiles again when its model changed
(:mod:`cachec.staleness`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import torch

from .errors import ModelError
from .runtime import CacheRuntime
from .staleness import call_constants, model_watch
from .structure import first_tensor_input

log = logging.getLogger("cachec")

DENOISER_ATTRS = ("transformer", "transformer_2", "unet", "prior")


class CachedDenoiser(torch.nn.Module):
    """A pipeline's denoiser with a cache policy, compiled on first use for the shapes it sees."""

    def __init__(self, model: torch.nn.Module, policy="fora:3", *, backend: str = "eager",
                 num_steps: int | None = None):
        super().__init__()
        from .policy import parse_policy

        self.method = parse_policy(policy)  # a bad spec fails here, not at the first step
        self.policy = self.method.spec
        self.model = model.eval()
        self.backend = backend
        self.num_steps = num_steps
        self.runtimes: dict[tuple, CacheRuntime] = {}
        self._signature = [p for p in inspect.signature(model.forward).parameters if p not in ("self", "kwargs")]
        self._context: tuple[str, dict] | None = None
        self.current: CacheRuntime | None = None
        self.steps = None  # an experts.ExpertSteps when the pipeline has several denoisers

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs):
        """Diffusers' branch-naming protocol, handed to the runtime that serves the call."""
        self._context = (name, kwargs if self.steps is None else self.steps.local(kwargs))
        try:
            yield
        finally:
            self._context = None

    def reset(self, num_steps: int | None = None) -> None:
        for rt in self.runtimes.values():
            rt.reset(num_steps)

    def forward(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        kwargs.update(zip(self._signature, args, strict=False))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        rt = self._runtime_for(kwargs)
        self.current = rt
        with rt.cache_context(self._context[0], **self._context[1]) if self._context else contextlib.nullcontext():
            return rt(**kwargs, return_dict=return_dict)

    def _runtime_for(self, kwargs: dict) -> CacheRuntime:
        from .capture import flatten_inputs

        flat = flatten_inputs(kwargs)
        batch = flat[first_tensor_input(self.model, flat)].shape[0]
        key = tuple(sorted((n, tuple(t.shape[1:] if t.dim() and t.shape[0] == batch else t.shape), t.dtype)
                           for n, t in flat.items()))
        key = key + call_constants(kwargs)  # a LoRA scale in attention kwargs is baked into the program
        static_key = key + (("static batch", batch),)  # a model that specialises its batch serves only it
        for k in (static_key, key):
            if k in self.runtimes:
                return self.runtimes[k]
        if self.runtimes:
            log.warning("cachec: the denoiser is called with new input shapes or non-tensor arguments (a LoRA "
                        "scale, say); compiling for them (caches of different programs are never mixed)")
        rt = self._compile(kwargs)
        self.runtimes[key if rt.program.model.batch_dims else static_key] = rt
        return rt

    def _compile(self, kwargs: dict) -> CacheRuntime:
        from .build import build_program
        from .runtime import signature_of

        program = build_program(self.model, kwargs, self.method)  # capture takes a batch-1 call as a batch of 2
        runtime = CacheRuntime(program, self.method, backend=self.backend, num_steps=self.num_steps,
                               signature=signature_of(self.model), config=dict(self.model.config))
        runtime.watch = model_watch(self.model, kwargs, lambda example: build_program(self.model, example, self.method))
        return runtime


def denoiser_attrs(pipe) -> list[str]:
    """Every denoiser attribute the pipeline has (Wan 2.2: ``transformer`` and ``transformer_2``)."""
    found = [attr for attr in DENOISER_ATTRS if getattr(pipe, attr, None) is not None]
    if not found:
        raise ModelError(f"{type(pipe).__name__} has no denoiser attribute; cachec looks for {', '.join(DENOISER_ATTRS)}")
    return found


def denoiser_attr(pipe) -> str:
    """The pipeline's first denoiser attribute."""
    return denoiser_attrs(pipe)[0]


def enable(pipe, policy="fora:3", *, backend: str = "eager", num_steps: int | None = None):
    """Replace each denoiser of ``pipe`` (``transformer``, ``transformer_2``, ``unet``, ``prior``) by a
    :class:`CachedDenoiser` running ``policy``, each with its own programs and caches.

    Returns the pipeline. ``num_steps`` is optional: pipelines that name their steps through
    ``cache_context`` say it themselves, and a new trajectory is also detected from the timesteps.
    The diffusers LoRA API (``pipe.load_lora_weights``, ``set_adapters``, ``fuse_lora``…) keeps
    working on the pipeline and the cached programs follow it.
    """
    from .experts import ExpertSteps
    from .lora import with_lora_api
    from .policy import parse_policy

    method = parse_policy(policy)  # a spec or a method; one parse for every denoiser
    attrs = denoiser_attrs(pipe)
    for index, attr in enumerate(attrs):
        model = getattr(pipe, attr)
        if isinstance(model, CachedDenoiser):
            model = model.model
        cls = with_lora_api(CachedDenoiser) if _is_diffusers_model(model) else CachedDenoiser
        denoiser = cls(model, method, backend=backend, num_steps=num_steps)
        if len(attrs) > 1:
            denoiser.steps = ExpertSteps(pipe, index)
        setattr(pipe, attr, denoiser)
    return pipe


def _is_diffusers_model(model) -> bool:
    """Whether ``model`` is a diffusers model (then its LoRA API is forwarded), without importing diffusers."""
    return any(c.__module__.startswith("diffusers.") and c.__name__ == "ModelMixin" for c in type(model).__mro__)


def disable(pipe):
    """Put the original denoisers back."""
    for attr in denoiser_attrs(pipe):
        model = getattr(pipe, attr)
        if isinstance(model, CachedDenoiser):
            setattr(pipe, attr, model.model)
    return pipe
