"""Hook-based reference implementations of cachec's cache policies (shares no code with cachec).

:class:`HookedReference` wraps an *original* diffusers denoiser and reproduces the numerics of a
cache policy with ``register_forward_hook`` / ``register_forward_pre_hook`` only. The full
forward is computed on every step (the reference is about numbers, not speed); what a cached step
would reuse is substituted through the hooks' return values, so every module downstream of a
substitution sees exactly what cachec's cached variant feeds it.

Definitions (step ``s = 0..T-1`` within a trajectory; ``forced(s)`` = ``s == 0`` or
``s < warmup`` or ``s >= T - final``):

* **blocks** — the block list in execution order: ``transformer_blocks`` (DiT, PixArt, SD3),
  FLUX ``transformer_blocks`` then ``single_transformer_blocks``, Wan ``blocks``, U-Net
  ``down_blocks``, ``mid_block``, ``up_blocks``.
* **streams** of a block — ``img`` (its ``hidden_states`` input / the hidden-states output) and,
  for FLUX/SD3 joint blocks, ``txt`` (``encoder_hidden_states``; those blocks return
  ``(encoder_hidden_states, hidden_states)``). A U-Net down block returns
  ``(hidden_states, skip_features)``; its ``img`` output is ``hidden_states``.
* ``none`` — every step full.
* ``fora:N`` — full iff forced or ``s - last_full >= N``. Full steps record the output of every
  attention module (``attn``/``attn1``/``attn2``, both tensors of a joint attention) and
  feed-forward module (``ff``/``ff_context``/``ffn``) of every transformer block (the U-Net's are
  those inside ``attentions.*.transformer_blocks.*``); for a ``FluxSingleTransformerBlock`` the
  unit is its ``proj_out`` output. Reuse steps return the recorded outputs from those modules;
  norms, modulation, gates and residual adds run on the current inputs.
* ``delta:N,blocks=a-b`` — the fora schedule; full steps record, per stream,
  ``Δ = output(block b) − input(block a)``; reuse steps replace block b's output by
  ``input(block a, current) + Δ``.
* ``static:LETTERS`` — full iff forced or the step's letter is ``F``; full steps record
  ``R = output(last block) − input(block 0)`` (img stream); reuse steps replace the last block's
  img output by ``input(block 0, current) + R``.
* ``fbcache:t`` — ``r1 = output(block 0) − input(block 0)`` on the img stream (for a block that
  changes resolution, the U-Net's down block 0, "output" is its first output with the input's
  shape: the first skip feature); ``rel = mean|r1 − r1_ref| / mean|r1_ref|``; reuse iff not forced
  and ``rel < t``; full steps record ``r1_ref = r1`` and ``R = output(last) − output(block 0)``;
  reuse steps replace the last block's img output by ``output(block 0, current) + R``.
* ``teacache:t`` (``coeffs`` must be empty: identity rescale; default ``final=1``) — ``m`` is the
  (modulated) ``hidden_states`` input of block 0's first attention module; every step
  ``rel = mean|m − m_prev| / mean|m_prev|`` then ``m_prev = m``; forced steps are full and reset
  ``acc = 0``; otherwise ``acc += rel`` and the step is reused iff ``acc < t`` (else full,
  ``acc = 0``). Full steps record ``R`` as for ``static`` and reuse steps apply it the same way.

After a trajectory, :attr:`HookedReference.full_steps` lists the full steps and
:attr:`HookedReference.signals` the probe value per step (``None`` for non-dynamic policies).
"""

from __future__ import annotations

import contextlib
import inspect

import torch

ATTN_FF_NAMES = ("attn", "attn1", "attn2", "ff", "ff_context", "ffn")
TRANSFORMER_BLOCK_CLASSES = ("BasicTransformerBlock", "JointTransformerBlock", "FluxTransformerBlock",
                             "WanTransformerBlock")
DEFAULTS = {
    "none": ({}, None),
    "fora": ({"N": 3}, "N"),
    "delta": ({"N": 2, "blocks": ""}, "N"),
    "static": ({"schedule": "F"}, "schedule"),
    "fbcache": ({"t": 0.08}, "t"),
    "teacache": ({"t": 0.25, "coeffs": ""}, "t"),
}
TYPES = {"N": int, "t": float, "warmup": int, "final": int, "blocks": str, "schedule": str, "coeffs": str}


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"fora:2,warmup=1"`` -> ``("fora", {"N": 2, "warmup": 1, "final": 0})``."""
    name, _, args = spec.partition(":")
    defaults, main = DEFAULTS[name]
    params = dict(defaults, warmup=0, final=1 if name == "teacache" else 0)
    for i, item in enumerate(a for a in args.split(",") if a.strip()):
        key, eq, value = item.partition("=")
        if not eq:
            assert i == 0 and main is not None, spec
            key, value = main, item
        key = key.strip()
        assert key in params, f"{spec}: unknown key {key}"
        params[key] = TYPES[key](value.strip())
    if name == "teacache":
        assert not params["coeffs"], "the reference implements the identity rescale only"
    return name, params


def block_list(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's blocks in execution order."""
    cls = type(model).__name__
    if cls == "FluxTransformer2DModel":
        return list(model.transformer_blocks) + list(model.single_transformer_blocks)
    if cls == "WanTransformer3DModel":
        return list(model.blocks)
    if cls == "UNet2DConditionModel":
        return list(model.down_blocks) + [model.mid_block] + list(model.up_blocks)
    return list(model.transformer_blocks)


