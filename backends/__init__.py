"""Lowering targets of cachec (installed as ``cachec.backends``).

A backend is a :class:`Backend` subclass in its own module: it lowers a program (for each
variant, a callable ``run(env, caches) -> flops`` that executes the variant's ops on a value
environment and the runtime's cache buffers, returning the per-sample FLOPs it ran), writes and
reads back the files an artifact holds for it, and *declares its capabilities* — what the
runtime, the artifact code and the methods need to know about it — instead of other modules
testing its name. Backends whose packages are optional are imported lazily, and a missing one
is reported with the extra to install.
"""

from __future__ import annotations

from .base import Backend, Runner, major_minor, output_buffer, outputs_bound_to_caches, run_cache_op
from .registry import BACKENDS, artifact_backend, artifact_backends, capable, get_backend, with_mode

__all__ = ["BACKENDS", "Backend", "Runner", "artifact_backend", "artifact_backends", "capable", "get_backend",
           "major_minor", "output_buffer", "outputs_bound_to_caches", "run_cache_op", "with_mode"]
