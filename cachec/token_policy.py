"""Token-wise caching policies: ToCa (``toca:N,R``) and DuCa (``duca:N,R``).

A step is one of three actions:

* ``F`` full — every region is computed on all tokens and its output cached;
* ``P`` partial (ToCa's step, DuCa's *conservative* step) — token-wise regions (MLPs,
  cross-attention; self-attention with ``attn=sdpa``) compute a selected subset of their tokens
  and scatter it into their caches; the other regions reuse their caches;
* ``R`` reuse (DuCa's *aggressive* step) — every attention/MLP region reuses its cache (the
  module-level reuse of FORA: adaLN, gates and the residual stream still run on the current step).

``R`` (the policy key) is, as in the papers, the fraction of tokens **cached** in a partial step:
``R=0.9`` computes 10 %. A region's fresh ratio is ``r = clamp((1 − R)·f_step·f_layer·f_module, 0, 1)``
with docs/methods.md's factors (``factors=``), and it computes ``k = floor(r·N)`` of its ``N`` tokens.

Schedules (``schedule=``):

* ``toca`` (DiT code of ToCa and DuCa) — with ``s = T−1−step`` counting down, a step is full when
  ``s % N_eff == 0`` (and step 0 is full), ``N_eff = round(N / (1.4 − 0.8·s/T))``, forced to 2 for
  ``s ∈ [0.2T, 0.4T)``. Needs the trajectory length; without it the interval schedule is used.
* ``interval`` (FORA, FLUX) — full every N steps.

DuCa's cached steps alternate: with ``p`` the position in the cycle (``s % N_eff`` for the toca
schedule, steps since the last full step for the interval one), odd ``p`` is conservative (partial)
and even ``p`` aggressive (reuse), as in DuCa's DiT code. ``cycle=conservative`` / ``aggressive``
make every cached step one kind (the ablation of DuCa's Table VI).

Choices where the sources leave room (documented and tested):

* DuCa's aggressive step reuses every *module* (as FORA); the DuCa DiT code instead skips the
  whole block stack. With module reuse, ``R=1`` is exactly FORA on the same modules.
* ToCa's attention factor ``f_attn = 0`` means "self-attention reused"; with ``attn=sdpa`` the
  self-attention is computed for the selected queries and gets factor 1.
* ``factors=auto`` takes ToCa's DiT factors for DiT, its PixArt factors for PixArt, and no factors
  (``uniform``: every token-wise region computes exactly ``1 − R``) for other classes.
* ``select=knorm`` is the default of ``toca`` because it keeps flash attention; ToCa's own rule is
  ``select=attn`` (needs the attention map, see :mod:`cachec.passes.attention_scores`). DuCa
  selects at random (``select=random``, seeded by ``seed=``).
"""

from __future__ import annotations

import logging
import math

from .errors import PolicyError
from .policy import Controller, Param, Policy

SELECT_RULES = ("random", "knorm", "vnorm", "attn")
ATTN_MODES = ("reuse", "sdpa")
FACTOR_SETS = ("auto", "uniform", "dit", "pixart")
SCHEDULES = ("toca", "interval")
CYCLES = ("alternate", "conservative", "aggressive")
# backends that run a token variant (its token count changes from step to step)
TOKEN_BACKENDS = ("eager",)
log = logging.getLogger("cachec")


def _choice(policy: str, key: str, value: str, accepted: tuple[str, ...], extra: str = "") -> None:
    if value not in accepted:
        raise PolicyError(f"{policy}: unknown {key}={value!r}; accepted: {', '.join(accepted)}{extra}")


def n_eff(N: int, s: int, T: int) -> int:
    """ToCa's effective interval at countdown step ``s`` of ``T`` (DiT code)."""
    if 0.2 * T <= s < 0.4 * T:
        return 2
    return max(1, round(N / (1 + 0.4 - 0.8 * s / T)))


def ratio_factors(factor_set: str, model_class: str, kind: str, layer: int, layers: int, step: int, T: int | None,
                  attn_mode: str) -> float:
    """``f_step · f_layer · f_module`` of docs/methods.md for one region (1 for ``uniform``)."""
    if factor_set == "auto":
        factor_set = {"DiTTransformer2DModel": "dit", "PixArtTransformer2DModel": "pixart"}.get(model_class, "uniform")
    if factor_set == "uniform":
        return 1.0
    s = (T - 1 - step) if T else 0
    x = s / T if T else 0.0
    lx = layer / (layers - 1) if layers > 1 else 0.0
    if factor_set == "dit":
        f_step, f_layer = 3 - 4 * x, 0.8 + 0.4 * lx
        f_module = {"mlp": 2.5, "cross_attn": 1.0}.get(kind, 1.0 if attn_mode == "sdpa" else 0.0)
    else:  # pixart
        f_step, f_layer = 1.9 - 1.8 * x, 1.6 - 1.2 * lx
        f_module = {"mlp": 1.6, "cross_attn": 0.6}.get(kind, 1.0 if attn_mode == "sdpa" else 0.0)
    return f_step * f_layer * f_module


