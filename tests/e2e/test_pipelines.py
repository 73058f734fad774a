"""cachec inside real diffusers pipelines (small configs, random weights, precomputed prompt embeddings).

For each of the six pipeline classes: ``cachec.enable(pipe, "none")`` reproduces the plain
pipeline exactly, and ``fora:3`` equals an independent hook-based reference
(``tests/reference_hooks.py``) installed as the pipeline's denoiser. FLUX (true CFG) and Wan call
the denoiser twice per step inside ``cache_context("cond"/"uncond")``; the reference keeps one
state per branch, so these tests also check that cachec keeps the branches' caches apart.
A loaded artifact (``cachec.load``) serves as ``pipe.transformer`` too.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from reference_hooks import ReferenceDenoiser
from small_models import make

import cachec
import cachec.cli

pytestmark = pytest.mark.slow  # whole diffusers pipelines (tests/README.md)

STEPS = 6




def _vae():
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), latent_channels=4,
                                   norm_num_groups=8).eval()


def _embeds(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _dit():
    torch.manual_seed(0)
    tr = diffusers.DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
                                         attention_head_dim=8, num_embeds_ada_norm=1000).eval()
    with torch.no_grad():  # diffusers zero-initialises adaLN-zero gates: every block would be an identity
        for p in tr.parameters():
            p.normal_(0, 0.05)
    pipe = diffusers.DiTPipeline(transformer=tr, vae=_vae(), scheduler=diffusers.DDIMScheduler())
    # batched CFG: the denoiser sees [cond, uncond(class 1000)] in one batch
    return pipe, dict(class_labels=[1, 7], guidance_scale=3.0, output_type="np"), "images"


def _pixart():
    tr = make("pixart")
    pipe = diffusers.PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=tr,
                                         scheduler=diffusers.DPMSolverMultistepScheduler())
    emb = _embeds(1, 5, 12, seed=3)
    mask = torch.ones(1, 5, dtype=torch.long)
    kw = dict(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None, negative_prompt_embeds=-emb,
              negative_prompt_attention_mask=mask, guidance_scale=2.0, use_resolution_binning=False,
              output_type="latent")
    return pipe, kw, "images"


def _flux():
    pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=make("flux"))
    kw = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), pooled_prompt_embeds=_embeds(1, 6, seed=4),
              negative_prompt_embeds=_embeds(1, 5, 12, seed=5), negative_pooled_prompt_embeds=_embeds(1, 6, seed=6),
              true_cfg_scale=2.0, guidance_scale=3.5, height=64, width=64, output_type="latent")
    return pipe, kw, "images"


def _sd3():
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=make("sd3"), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    kw = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), pooled_prompt_embeds=_embeds(1, 6, seed=4),
              negative_prompt_embeds=_embeds(1, 5, 12, seed=5), negative_pooled_prompt_embeds=_embeds(1, 6, seed=6),
              guidance_scale=3.0, height=64, width=64, output_type="latent")
    return pipe, kw, "images"


def _wan():
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=make("wan"),
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    kw = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), negative_prompt_embeds=_embeds(1, 5, 12, seed=5),
              guidance_scale=4.0, height=64, width=64, num_frames=1, output_type="latent")
    return pipe, kw, "frames"


def _sd():
    pipe = diffusers.StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=make("unet"),
                                             scheduler=diffusers.DDIMScheduler(), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    kw = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), negative_prompt_embeds=_embeds(1, 5, 12, seed=5),
              guidance_scale=3.0, height=128, width=128, output_type="latent")
    return pipe, kw, "images"


PIPELINES = {"dit": _dit, "pixart": _pixart, "flux": _flux, "sd3": _sd3, "wan": _wan, "sd": _sd}
SEQUENTIAL_CFG = {"flux", "wan"}


def _run(pipe, kw, field, seed=0):
    out = pipe(**kw, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(getattr(out, field))


def _denoiser_attr(pipe):
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


@pytest.fixture(scope="module", params=list(PIPELINES))
def case(request):
    pipe, kw, field = PIPELINES[request.param]()
    pipe.set_progress_bar_config(disable=True)
    plain = _run(pipe, kw, field)
    return request.param, pipe, kw, field, plain


def test_none_reproduces_the_plain_pipeline(case):
    name, pipe, kw, field, plain = case
    model = getattr(pipe, _denoiser_attr(pipe))
    cachec.enable(pipe, "none")
    try:
        out = _run(pipe, kw, field)
        denoiser = getattr(pipe, _denoiser_attr(pipe))
        assert isinstance(denoiser, cachec.CachedDenoiser)
        branches = denoiser.current.branches
        assert set(branches) == ({"cond", "uncond"} if name in SEQUENTIAL_CFG else {"default"})
        assert all(b.history[-1].schedule == "F" * STEPS for b in branches.values())
    finally:
        cachec.disable(pipe)
    assert getattr(pipe, _denoiser_attr(pipe)) is model
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


def test_fora_equals_the_hook_reference_in_the_pipeline(case):
    name, pipe, kw, field, plain = case
    attr = _denoiser_attr(pipe)
    model = getattr(pipe, attr)
    setattr(pipe, attr, ReferenceDenoiser(model, "fora:3", STEPS))
    try:
        expected = _run(pipe, kw, field)
        ref_schedules = {b: s["schedule"] for b, s in getattr(pipe, attr).states.items()}
    finally:
        getattr(pipe, attr).ref.close()
        setattr(pipe, attr, model)
    cachec.enable(pipe, "fora:3")
    try:
        out = _run(pipe, kw, field)
        runtime = getattr(pipe, attr).current
    finally:
        cachec.disable(pipe)
    schedules = {b: st.history[-1].schedule for b, st in runtime.branches.items()}
    assert schedules == ref_schedules
    assert all(s == "FRRFRR" for s in schedules.values())
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-6  # caching changed the result: the comparison can fail


def test_a_loaded_artifact_is_the_pipelines_denoiser(tmp_path):
    pipe, kw, field = _dit()
    pipe.set_progress_bar_config(disable=True)
    plain = _run(pipe, kw, field)
    model = pipe.transformer
    model.save_pretrained(tmp_path / "model")
    assert cachec.cli.main(["compile", str(tmp_path / "model"), "--policy", "fora:2", "--out", str(tmp_path / "a")]) == 0
    pipe.transformer = cachec.load(tmp_path / "a")
    assert pipe.transformer.config.sample_size == 8 and pipe.transformer.dtype == torch.float32
    out = _run(pipe, kw, field)
    assert pipe.transformer.stats.schedule == "FRFRFR"
    pipe.transformer = model
    cachec.enable(pipe, "fora:2")
    torch.testing.assert_close(out, _run(pipe, kw, field), atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-6
