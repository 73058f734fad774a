"""``toca:N,R`` — ToCa (Zou et al., 2025): partial steps compute a scored subset of the tokens of
every MLP / cross-attention (``R`` = share cached) and reuse self-attention; full steps follow
ToCa's schedule. Rules, selection and plan: :mod:`cachec.methods.tokenwise`."""

from __future__ import annotations

from . import register
from .tokenwise import TokenMethod, TokenParams


@register
class TocaMethod(TokenMethod):
    name = "toca"
    doc = ("ToCa: partial steps compute a scored token subset of MLP / cross-attn (R = share cached), "
           "reuse self-attn; full steps per schedule")
    Params = TokenParams
    rank = 13