class TokenController(Controller):
    """Decides each step's action (``F``, ``P`` or ``R``) and each region's fresh-token count."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.interval = policy.params["schedule"] == "interval" or not num_steps
        if policy.params["schedule"] == "toca" and not num_steps:
            log.info("%s: the trajectory length is unknown, so the schedule is full every N steps "
                     "(schedule=toca needs num_steps)", policy.name)

    def _position(self, step: int) -> int:
        """Position of ``step`` in its cycle (0 = a full step by the schedule)."""
        N, T = self.policy.params["N"], self.num_steps
        if self.interval:
            return step - self.last_full if step - self.last_full < N else 0
        s = T - 1 - step
        return s % n_eff(N, s, T)

    def rule(self, step, signal):
        return self._position(step) == 0

    def action(self, step: int) -> str:
        if self.decide(step):
            return "F"
        cycle = self.policy.params.get("cycle", "conservative")
        if cycle == "alternate":
            return "P" if self._position(step) % 2 == 1 else "R"
        return "P" if cycle == "conservative" else "R"

    def fresh_count(self, region: dict, step: int, model_class: str, layers: int) -> int:
        p = self.policy.params
        f = ratio_factors(p["factors"], model_class, region["kind"], region["block"], layers, step, self.num_steps,
                          p["attn"])
        r = min(1.0, max(0.0, (1.0 - p["R"]) * f))
        return int(math.floor(r * region["tokens"] + 1e-9))


class _TokenPolicy(Policy):
    granularity = "token"
    main = "N"
    positional = ("N", "R")
    controller_cls = TokenController
    default_select = "knorm"
    default_R = 0.93

    @classmethod
    def _params(cls) -> tuple[Param, ...]:
        return (
            Param("N", int, 3, "cycle length: one full step, then N-1 cached steps (see schedule=)", 1, 1000),
            Param("R", float, cls.default_R, "fraction of tokens CACHED in a partial step (0.9 computes 10 %)", 0.0, 1.0),
            Param("attn", str, "reuse", "self-attention in a partial step: reuse (ToCa/DuCa) | sdpa (selected queries, all keys)"),
            Param("select", str, cls.default_select,
                  "token rule: random | knorm | vnorm (key/value norm at the last full step) | attn "
                  "(ToCa's attention score; materialises the attention map, no flash attention)"),
            Param("seed", int, 0, "seed of select=random (reproducible per trajectory)", 0),
            Param("stale", float, 0.25, "score bonus per step since a token's refresh, over N (ToCa s3); not for random", 0.0, 100.0),
            Param("grid", int, 0, "ToCa s4: in each grid×grid cell the top token gets bonus·max (0: off)", 0, 64),
            Param("bonus", float, 0.6, "ToCa s4 bonus", 0.0, 100.0),
            Param("factors", str, "auto", "ratio factors: auto | uniform | dit | pixart (docs/methods.md)"),
            Param("schedule", str, "toca", "toca (N_eff, DiT code) | interval (full every N)"),
        )

    def validate(self):
        p = self.params
        _choice(self.name, "select", p["select"], SELECT_RULES)
        _choice(self.name, "attn", p["attn"], ATTN_MODES)
        _choice(self.name, "factors", p["factors"], FACTOR_SETS)
        _choice(self.name, "schedule", p["schedule"], SCHEDULES)
        if "cycle" in p:
            _choice(self.name, "cycle", p["cycle"], CYCLES)

    def plan_key(self, num_blocks: int) -> tuple:
        # the variants depend on which regions are token-wise and which score the full path taps
        return (self.name, self.params["attn"], "random" if self.params["select"] == "random" else self.params["select"])


class TocaPolicy(_TokenPolicy):
    name = "toca"
    doc = ("ToCa: partial steps compute a scored token subset of MLP / cross-attn (R = share cached), "
           "reuse self-attn; full steps per schedule")


class DucaPolicy(_TokenPolicy):
    name = "duca"
    doc = ("DuCa: each cycle is a full step, then conservative (partial, random tokens) and aggressive "
           "(reuse every module) steps in turn")
    default_select = "random"
    default_R = 0.9


TocaPolicy.own_params = TocaPolicy._params()
DucaPolicy.own_params = DucaPolicy._params() + (
    Param("cycle", str, "alternate", "cached steps: alternate (DuCa) | conservative | aggressive (Table VI ablation)"),
)
TOKEN_POLICIES = {p.name: p for p in (TocaPolicy, DucaPolicy)}
