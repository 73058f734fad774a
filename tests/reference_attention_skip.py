"""Hook references for DeepCache and T-GATE, written from the papers' reference code (shares no code
with cachec; PAB is compared with diffusers' own hook instead).

* :class:`DeepCacheReference` — after ``DeepCacheSDHelper`` (horseee/DeepCache, ``extension/
  deepcache.py``): every module of the U-Net's *deep* part has its ``forward`` wrapped; on a full
  step (``step % N == 0``) it runs and records its output, on a cached step it returns the recorded
  output without running. The deep part of skip branch ``k``: the down layers (a resnet with its
  attention, or a downsampler) that produce skip features ``s_{k+1}…``, the mid block, and the up
  layers (resnet + attention, plus the block's upsampler after its last layer) that consume skip
  features ``s_{k+1}…`` (``s_0`` is ``conv_in``'s output; up layers consume them in reverse).
  A cached step therefore runs ``conv_in``, the down layers up to ``s_k``, and the up layers from
  the one concatenating ``s_k`` on, reading the recorded output of the deep module before it.
* :class:`TGateReference` — after ``tgate_scheduler`` and ``tgate_processor`` (HaozheLiu-ST/T-GATE,
  ``tgate_utils.py``, ``keep_shape=True``): every ``Attention`` module's forward is wrapped; the
  scheduler says per step whether self-/cross-attention compute and cache, or reuse the cache.
"""

from __future__ import annotations

import torch


class _Wrapped:
    """Replaces ``module.forward`` by ``fn(original_forward, *args, **kwargs)``; restored by ``close``."""

    def __init__(self):
        self.originals: list[tuple[torch.nn.Module, object]] = []

    def wrap(self, module: torch.nn.Module, fn) -> None:
        original = module.forward
        self.originals.append((module, original))
        module.forward = lambda *a, **kw: fn(module, original, *a, **kw)

    def close(self) -> None:
        for module, original in self.originals:
            module.forward = original
        self.originals.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _layers(block, samplers: str) -> tuple[list[list[torch.nn.Module]], list[torch.nn.Module]]:
    """A block's layers (a resnet with its attention, if any) and its down/upsamplers."""
    attns = list(getattr(block, "attentions", None) or [])
    layers = [[res] + ([attns[j]] if attns else []) for j, res in enumerate(block.resnets)]
    extra = list(getattr(block, samplers, None) or [])
    return layers, extra


class DeepCacheReference(_Wrapped):
    """DeepCache (uniform interval ``N``, skip branch ``k``) on an original ``UNet2DConditionModel``."""

    def __init__(self, unet, N: int, k: int):
        super().__init__()
        self.unet, self.N = unet, N
        self.step, self.schedule, self.cache = 0, "", {}
        down = []  # modules producing s_1, s_2, ...
        for block in unet.down_blocks:
            layers, samplers = _layers(block, "downsamplers")
            down += layers + ([samplers] if samplers else [])
        up = []  # modules of the up layers, in order; up[i] consumes s_{L-1-i}
        for block in unet.up_blocks:
            layers, samplers = _layers(block, "upsamplers")
            layers[-1] += samplers
            up += layers
        assert len(up) == len(down) + 1, "every skip feature is consumed once"
        L = len(up)
        deep = [m for layer in down[k:] for m in layer] + [unet.mid_block] + \
            [m for layer in up[: L - 1 - k] for m in layer]
        for m in deep:
            self.wrap(m, self._deep)

    def _deep(self, module, original, *args, **kwargs):
        if self.full:
            self.cache[module] = out = original(*args, **kwargs)
            return out
        return self.cache[module]

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        self.full = self.step % self.N == 0
        self.schedule += "F" if self.full else "R"
        self.step += 1
        return self.unet(**kwargs, return_dict=False)[0]


def tgate_schedule(step: int, gate: int, sa_interval: int, ca_interval: int = 1, warm_up: int = 2):
    """``((ca_cache, ca_reuse), (sa_cache, sa_reuse))`` of a step, as ``tgate_scheduler`` sets them."""
    if step < gate - 1:
        if step < warm_up:
            sa = (False, False)
        elif step == warm_up or step % sa_interval == 0:
            sa = (True, False)
        else:
            sa = (False, True)
        return (False, False), sa
    if step == gate - 1:
        return (True, False), (True, False)
    return (False, True), ((True, False) if step % ca_interval == 0 else (False, True))


class TGateReference(_Wrapped):
    """T-GATE on an original model: every ``Attention`` module computes (caching when told to) or
    returns its cached output, as ``tgate_processor`` does."""

    def __init__(self, model, gate: int, sa_interval: int, ca_interval: int = 1, warm_up: int = 2):
        super().__init__()
        self.model, self.args = model, (gate, sa_interval, ca_interval, warm_up)
        self.step, self.schedule, self.cache = 0, "", {}
        for m in model.modules():
            if type(m).__name__ == "Attention":
                self.wrap(m, self._attention)

    def _attention(self, module, original, *args, **kwargs):
        cache, reuse = self.ca if module.is_cross_attention else self.sa
        if reuse and module in self.cache:
            return self.cache[module]
        out = original(*args, **kwargs)
        if cache:
            self.cache[module] = out
        return out

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        self.ca, self.sa = tgate_schedule(self.step, *self.args)
        self.schedule += "R" if (self.ca[1] or self.sa[1]) else "F"
        self.step += 1
        return self.model(**kwargs, return_dict=False)[0]


class TimestepFeed:
    """Calls a model that carries one of diffusers' attention hooks (PAB, FasterCache): those read
    the step's timestep from a callback, so the call sets it from its ``timestep`` input first."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.t: int | None = None

    def timestep(self) -> int | None:
        return self.t

    @torch.no_grad()
    def __call__(self, **kw):
        self.t = int(kw["timestep"].reshape(-1)[0])
        return self.model(**kw, return_dict=False)[0]
