"""Hook-based reference for HyCa (``hyca:N,solvers=...,calib=FILE``), independent of ``cachec``.

Written from docs/methods.md: HyCa is TaylorSeer (module streams, full every N after the warm-up)
whose cached-step forecast is taken per channel: channel ``c`` of a stream uses the Taylor series
truncated at its own order ``o(c)``, ``F̂[c] = Σ_{i ≤ min(o(c), present)} D_i[c]·x^i/i!``. The
orders come from a rule ``order_of(channel_count) -> list of orders`` the test also writes into
the calibration file (every stream of the bundled model has the same width), so the reference
needs no stream names.
"""

from __future__ import annotations

import torch
from reference_predictive import PredictiveReference, TaylorStream


class PerChannelTaylorStream(TaylorStream):
    """TaylorSeer's state of the highest order; the forecast masks each term ``D_i`` to the channels
    (last dimension) whose order is at least ``i``."""

    def __init__(self, order: int, order_of):
        super().__init__(order)
        self.order_of = order_of

    def predict(self, s: int) -> torch.Tensor:
        x = s - self.last
        orders = torch.tensor(self.order_of(self.D[0].shape[-1]))
        out = self.D[0].clone()
        for i in range(1, len(self.D)):
            out = out + self.D[i] * self.basis(x, i) * (orders >= i).to(out.dtype)
        return out


class HyCaReference(PredictiveReference):
    """``taylorseer:N,O=max,warmup=W`` on the original model with per-channel truncation."""

    def __init__(self, model, N: int, order: int, warmup: int, num_steps: int, order_of):
        super().__init__(model, f"taylorseer:{N},O={order},warmup={warmup}", num_steps)
        self.new_stream = lambda: PerChannelTaylorStream(order, order_of)
