"""SpeCa's verification error, as a weightless segment graph.

A verified step computes a few streams exactly (on the forecast's input) and forecasts them too;
the controller reads ``e = mean over the streams of mean(|ŷ − y| / (|y| + 1e−10))`` (SpeCa's
relative error, ŷ the forecast, y the computed value) and decides whether the draft holds.
One scalar comes back: one device→host read on each verified step.
"""

from __future__ import annotations

import torch

EPS = 1e-10


def relative_error(pairs: int):
    """``(ŷ_0, y_0, ŷ_1, y_1, …) -> (e,)`` over ``pairs`` streams."""
    def fn(*values: torch.Tensor) -> tuple[torch.Tensor]:
        errors = [((g - y).abs() / (y.abs() + EPS)).float().mean() for g, y in zip(values[::2], values[1::2], strict=True)]
        return (torch.stack(errors).mean(),)

    assert pairs > 0
    return fn
