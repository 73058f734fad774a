"""cachec: diffusion feature caching as a compiler pass.

    rt = cachec.compile(model, example_inputs, policy="fora:3", num_steps=50)
    out = rt(**inputs)          # called like the model, once per denoising step
    rt.stats.nfe                # full-forward equivalents of the trajectory so far
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import ArtifactError, BackendError, CachecError, ModelError, PolicyError, RequestError, ShapeError

if TYPE_CHECKING:
    import torch

    from .pipeline import CachedDenoiser, disable, enable
    from .policy import parse_policy
    from .runtime import CacheRuntime, signature_of  # noqa: F401

from .build import build_program
from .version import __version__

# Imported on first use, not with the package: `import cachec.cli` (every `cachec` command, even
# `--help`) runs this file, and these names pull in torch and diffusers (seconds of start-up).
_LAZY = {"CachedDenoiser": "pipeline", "disable": "pipeline", "enable": "pipeline", "parse_policy": "policy",
         "CacheRuntime": "runtime", "signature_of": "runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # `cachec.runtime` and the like, as when the package imported them eagerly
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def compile(model: torch.nn.Module, example_inputs: dict, policy="none", *, backend: str = "eager",
            num_steps: int | None = None, backend_options: dict | None = None) -> CacheRuntime:  # noqa: A001
    """Compile ``model`` with a cache ``policy`` into a runtime called like the model.

    ``backend_options`` go to the backend's lowering, e.g. ``{"mode": "reduce-overhead"}`` for
    ``backend="inductor"`` (one CUDA graph per variant on a GPU).
    """
    from cachec.backends.registry import get_backend

    from .policy import parse_policy
    from .quantized import check_quantizer, quantization_of
    from .runtime import CacheRuntime, signature_of
    from .staleness import model_watch

    check_quantizer(model, type(model).__name__)  # bitsandbytes, GGUF...: one message, no capture
    get_backend(backend).check_weights(quantization_of(model.parameters()))  # before the (slow) capture
    method = parse_policy(policy)  # parsed once, here: a bad spec fails before the capture
    program = build_program(model, example_inputs, method)
    runtime = CacheRuntime(program, method, backend=backend, num_steps=num_steps, signature=signature_of(model),
                           backend_options=backend_options)
    # a LoRA loaded, fused or rescaled after this call recompiles instead of running stale weights
    runtime.watch = model_watch(model, example_inputs, lambda example: build_program(model, example, method))
    return runtime


def load(path, *, backend: str | None = None, num_steps: int | None = None, policy: str | None = None,
         allow_version_mismatch: bool = False, device=None, trust_native: bool = False,
         verify_key=None) -> CacheRuntime:
    """Load a compiled artifact directory (``cachec compile --out DIR``) as a runtime.

    The artifact is verified (checksums, schema, variants) and needs neither the model's Python
    class nor its weight files. It runs on the backend it was compiled for (an eager artifact may
    also be lowered to another ``backend``). ``device`` (``"cuda"``, ``"cpu"``…) is where an eager or
    Inductor artifact's weights go; default: where they were saved from. ``policy`` may change a threshold of the compiled
    policy (``fbcache:0.12`` for an artifact compiled with ``fbcache:0.08``), not its kind.
    An artifact written by a newer cachec, or an eager one by another torch, is refused unless
    ``allow_version_mismatch`` (TensorRT engines must always match the installed TensorRT).

    Loading never unpickles: checksums catch corruption, not a deliberate edit, so an artifact
    of native code (AOTInductor, TensorRT) loads only with ``trust_native=True`` or when signed
    (``cachec compile --sign-key``) and ``verify_key`` (a key file or the key's bytes; default:
    the file named by ``$CACHEC_VERIFY_KEY``) verifies it; see :mod:`cachec.signing`.
    """
    from .artifact import load_program, runtime_backend
    from .runtime import CacheRuntime

    program, manifest = load_program(path, allow_version_mismatch=allow_version_mismatch,
                                     trust_native=trust_native, verify_key=verify_key)
    backend, options = runtime_backend(path, manifest, backend)
    return CacheRuntime(program, policy, backend=backend, num_steps=num_steps, signature=manifest["signature"],
                        backend_options=options, config=manifest["model"]["config"], device=device)


def reset(model, num_steps: int | None = None) -> None:
    """Start a new trajectory explicitly: a runtime, or a model compiled with backend="cachec"."""
    from .pipeline import CachedDenoiser
    from .runtime import CacheRuntime

    if isinstance(model, (CacheRuntime, CachedDenoiser)):
        model.reset(num_steps)
        return
    if hasattr(model, "components"):  # a pipeline after cachec.enable
        from .pipeline import denoiser_attrs

        for attr in denoiser_attrs(model):
            reset(getattr(model, attr), num_steps)
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
