"""cachec: diffusion feature caching as a compiler pass.

    rt = cachec.compile(model, example_inputs, policy="fora:3", num_steps=50)
    out = rt(**inputs)          # called like the model, once per denoising step
    rt.stats.nfe                # full-forward equivalents of the trajectory so far
"""

from __future__ import annotations

import torch

from .errors import ArtifactError, BackendError, CachecError, ModelError, PolicyError, RequestError, ShapeError
from .pipeline import CachedDenoiser, disable, enable
from .policy import parse_policy
from .runtime import CacheRuntime, signature_of

__version__ = "0.1.0"


def build_program(model: torch.nn.Module, example_inputs: dict, policy="none"):
    """Capture ``model`` and plan ``policy``: returns the :class:`~cachec.program.Program`."""
    from .capture import capture
    from .planner import compile_program

    policy = parse_policy(policy)
    cap = capture(model, example_inputs)  # the latent and the streams are found from structure
    return compile_program(cap, policy)


def compile(model: torch.nn.Module, example_inputs: dict, policy="none", *, backend: str = "eager",
            num_steps: int | None = None, backend_options: dict | None = None) -> CacheRuntime:  # noqa: A001
    """Compile ``model`` with a cache ``policy`` into a runtime called like the model.

    ``backend_options`` go to the backend's lowering, e.g. ``{"mode": "reduce-overhead"}`` for
    ``backend="inductor"`` (one CUDA graph per variant on a GPU).
    """
    program = build_program(model, example_inputs, policy)
    return CacheRuntime(program, policy, backend=backend, num_steps=num_steps, signature=signature_of(model),
                        backend_options=backend_options)


def load(path, *, backend: str | None = None, num_steps: int | None = None, policy: str | None = None,
         allow_version_mismatch: bool = False, device=None) -> CacheRuntime:
    """Load a compiled artifact directory (``cachec compile --out DIR``) as a runtime.

    The artifact is verified (checksums, schema, variants) and needs neither the model's Python
    class nor its weight files. It runs on the backend it was compiled for (an eager artifact may
    also be lowered to another ``backend``). ``device`` (``"cuda"``, ``"cpu"``…) is where an eager or
    Inductor artifact's weights go; default: where they were saved from. ``policy`` may change a threshold of the compiled
    policy (``fbcache:0.12`` for an artifact compiled with ``fbcache:0.08``), not its kind.
    An artifact written by a newer cachec, or an eager one by another torch, is refused unless
    ``allow_version_mismatch`` (TensorRT engines must always match the installed TensorRT).
    """
    from .artifact import load_program, runtime_backend

    program, manifest = load_program(path, allow_version_mismatch=allow_version_mismatch)
    backend, options = runtime_backend(path, manifest, backend)
    return CacheRuntime(program, policy, backend=backend, num_steps=num_steps, signature=manifest["signature"],
                        backend_options=options, config=manifest["model"]["config"], device=device)


def reset(model, num_steps: int | None = None) -> None:
    """Start a new trajectory explicitly: a runtime, or a model compiled with backend="cachec"."""
    if isinstance(model, (CacheRuntime, CachedDenoiser)):
        model.reset(num_steps)
        return
    if hasattr(model, "components"):  # a pipeline after cachec.enable
        from .pipeline import denoiser_attr

        reset(getattr(model, denoiser_attr(model)), num_steps)
        return
    from .torch_compile import runtimes_of

    runtimes = runtimes_of(model)
    if not runtimes:
        raise CachecError("cachec.reset: this model has no cachec runtime (compile it with backend='cachec' first)")
    for rt in runtimes:
        rt.reset(num_steps)


__all__ = [
    "ArtifactError", "BackendError", "CacheRuntime", "CachecError", "CachedDenoiser", "ModelError", "PolicyError", "RequestError",
    "ShapeError", "build_program", "compile", "disable", "enable", "load", "parse_policy", "reset", "__version__",
]
