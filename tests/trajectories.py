"""The trajectory driver the policy tests share: small models, their inputs, a fixed update rule.

Every policy test drives a whole trajectory the same way: decreasing timesteps (999 -> 0, or
FLUX's sigma-like 1 -> 0.05), the latent updated after every call by ``x <- x - out / T``, all
other inputs fixed. The same driver runs the plain model, a hook reference and a cachec runtime,
so their outputs are comparable step by step.
"""

from __future__ import annotations

import functools

import torch
from small_models import TEXT_TOKENS, make

from cachec.models import example_inputs, resolve


def latent_name(short: str) -> str:
    return "sample" if short == "unet" else "hidden_states"


class Driver:
    """Trajectories of ``steps`` calls at batch ``batch`` (models and plain runs cached per short name)."""

    def __init__(self, steps: int, batch: int = 2):
        self.steps, self.batch = steps, batch
        self.model_and_inputs = functools.cache(self._model_and_inputs)
        self.plain = functools.cache(self._plain)

    def _model_and_inputs(self, short: str):
        model = make(short)
        return model, example_inputs(model, self.batch, 0, text_tokens=TEXT_TOKENS)

    def timesteps(self, short: str, kw: dict) -> list[torch.Tensor]:
        """Decreasing timesteps with the dtype and shape ``example_inputs`` gives (0-d for the U-Net)."""
        n = self.steps
        vals = torch.linspace(1.0, 0.05, n) if short == "flux" else torch.linspace(999, 0, n).round()
        return [torch.full_like(kw["timestep"], float(v)) for v in vals]

    def trajectory(self, call, short: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``call(**kwargs) -> output`` over a whole trajectory: (final latent, per-step outputs)."""
        _, kw0 = self.model_and_inputs(short)
        name = latent_name(short)
        x, outs = kw0[name].clone(), []
        for t in self.timesteps(short, kw0):
            out = call(**dict(kw0, **{name: x, "timestep": t}))
            assert out.shape == x.shape
            outs.append(out.clone())
            x = x - out / self.steps
        return x, outs

    def run(self, rt, short: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A cachec runtime over a fresh trajectory (it must count exactly ``steps`` calls)."""
        rt.reset()
        out = self.trajectory(lambda **kw: rt(**kw)[0], short)
        assert rt.stats.steps == self.steps
        return out

    def _plain(self, short: str):
        model, _ = self.model_and_inputs(short)
        with torch.no_grad():
            return self.trajectory(lambda **kw: model(**kw, return_dict=False)[0], short)


class TinyDitDriver(Driver):
    """The driver on the bundled trained ``builtin:tiny-dit``, its two batch items of different
    classes (1 and 6); the model's short name is ignored (one model)."""

    def _model_and_inputs(self, short: str):
        model = resolve("builtin:tiny-dit").model
        kw = example_inputs(model, self.batch, 0)
        kw["class_labels"] = torch.tensor([1, 6])
        return model, kw
