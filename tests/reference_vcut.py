"""Hook reference for VCUT, written from the paper's description and the survey's eq. 25; shares no
code with cachec.

Every diffusers ``Attention`` module that is a cross-attention (``is_cross_attention``) has its
``forward`` wrapped: at steps ``< s0`` (the semantic binding stage) it runs; at step ``s0 − 1`` its
output is recorded — with ``cfg``, for a ``[uncond; cond]`` batch, as ``M = ½(L_cond + L_uncond)`` for
both halves (eq. 25) — and from step ``s0`` on (the quality refinement stage) it returns the record
without running.
"""

from __future__ import annotations

import torch


class VcutReference:
    def __init__(self, model, s0: int, cfg: bool):
        self.model, self.s0, self.cfg = model, s0, cfg
        self.step, self.schedule, self.record = 0, "", {}
        self.originals = [(m, m.forward) for m in model.modules()
                          if type(m).__name__ == "Attention" and m.is_cross_attention]
        assert self.originals, "the model has cross-attention"
        for module, original in self.originals:
            module.forward = self._cut(module, original)

    def _cut(self, module, original):
        def forward(*args, **kwargs):
            if self.step >= self.s0:
                return self.record[module]
            out = original(*args, **kwargs)
            if self.step == self.s0 - 1:
                if self.cfg:
                    uncond, cond = out.chunk(2)
                    mean = (cond + uncond) * 0.5
                    out_rec = torch.cat([mean, mean])
                else:
                    out_rec = out
                self.record[module] = out_rec
            return out
        return forward

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        self.schedule += "F" if self.step < self.s0 else "R"
        out = self.model(**kwargs, return_dict=False)[0]
        self.step += 1
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for module, original in self.originals:
            module.forward = original
