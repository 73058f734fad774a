"""Lowering targets of cachec (installed as ``cachec.backends``).

Every backend implements one small interface: ``lower(program)`` returns, for each variant
(path) of the program, a callable ``run(env, caches) -> flops`` that executes the path's ops on
a value environment and the runtime's cache buffers, returning the per-sample FLOPs it ran. Backends whose packages are
optional are imported lazily, and a missing one is reported with the extra to install.
"""

from __future__ import annotations

from cachec.errors import BackendError

BACKENDS = {
    "eager": "cachec.backends.eager",
    "onnxruntime": "cachec.backends.onnxruntime",
    "tensorrt": "cachec.backends.tensorrt",
    "inductor": "cachec.backends.inductor",
}


def get_backend(name: str):
    import importlib

    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    check = getattr(module, "check", None)
    if check is not None:
        check()
    return module


def with_mode(options: dict, backend: str, mode: str | None) -> dict:
    """Backend options with ``--mode``, which only the inductor backend takes."""
    if mode is None:
        return options
    if backend != "inductor":
        raise BackendError(f"--mode {mode} applies to the inductor backend only; this run uses {backend}")
    return {**options, "mode": mode}
