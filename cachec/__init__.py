"""cachec: diffusion feature caching as a compiler pass.

    rt = cachec.compile(model, example_inputs, policy="fora:3", num_steps=50)
    out = rt(**inputs)          # called like the model, once per denoising step
    rt.stats.nfe                # full-forward equivalents of the trajectory so far
"""

from __future__ import annotations

import torch

from .errors import ArtifactError, BackendError, CachecError, ModelError, PolicyError, ShapeError
from .policy import parse_policy
from .runtime import CacheRuntime, signature_of

__version__ = "0.1.0"


def build_program(model: torch.nn.Module, example_inputs: dict, policy="none"):
    """Capture ``model`` and plan ``policy``: returns the :class:`~cachec.program.Program`."""
    from .capture import capture
    from .planner import Planner

    policy = parse_policy(policy)
    latent = "sample" if type(model).__name__ == "UNet2DConditionModel" else "hidden_states"
    cap = capture(model, example_inputs, stream_inputs=[latent, "encoder_hidden_states"], latent_input=latent)
    planner = Planner(cap)
    program = planner.plan(policy)
    program.meta["none_flops"] = sum(s.flops for s in planner.segments.values())
    return program


def compile(model: torch.nn.Module, example_inputs: dict, policy="none", *, backend: str = "eager",
            num_steps: int | None = None) -> CacheRuntime:  # noqa: A001 - the verb users expect
    """Compile ``model`` with a cache ``policy`` into a runtime called like the model."""
    program = build_program(model, example_inputs, policy)
    return CacheRuntime(program, policy, backend=backend, num_steps=num_steps, signature=signature_of(model))


def reset(runtime: CacheRuntime, num_steps: int | None = None) -> None:
    """Start a new trajectory explicitly."""
    runtime.reset(num_steps)


__all__ = [
    "ArtifactError", "BackendError", "CacheRuntime", "CachecError", "ModelError", "PolicyError", "ShapeError",
    "build_program", "compile", "parse_policy", "reset", "__version__",
]
