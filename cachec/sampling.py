"""A plain sampling loop (scheduler + denoiser) used by ``cachec run`` and ``cachec bench``.

It calls the denoiser exactly as a diffusers pipeline would (keyword inputs, batched timestep,
no classifier-free guidance), so the same loop drives the uncached model, a cachec runtime and
the hook-based references in the tests. Flow-matching models get ``FlowMatchEulerDiscreteScheduler``
and FLUX its timestep divided by 1000, as in ``FluxPipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models import ModelBundle


@dataclass
class Trajectory:
    sample: torch.Tensor
    seconds: float
    step_seconds: list[float]


def initial_inputs(bundle: ModelBundle, batch: int, seed: int) -> dict:
    """Seeded starting latent plus fixed conditioning (class labels cycle through the classes)."""
    kw = bundle.example_inputs(batch=batch, seed=seed)
    if "class_labels" in kw:
        n = bundle.config["num_embeds_ada_norm"]
        kw["class_labels"] = (torch.arange(batch) % n).to(kw["class_labels"].device)
    return kw


def sample(denoiser, bundle: ModelBundle, steps: int, seed: int, batch: int, progress: bool = False,
           callback: Callable[[int, torch.Tensor], None] | None = None) -> Trajectory:
    """Run the sampler; ``callback(i, latent)``, if given, sees the latent after step ``i``.

    The callback is how ``cachec bench`` records the per-step error curve without a second pass;
    it runs inside the timed loop, so keep it as cheap as a list append.
    """
    kw = initial_inputs(bundle, batch, seed)
    x = kw.pop(bundle.latent_input)
    return denoise(denoiser, bundle, x, kw, steps, progress=progress, callback=callback)


def denoise(denoiser, bundle: ModelBundle, x: torch.Tensor, kw: dict, steps: int, progress: bool = False,
            callback: Callable[[int, torch.Tensor], None] | None = None) -> Trajectory:
    """The sampling loop from a given starting latent ``x`` and conditioning ``kw`` (every other
    input of the denoiser; ``kw["timestep"]`` gives the timestep's shape and dtype). ``cachec serve``
    calls it with the requests' own latents and conditioning."""
    policy = getattr(denoiser, "policy", None)
    if getattr(policy, "cfg_pairs", False):
        from .errors import PolicyError

        raise PolicyError(f"{policy.spec} reads the batch as classifier-free-guidance pairs [uncond; cond], and this "
                          "sampling loop runs without guidance (its batch items are separate samples); run it in a "
                          "pipeline with batched CFG, or use cfg=0")
    kw = dict(kw)
    latent_name = bundle.latent_input
    scheduler = bundle.scheduler()
    scheduler.set_timesteps(steps)
    is_flux = bundle.class_name == "FluxTransformer2DModel"
    timesteps = scheduler.timesteps
    start_trajectory(denoiser, [model_timestep(t, kw["timestep"], is_flux) for t in timesteps])
    if progress:
        from tqdm import tqdm

        timesteps = tqdm(timesteps, desc="sampling", leave=False)
    step_seconds = []
    start = time.perf_counter()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            t0 = time.perf_counter()
            ref_t = kw["timestep"]
            tt = _scaled(t, is_flux).to(ref_t.device, ref_t.dtype)
            tt = tt.expand(ref_t.shape) if ref_t.dim() else tt.reshape(())
            out = denoiser(**{latent_name: x, **kw, "timestep": tt}, return_dict=False)[0]
            out = scheduler_output(out, x)
            x = scheduler.step(out, t, x, return_dict=False)[0]
            step_seconds.append(time.perf_counter() - t0)
            if callback is not None:
                callback(i, x)
    return Trajectory(x, time.perf_counter() - start, step_seconds)


def _scaled(t: torch.Tensor, is_flux: bool) -> torch.Tensor:
    """FLUX takes the scheduler's timestep over 1000 (as its pipeline passes it)."""
    return t / 1000.0 if is_flux else t


def model_timestep(t: torch.Tensor, ref_t: torch.Tensor, is_flux: bool) -> float:
    """The value the denoiser receives as its timestep at the scheduler's timestep ``t`` (read
    on the scheduler's device, the host, before the loop)."""
    return float(_scaled(t, is_flux).to(ref_t.dtype))


def start_trajectory(denoiser, timesteps: list[float]) -> None:
    """Start a cachec runtime's trajectory with the loop's timesteps, so that a policy gated on a
    timestep window (PAB, FasterCache) looks each step's up instead of reading it from the device
    every step; any other denoiser is left alone."""
    from .runtime import CacheRuntime

    if isinstance(denoiser, CacheRuntime):
        denoiser.reset(len(timesteps), timesteps=timesteps)


def scheduler_output(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The part of the model output the scheduler steps with (a learned-sigma DiT-XL/2 returns
    the noise prediction and the variance channels; the scheduler takes the former)."""
    if x.dim() == 4 and out.shape[1] == 2 * x.shape[1]:
        return out[:, : x.shape[1]]
    return out
