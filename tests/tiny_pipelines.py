"""Small, complete diffusers pipelines for the tests.

* Saved pipeline directories (prompt → image): the builders live in the package
  (:mod:`cachec.example_pipeline`, what ``cachec example-pipeline`` writes), so there is one copy;
  this module keeps the names the tests import.
* ControlNet and edit pipelines in memory (:data:`WORKFLOWS`): FLUX and SD3 ControlNet,
  FLUX Kontext, Qwen-Image-Edit, SD3 img2img and FLUX inpaint, each with a tiny random-weight
  denoiser from ``small_models``, a one-level VAE (scale factor 1-2: 16x16 images, 64 image
  tokens at most) and precomputed prompt embeddings (no text encoder, no hub). Each builder
  returns ``(pipe, call kwargs, output field)``; ``steps`` goes in ``num_inference_steps``.
"""

from __future__ import annotations

import contextlib

import diffusers
import torch
from small_models import CONFIGS, make

from cachec.example_pipeline import save_cogview3plus, save_flux, save_pixart

__all__ = ["WORKFLOWS", "build", "qwen_edit_area", "save_cogview3plus", "save_flux", "save_pixart"]


def _embeds(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _image(seed=7, size=16):
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _noised(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Seeded non-zero weights (diffusers zero-initialises ControlNet output blocks: their residuals
    would all be zero and a test could not tell a stale residual from a current one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") and p.dim() == 1 else noise)
    return module.eval()


def _vae(latent_channels: int, levels: int = 1) -> diffusers.AutoencoderKL:
    """A ``2 ** (levels - 1)``x VAE with 8 channels per level and a non-trivial shift and scale."""
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8,) * levels, shift_factor=0.1, scaling_factor=1.5).eval()


def _flux_text():
    return dict(prompt_embeds=_embeds(1, 5, 12, seed=3), pooled_prompt_embeds=_embeds(1, 6, seed=4),
                guidance_scale=3.5, height=16, width=16, output_type="latent")


FLUX_1_1 = dict(CONFIGS["FluxTransformer2DModel"], num_layers=1, num_single_layers=1)  # export time is per block


def _flux_parts():
    """The small FLUX with one joint and one single block; its packed latents have ``in_channels / 4``
    channels: 2."""
    torch.manual_seed(0)
    transformer = _noised(diffusers.FluxTransformer2DModel(**FLUX_1_1), seed=1)
    return dict(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=_vae(2), text_encoder=None,
                tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def _sd3_text():
    return dict(prompt_embeds=_embeds(1, 5, 12, seed=3), pooled_prompt_embeds=_embeds(1, 6, seed=4),
                negative_prompt_embeds=_embeds(1, 5, 12, seed=5), negative_pooled_prompt_embeds=_embeds(1, 6, seed=6),
                guidance_scale=3.0, height=16, width=16, output_type="latent")


def _sd3_parts():
    return dict(transformer=make("sd3"), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=_vae(4),
                text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                tokenizer_3=None)


def controlnet_flux():
    """One joint and one single ControlNet block: a residual after each denoiser block."""
    torch.manual_seed(5)
    cn = _noised(diffusers.FluxControlNetModel(**FLUX_1_1), seed=6)
    pipe = diffusers.FluxControlNetPipeline(**_flux_parts(), controlnet=cn)
    return pipe, dict(_flux_text(), control_image=_image(), controlnet_conditioning_scale=0.7), "images"


def controlnet_sd3():
    """A 2-block SD3 ControlNet: one residual per denoiser block, CFG batched (the residuals too)."""
    torch.manual_seed(5)
    cn = _noised(diffusers.SD3ControlNetModel(**dict(CONFIGS["SD3Transformer2DModel"])), seed=6)
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**_sd3_parts(), controlnet=cn)
    return pipe, dict(_sd3_text(), control_image=_image(), controlnet_conditioning_scale=0.7), "images"


def kontext():
    """FLUX Kontext: the reference image's latent tokens are appended to the noisy ones every step."""
    pipe = diffusers.FluxKontextPipeline(**_flux_parts())
    return pipe, dict(_flux_text(), image=_image(), _auto_resize=False, max_area=16 * 16), "images"


def img2img_sd3():
    pipe = diffusers.StableDiffusion3Img2ImgPipeline(**_sd3_parts())
    return pipe, dict(_sd3_text(), image=_image(), strength=0.9), "images"


def inpaint_flux():
    pipe = diffusers.FluxInpaintPipeline(**_flux_parts())
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    return pipe, dict(_flux_text(), image=_image(), mask_image=mask, strength=0.9), "images"


QWEN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                latents_mean=[0.1, -0.1, 0.2, 0.0], latents_std=[1.5, 1.2, 0.8, 1.0])


@contextlib.contextmanager
def qwen_edit_area(side: int = 32):
    """Qwen-Image-Edit resizes the input image to a 1024² working area whatever ``height``/``width``
    say; for a CPU test the area is ``side``² (the pipeline's own ``calculate_dimensions`` for it)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as module

    original = module.calculate_dimensions
    module.calculate_dimensions = lambda area, ratio: original(side * side, ratio)
    try:
        yield
    finally:
        module.calculate_dimensions = original


def qwen_edit():
    """Qwen-Image-Edit (call it inside :func:`qwen_edit_area`): image tokens appended as for Kontext,
    true CFG in two ``cache_context`` branches."""
    from PIL import Image

    torch.manual_seed(0)
    tr = _noised(diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)), seed=1)
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKLQwenImage(**QWEN_VAE).eval()
    pipe = diffusers.QwenImageEditPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae,
                                           text_encoder=None, tokenizer=None, processor=None, transformer=tr)
    pixels = (_image()[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    mask = torch.ones(1, 5, dtype=torch.long)
    kw = dict(image=Image.fromarray(pixels), prompt_embeds=_embeds(1, 5, 16, seed=3), prompt_embeds_mask=mask,
              negative_prompt_embeds=_embeds(1, 5, 16, seed=5), negative_prompt_embeds_mask=mask,
              true_cfg_scale=2.0, height=16, width=16, output_type="latent")
    return pipe, kw, "images"


WORKFLOWS = {
    "controlnet-flux": controlnet_flux,
    "controlnet-sd3": controlnet_sd3,
    "kontext": kontext,
    "qwen-edit": qwen_edit,
    "img2img-sd3": img2img_sd3,
    "inpaint-flux": inpaint_flux,
}


def build(name: str):
    """``(pipe, kwargs, field)`` of workflow ``name``, progress bars off."""
    pipe, kw, field = WORKFLOWS[name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, kw, field


def run(pipe, kw, field, steps: int, seed: int = 0) -> torch.Tensor:
    """One generation; Qwen-Image-Edit inside its small working area. The global seed is set too:
    the SD3 ControlNet pipeline samples its control latents without the call's generator."""
    torch.manual_seed(seed)
    area = qwen_edit_area() if isinstance(pipe, diffusers.QwenImageEditPipeline) else contextlib.nullcontext()
    with area:
        out = pipe(**kw, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return torch.as_tensor(getattr(out, field))
