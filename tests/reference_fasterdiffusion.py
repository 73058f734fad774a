"""Hook reference for FasterDiffusion's encoder propagation, written from the paper and its reference
code (hutaiHang/Faster-Diffusion, ``utils_sd.py``: ``register_faster_forward``); shares no code with
cachec.

The reference forward, on a key step, runs ``conv_in``, the down blocks and the mid block and saves
``down_block_res_samples`` (``skip_feature``) and the mid block's output (``toup_feature``); on a
non-key step it skips them and runs the up blocks on the saved features, with the time embedding
of the step's own timestep. Here the encoder modules (``conv_in``, every down block, the mid block)
have their ``forward`` wrapped: on a key step they run and record their outputs, on a non-key step
they return the recorded outputs without running — the decoder then reads exactly the saved
skip features and mid output, and the time embedding runs as usual.

Key steps: ``'50ls'`` (steps 0, 1, 2, 3, 5, 10, 15, 25, 35 of 50) or an integer ``mod``
(``step % mod == 0``), as the reference's ``cond``.
"""

from __future__ import annotations

import torch

KEYS_50LS = [0, 1, 2, 3, 5, 10, 15, 25, 35]


class FasterDiffusionReference:
    """Encoder propagation on an original ``UNet2DConditionModel``; ``keys``: the key step indices."""

    def __init__(self, unet, keys):
        self.unet, self.keys = unet, set(keys)
        self.step, self.schedule, self.saved = 0, "", {}
        encoder = [unet.conv_in, *unet.down_blocks, unet.mid_block]
        self.originals = [(m, m.forward) for m in encoder]
        for module, original in self.originals:
            module.forward = self._propagating(module, original)

    def _propagating(self, module, original):
        def forward(*args, **kwargs):
            if self.key:
                self.saved[module] = original(*args, **kwargs)
            return self.saved[module]
        return forward

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        self.key = self.step in self.keys
        self.schedule += "F" if self.key else "R"
        self.step += 1
        return self.unet(**kwargs, return_dict=False)[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for module, original in self.originals:
            module.forward = original
