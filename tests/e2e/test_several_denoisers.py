"""Several denoisers in one pipeline: a tiny Wan 2.2 (two experts, ``boundary_ratio``).

``transformer`` denoises the high-noise steps and ``transformer_2`` the rest. ``cachec.enable``
must wrap both, each with its own program, caches and step count, so a policy with a ``final``
step forces each expert's own last step, and a second trajectory never continues the first's
caches. The expected outputs come from an independent hook reference (``reference_hooks.py``)
on each expert, with one state per CFG branch and the expert's own trajectory length.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from reference_hooks import ReferenceDenoiser
from small_models import make

import cachec

STEPS = 6
POLICY = "fora:3,final=1"
EXPERTS = ("transformer", "transformer_2")




def _embeds(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _wan22():
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=make("wan"),
                                 transformer_2=make("wan", seed=1), boundary_ratio=0.75,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


KW = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), negative_prompt_embeds=_embeds(1, 5, 12, seed=5),
          guidance_scale=4.0, height=64, width=64, num_frames=1, output_type="latent", num_inference_steps=STEPS)


def _run(pipe, seed):
    return torch.as_tensor(pipe(**KW, generator=torch.Generator().manual_seed(seed)).frames)


def _high_noise_steps(pipe) -> int:
    pipe.scheduler.set_timesteps(STEPS)
    return int((pipe.scheduler.timesteps >= pipe.config.boundary_ratio * 1000).sum())


@pytest.mark.slow  # two trajectories of a two-expert pipeline, three ways
def test_each_expert_has_its_own_program_caches_and_step_count():
    pipe = _wan22()
    high = _high_noise_steps(pipe)
    assert 2 < high < STEPS - 1  # both experts run several steps: a mixed count would show
    lengths = {"transformer": high, "transformer_2": STEPS - high}
    models = {attr: getattr(pipe, attr) for attr in EXPERTS}

    expected, ref_schedules = [], []
    for seed in (0, 1):  # a fresh reference per trajectory: nothing carries over
        for attr in EXPERTS:
            setattr(pipe, attr, ReferenceDenoiser(models[attr], POLICY, lengths[attr]))
        expected.append(_run(pipe, seed))
        ref_schedules.append({attr: {b: st["schedule"] for b, st in getattr(pipe, attr).states.items()}
                              for attr in EXPERTS})
        for attr in EXPERTS:
            getattr(pipe, attr).ref.close()
            setattr(pipe, attr, models[attr])
    plain = _run(pipe, 0)

    cachec.enable(pipe, POLICY)
    try:
        assert all(isinstance(getattr(pipe, a), cachec.CachedDenoiser) for a in EXPERTS)
        outs = []
        for seed in (0, 1):
            out = _run(pipe, seed)
            outs.append(out)
            schedules = {attr: {b: st.history[-1].schedule for b, st in getattr(pipe, attr).current.branches.items()}
                         for attr in EXPERTS}
            assert schedules == ref_schedules[seed]
            # each expert's own last step is forced full (final=1 of its own length)
            assert all(s == "FRF" for s in schedules["transformer"].values()), schedules
            assert all(s.endswith("F") and len(s) == STEPS - high for s in schedules["transformer_2"].values())
            torch.testing.assert_close(out, expected[seed], atol=1e-5, rtol=1e-5)
        assert pipe.transformer.current is not pipe.transformer_2.current  # programs and caches apart
        assert (outs[0] - plain).abs().max() > 1e-6  # caching changed the result: the comparison can fail
    finally:
        cachec.disable(pipe)
    assert all(getattr(pipe, a) is models[a] for a in EXPERTS)
