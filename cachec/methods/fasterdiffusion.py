"""``fasterdiffusion:N`` — FasterDiffusion's encoder propagation (Li et al., NeurIPS 2024, "Faster
Diffusion: Rethinking the Role of the Encoder for Diffusion Model Inference"): a U-Net's encoder
features change little between steps, its decoder's a lot. A *key* step runs the whole U-Net and
caches what the decoder reads from the encoder — every skip feature and the mid block's output; a
*non-key* step skips the encoder (``conv_in``, the down blocks, the mid block) and runs only the
time embedding of its own timestep and the decoder (the up blocks and the output layers) on the
cached features.

Key steps, as the reference ``register_faster_forward`` (hutaiHang/Faster-Diffusion) picks them:

* ``schedule=paper`` (default, the reference's ``mod='50ls'``): steps 0, 1, 2, 3, 5, 10, 15, 25, 35
  of 50; for another length ``n`` each is scaled to ``int(k·n/50)`` (reading chosen, see
  docs/methods.md);
* ``schedule=uniform``: ``step % N == 0`` (the reference's integer ``mod``).

Implemented: the sequential form (one decoder call per step, as a pipeline calls the denoiser).
The reference also batches the decoders of a key step's non-key steps into one call (the *parallel*
form); a non-key step's decoder reads only the cached features, its own timestep embedding and the
conditioning, so that batching changes the speed, not the predictions — it is not implemented, because
the runtime serves one step per call. Prior noise injection (``z_t ← z_t + α·z_T`` for ``t < τ``) changes
the latent the sampler integrates, not the denoiser's prediction, so a denoiser replacement cannot
express it; see docs/methods.md. ``fasterdiffusion:1`` (every step a key step) is ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Controller, Method, Params, choice, param
from .skip_branch import encoder_features, skip_branch

PAPER_KEYS_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)  # the reference's '50ls' key steps of a 50-step DDIM


@dataclass(frozen=True)
class FasterDiffusionParams(Params):
    N: int = param(5, "schedule=uniform: a key step every N steps (1: every step, = none)", 1, 1000)
    schedule: str = param("paper", "paper (key steps 0,1,2,3,5,10,15,25,35 of 50, scaled to the length) | uniform")


def paper_key_steps(num_steps: int) -> list[int]:
    """The reference's 50-step key steps, each scaled to ``int(k * num_steps / 50)`` (exact at 50)."""
    return sorted({k * num_steps // 50 for k in PAPER_KEYS_50})


class FasterDiffusionController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.keys = None
        if policy.params.schedule == "paper":
            if num_steps is None:
                raise PolicyError(f"{policy.spec}: schedule=paper scales the key steps to the trajectory length, "
                                  "which is unknown here; pass num_steps, or use schedule=uniform")
            self.keys = set(paper_key_steps(num_steps))

    def rule(self, step, signal):
        if self.keys is not None:
            return step in self.keys
        return step % self.policy.params.N == 0


@register
class FasterDiffusionMethod(Method):
    name = "fasterdiffusion"
    doc = ("FasterDiffusion (U-Net): key steps cache the encoder's skip features and mid output; other steps "
           "run only the decoder on them, with their own timestep")
    granularity = "block"
    main = "N"
    Params = FasterDiffusionParams
    controller_cls = FasterDiffusionController

    def validate(self) -> None:
        choice(self.name, "schedule", self.params.schedule, ("paper", "uniform"))

    def plan(self, planner) -> Plan:
        return skip_branch(planner, encoder_features(planner, self.spec), "fasterdiffusion")
