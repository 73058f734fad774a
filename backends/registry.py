"""The registry of backends: their names, and each one's class imported on first use.

Why its own module: :class:`~cachec.backends.base.Backend` asks it which backends can do what (to
name them in a refusal) while the backend modules import ``base``; with the registry apart,
neither imports the package ``__init__`` that re-exports both.
"""

from __future__ import annotations

import importlib

from cachec.errors import BackendError

# name -> "module:Class"; modules are imported on first use (their packages are optional)
BACKENDS = {
    "eager": "cachec.backends.eager:EagerBackend",
    "onnxruntime": "cachec.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "cachec.backends.tensorrt:TensorRTBackend",
    "inductor": "cachec.backends.inductor:InductorBackend",
    "aotinductor": "cachec.backends.aotinductor:AOTInductorBackend",
}


def _class(name: str) -> type:  # a cachec.backends.base.Backend subclass
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str):
    """The backend called ``name``, its packages checked."""
    backend = _class(name)()
    backend.check()
    return backend


def capable(capabilities: list[str]) -> list[str]:
    """Names of the backends that have every one of ``capabilities``."""
    return [n for n in BACKENDS if all(getattr(_class(n), c) for c in capabilities)]


def artifact_backends() -> list[str]:
    """Names of the backends ``cachec compile`` writes artifacts for."""
    return [n for n in BACKENDS if _class(n).writes_artifacts]


def artifact_backend(name: str):
    """The backend of an artifact, without checking its packages (a manifest check needs none)."""
    return _class(name)()


def with_mode(options: dict, backend: str, mode: str | None) -> dict:
    """Backend options with ``--mode``, which only the inductor backend takes."""
    if mode is None:
        return options
    if backend != "inductor":
        raise BackendError(f"--mode {mode} applies to the inductor backend only; this run uses {backend}")
    return {**options, "mode": mode}
