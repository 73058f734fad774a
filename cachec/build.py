"""Capture and plan in one call: the program a runtime, ``enable`` or the ``torch.compile`` backend
lowers. Its own module so that those front ends import it without the package ``__init__``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def build_program(model: torch.nn.Module, example_inputs: dict, policy="none"):
    """Capture ``model`` and plan ``policy``: returns the :class:`~cachec.program.Program`."""
    from .capture import capture
    from .planner import compile_program
    from .policy import parse_policy

    policy = parse_policy(policy)
    cap = capture(model, example_inputs)  # the latent and the streams are found from structure
    return compile_program(cap, policy)
