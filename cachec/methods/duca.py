"""``duca:N,R`` — DuCa (Zou et al., 2024): each cycle is a full step, then conservative (partial,
random tokens) and aggressive (reuse every module) steps in turn; ``cycle=`` ablates the
alternation (Table VI). Rules, selection and plan: :mod:`cachec.methods.tokenwise`."""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import param
from .tokenwise import TokenMethod, TokenParams


@dataclass(frozen=True)
class DucaParams(TokenParams):
    R: float = param(0.9, "fraction of tokens CACHED in a partial step (0.9 computes 10 %)", 0.0, 1.0)
    select: str = param("random", "token rule: random | knorm | vnorm (key/value norm at the last full step) | attn "
                                  "(ToCa's attention score; materialises the attention map, no flash attention)")
    cycle: str = param("alternate", "cached steps: alternate (DuCa) | conservative | aggressive (Table VI ablation)")


@register
class DucaMethod(TokenMethod):
    name = "duca"
    doc = ("DuCa: each cycle is a full step, then conservative (partial, random tokens) and aggressive "
           "(reuse every module) steps in turn")
    Params = DucaParams
    rank = 14