def cached_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose outputs ``fora`` records and reuses."""
    units = []
    for _, mod in model.named_modules():
        cls = type(mod).__name__
        if cls == "FluxSingleTransformerBlock":
            units.append(mod.proj_out)
        elif cls in TRANSFORMER_BLOCK_CLASSES:
            units.extend(getattr(mod, n) for n in ATTN_FF_NAMES if getattr(mod, n, None) is not None)
    return units


def first_attention(block: torch.nn.Module) -> torch.nn.Module:
    """Block 0's first attention module (inside the first transformer block for a U-Net block)."""
    for _, mod in block.named_modules():
        if type(mod).__name__ in TRANSFORMER_BLOCK_CLASSES:
            return mod.attn1 if getattr(mod, "attn1", None) is not None else mod.attn
    raise ValueError("block 0 has no attention module")


def _hidden_arg(args, kwargs) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


JOINT_BLOCK_CLASSES = ("FluxTransformerBlock", "FluxSingleTransformerBlock", "JointTransformerBlock")


def in_streams(block, args, kwargs) -> dict[str, torch.Tensor]:
    """Stream inputs of a block call: ``img`` always, ``txt`` for blocks that return it too."""
    streams = {"img": _hidden_arg(args, kwargs)}
    if type(block).__name__ in JOINT_BLOCK_CLASSES:  # they return (encoder_hidden_states, hidden_states)
        streams["txt"] = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
    return streams


def out_streams(out) -> dict[str, torch.Tensor]:
    if torch.is_tensor(out):
        return {"img": out}
    if torch.is_tensor(out[1]):  # FLUX / SD3: (encoder_hidden_states, hidden_states)
        return {"txt": out[0], "img": out[1]} if out[0] is not None else {"img": out[1]}
    return {"img": out[0]}  # U-Net down block: (hidden_states, skip features)


def with_streams(out, new: dict[str, torch.Tensor]):
    if torch.is_tensor(out):
        return new["img"]
    if torch.is_tensor(out[1]):
        return (new.get("txt", out[0]), new["img"])
    return (new["img"], out[1])


def residual_output(inp: torch.Tensor, out) -> torch.Tensor:
    """A block's img output with the shape of its img input (U-Net down block 0: first skip feature)."""
    candidates = [out_streams(out)["img"]]
    if not torch.is_tensor(out) and not torch.is_tensor(out[1]):
        candidates += list(out[1])
    for c in candidates:
        if c.shape == inp.shape:
            return c
    raise ValueError("block 0 has no output with its input's shape")


def rel_l1(cur: torch.Tensor, ref: torch.Tensor) -> float:
    return float((cur - ref).abs().mean() / ref.abs().mean())


class HookOwner:
    """Removes its forward hooks on ``close()`` or at the end of a ``with`` block."""

    handles: list

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StepRuleReference(HookOwner):
    """A hook reference whose step is full or reused as ``is_full(step)`` says (set before the model
    runs, so the hooks read ``self.full``); it records the schedule and the last full step."""

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        self.full = self.is_full(self.step)
        if self.full:
            self.last_full = self.step
        self.schedule += "F" if self.full else "R"
        out = self.model(**kwargs, return_dict=False)[0]
        self.step += 1
        return out


