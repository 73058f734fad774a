"""Example inputs recorded from a pipeline's own first denoiser call (MODEL is a pipeline directory).

Why: a denoiser's forward signature does not always say what its inputs look like — a size
tuple (CogView's ``original_size``), an extra conditioning dict, a mask. The pipeline that ships
with the model knows, because its own call builds them. ``cachec.enable`` captures a pipeline's
first call for the same reason; here the pipeline, loaded from the directory, runs with a fixed
prompt until its denoiser is first called, and stops there (no further steps, no decoding).

Recorded values are kept flat (``a__b`` for a nested ``a={"b": ...}``), as an ``--inputs`` file
holds them, so both go through the same batch fitting (:func:`cachec.models.fit_inputs`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from .errors import ModelError

PROMPT = "a photo of a cat"


class _Stop(Exception):
    """Raised from the denoiser's pre-hook once its first call is recorded."""


def record_first_call(pipe_dir: str | Path, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of the pipeline's first denoiser call, by the forward's argument names (CPU copies)."""
    from .pipeline import denoiser_attr
    from .prompt_run import load_pipeline

    pipe = load_pipeline(pipe_dir, device, dtype)
    denoiser = getattr(pipe, denoiser_attr(pipe))
    params = inspect.signature(denoiser.forward)
    recorded: dict[str, object] = {}

    def hook(module, args, kwargs):
        recorded.update(params.bind(*args, **kwargs).arguments)
        raise _Stop

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(prompt=PROMPT, num_inference_steps=2, output_type="latent")
    except _Stop:
        pass
    except Exception as exc:  # noqa: BLE001 - the pipeline's own failure, named with its class
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{pipe_dir}: {type(pipe).__name__} failed before its first denoiser call "
                         f"({type(exc).__name__}: {first}); pass the inputs with --inputs FILE") from exc
    finally:
        handle.remove()
    if not recorded:
        raise ModelError(f"{pipe_dir}: {type(pipe).__name__} never called its denoiser; pass the inputs with --inputs FILE")
    flat: dict[str, torch.Tensor] = {}
    for name, value in recorded.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value.detach().cpu()
        elif isinstance(value, dict):
            flat.update({f"{name}__{k}": v.detach().cpu() for k, v in value.items() if isinstance(v, torch.Tensor)})
    return flat
