"""Every ``arch:NAME`` is the published model: its parameter count, built on the meta device (no
weights, no memory), is within 3 % of the size its authors published, and the example inputs cachec
synthesises for it are accepted by its forward.

The published sizes are written here with their source, independently of cachec/models.py (which
copies each config from diffusers' conversion scripts). A count that matches the published size
rules out a wrong depth, width, MLP ratio or head count: each of those moves it by far more than 3 %.
"""

import pytest
import torch

from cachec.models import ARCH_CONFIGS, ModelBundle, _cls

# name -> (published parameters of the denoiser, in billions; where it is published)
PUBLISHED_PARAMS = {
    "dit-xl-2": (0.675, "DiT paper (Peebles & Xie 2023), DiT-XL/2: 675 M"),
    "pixart-alpha": (0.6, "PixArt-alpha paper: 0.6 B"),
    "flux.1-dev": (12.0, "FLUX.1 [dev] model card: 12 billion parameter rectified flow transformer"),
    "sd3-medium": (2.0, "Stable Diffusion 3 Medium model card: 2 billion parameter MMDiT"),
    "sd1.5-unet": (0.86, "Stable Diffusion v1 model card: an 860 M UNet"),
    "sana-1600m": (1.6, "SANA paper (Xie et al. 2024): Sana-1.6B"),
    "pixart-sigma": (0.6, "PixArt-Sigma paper: 0.6 B parameters"),
    "sd3.5-large": (8.1, "Stable Diffusion 3.5 Large model card: 8.1 billion parameters"),
    "wan2.1-14b": (14.0, "Wan2.1 report / model card: Wan2.1-T2V-14B"),
    "auraflow": (6.8, "AuraFlow v0.1 release (fal.ai): 6.8 B parameters"),
    "hunyuan-video": (13.0, "HunyuanVideo paper (Tencent 2024): over 13 billion parameters"),
    "ltx-video-13b": (13.0, "LTX-Video 0.9.7 release (Lightricks): LTXV-13B"),
    "qwen-image": (20.0, "Qwen-Image technical report: a 20 B MMDiT"),
    "chroma": (8.9, "Chroma1-HD model card: an 8.9 B parameter model based on FLUX.1-schnell"),
    "allegro": (2.8, "Allegro model card (rhymes-ai): VideoDiT 2.8 B"),
}

# The one entry whose count is not within 3 % of its published figure, checked another way (not skipped):
# wan2.1-1.3b is named "1.3B" (Wan2.1 model card), but the config of diffusers' conversion script
# (scripts/convert_wan_to_diffusers.py, "Wan-T2V-1.3B", repeated here) has 1.42 B parameters (+9 %).
# The test checks that arch:wan2.1-1.3b is exactly that config. (dit-xl-2 differs from its paper by a
# known duplication; see test_parameter_count_matches_the_published_size.)
WAN_13B_SCRIPT_CONFIG = dict(
    added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-06, ffn_dim=8960, freq_dim=256,
    in_channels=16, num_attention_heads=12, num_layers=30, out_channels=16, patch_size=(1, 2, 2),
    qk_norm="rms_norm_across_heads", text_dim=4096)


def _build(name):
    cls_name, cfg = ARCH_CONFIGS[name]
    with torch.device("meta"):
        return _cls(cls_name)(**cfg)


def _params(model, exclude=()):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(exclude))


def test_every_arch_has_a_published_size_or_a_stated_reason():
    assert set(ARCH_CONFIGS) == set(PUBLISHED_PARAMS) | {"wan2.1-1.3b"}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_size(name):
    model = _build(name)
    exclude = ()
    if name == "dit-xl-2":
        # diffusers' DiT gives every block its own copy of the timestep + class embedder (AdaLayerNormZero.emb;
        # scripts/convert_dit_to_diffusers.py copies the one t_embedder/y_embedder into all 28); the paper counts it once
        exclude = tuple(f"transformer_blocks.{i}.norm1.emb." for i in range(1, len(model.transformer_blocks)))
    got = _params(model, exclude) / 1e9
    published, source = PUBLISHED_PARAMS[name]
    assert abs(got - published) <= 0.03 * published, f"{name}: {got:.3f} B parameters, published {published} B ({source})"


def test_wan_1_3b_is_the_conversion_scripts_config():
    cls_name, cfg = ARCH_CONFIGS["wan2.1-1.3b"]
    assert cls_name == "WanTransformer3DModel"
    built = _build("wan2.1-1.3b")
    for key, want in WAN_13B_SCRIPT_CONFIG.items():
        got = built.config[key]
        assert (tuple(got) if isinstance(got, list) else got) == want, f"{key}: {got} != {want}"
    assert abs(_params(built) / 1e9 - 1.42) < 0.01


@pytest.mark.parametrize("name", sorted(ARCH_CONFIGS))
def test_synthesised_inputs_run_the_forward_on_meta(name):
    """``arch:NAME`` needs no ``--inputs``: the synthesised inputs fit the forward (meta: shapes only)."""
    model = _build(name).eval()
    bundle = ModelBundle(f"arch:{name}", model)
    kw = bundle.example_inputs(batch=2)
    with torch.no_grad():
        out = model(**kw, return_dict=False)[0]
    latent = kw[bundle.latent_input]
    # a latent grid keeps its spatial/temporal sizes (learned sigma may double the channels); packed tokens their count
    assert out.shape[0] == 2 and (out.shape[2:] == latent.shape[2:] or out.shape[:2] == latent.shape[:2]), \
        f"{name}: output {tuple(out.shape)} for latent {tuple(latent.shape)}"