class HookedReference(HookOwner):
    """A cache policy on the original model, by hooks. Call like the model (returns the output tensor)."""

    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.model = model
        self.name, self.p = parse_spec(spec)
        self.T = num_steps
        self.blocks = block_list(model)
        self.handles = []
        self.reset()
        hook = self.handles.append
        last = self.blocks[-1]
        if self.name == "fora":
            for unit in cached_units(model):
                hook(unit.register_forward_hook(self._fora_hook))
        elif self.name == "delta":
            a, b = (int(x) for x in self.p["blocks"].split("-"))
            hook(self.blocks[a].register_forward_pre_hook(self._delta_in, with_kwargs=True))
            hook(self.blocks[b].register_forward_hook(self._delta_out))
        elif self.name in ("static", "teacache"):
            hook(self.blocks[0].register_forward_pre_hook(self._stack_in, with_kwargs=True))
            hook(last.register_forward_hook(self._stack_out))
            if self.name == "teacache":
                attn = first_attention(self.blocks[0])
                hook(attn.register_forward_pre_hook(self._teacache_probe, with_kwargs=True))
        elif self.name == "fbcache":
            hook(self.blocks[0].register_forward_hook(self._fb_first, with_kwargs=True))
            hook(last.register_forward_hook(self._fb_last))
        else:
            assert self.name == "none", self.name

    # -- trajectory ------------------------------------------------------------------------------
    def reset(self) -> None:
        self.step = 0
        self.schedule = ""
        self.signals: list[float | None] = []
        self.last_full: int | None = None
        self.full: bool | None = None
        self.cache: dict = {}
        self.acc = 0.0
        self.m_prev = None
        self.r1_ref = None

    @property
    def full_steps(self) -> list[int]:
        return [i for i, c in enumerate(self.schedule) if c == "F"]

    def forced(self, s: int) -> bool:
        return s == 0 or self.last_full is None or s < self.p["warmup"] or s >= self.T - self.p["final"]

    def _decide(self, full: bool) -> None:
        self.full = full
        if full:
            self.last_full = self.step

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        s = self.step
        self.full, self.signal, self.cur = None, None, {}
        if self.name == "none":
            self._decide(True)
        elif self.name in ("fora", "delta"):
            self._decide(self.forced(s) or s - self.last_full >= self.p["N"])
        elif self.name == "static":
            self._decide(self.forced(s) or self.p["schedule"][s] == "F")
        kwargs = dict(kwargs, return_dict=False)
        out = self.model(**kwargs)[0]
        assert self.full is not None, "the policy's probe did not run"
        self.schedule += "F" if self.full else "R"
        self.signals.append(self.signal)
        self.step += 1
        return out

    # -- fora --------------------------------------------------------------------------------------
    def _fora_hook(self, module, args, out):
        if self.full:
            self.cache[module] = tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
            return None
        return self.cache[module]

    # -- delta -------------------------------------------------------------------------------------
    def _delta_in(self, module, args, kwargs):
        self.cur["in_a"] = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}

    def _delta_out(self, module, args, out):
        base, outs = self.cur["in_a"], out_streams(out)
        if self.full:
            self.cache["delta"] = {k: outs[k] - base[k] for k in outs if k in base}
            return None
        return with_streams(out, {k: base[k] + d for k, d in self.cache["delta"].items()})

    # -- static / teacache: the whole stack's residual ------------------------------------------
    def _stack_in(self, module, args, kwargs):
        self.cur["in0"] = _hidden_arg(args, kwargs).clone()

    def _stack_out(self, module, args, out):
        img = out_streams(out)["img"]
        if self.full:
            self.cache["R"] = img - self.cur["in0"]
            return None
        return with_streams(out, dict(out_streams(out), img=self.cur["in0"] + self.cache["R"]))

    def _teacache_probe(self, module, args, kwargs):
        if self.full is not None:  # only the first call of this attention in a step is the probe
            return
        m = _hidden_arg(args, kwargs).clone()
        rel = rel_l1(m, self.m_prev) if self.m_prev is not None else None
        self.m_prev = m
        self.signal = rel
        if self.forced(self.step):
            self.acc = 0.0
            self._decide(True)
            return
        self.acc += rel
        if self.acc < self.p["t"]:
            self._decide(False)
        else:
            self.acc = 0.0
            self._decide(True)

    # -- fbcache -----------------------------------------------------------------------------------
    def _fb_first(self, module, args, kwargs, out):
        inp = _hidden_arg(args, kwargs)
        o1 = residual_output(inp, out)
        r1 = o1 - inp
        self.cur["o1"] = o1.clone()
        rel = rel_l1(r1, self.r1_ref) if self.r1_ref is not None else None
        self.signal = rel
        full = self.forced(self.step) or not (rel < self.p["t"])
        self._decide(full)
        if full:
            self.r1_ref = r1.clone()

    def _fb_last(self, module, args, out):
        img = out_streams(out)["img"]
        if self.full:
            self.cache["R"] = img - self.cur["o1"]
            return None
        return with_streams(out, dict(out_streams(out), img=self.cur["o1"] + self.cache["R"]))


class ReferenceDenoiser(torch.nn.Module):
    """The hook reference as a pipeline denoiser, with one policy state per ``cache_context`` branch."""

    def __init__(self, model, spec: str, steps: int):
        super().__init__()
        self.model = model
        self.ref = HookedReference(model, spec, steps)
        self.fixed = {"model", "name", "p", "T", "blocks", "handles"}  # the rest is per-trajectory state
        self.states: dict[str, dict] = {}
        self.branch = "default"
        self.signature = [p for p in inspect.signature(model.forward).parameters if p != "kwargs"]
        self.config, self.dtype, self.device = model.config, model.dtype, model.device

    @contextlib.contextmanager
    def cache_context(self, name, **_):
        self.branch = name
        try:
            yield
        finally:
            self.branch = "default"

    def forward(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        kwargs.update(zip(self.signature, args, strict=False))
        state = self.states.get(self.branch)
        if state is None:
            self.ref.reset()
        else:
            vars(self.ref).update(state)
        out = self.ref(**kwargs)
        self.states[self.branch] = {k: v for k, v in vars(self.ref).items() if k not in self.fixed}
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
