"""The published denoiser configurations ``arch:NAME`` builds (random weights), as plain data.

A module of its own, free of torch and diffusers, so that the command line can name the
architectures in ``--help`` without importing either (``cachec --help`` stays instant).
"""

from __future__ import annotations

# Published configurations (the diffusers config.json of each release), random weights.
ARCH_CONFIGS: dict[str, tuple[str, dict]] = {
    "dit-xl-2": ("DiTTransformer2DModel", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")),
    "pixart-alpha": ("PixArtTransformer2DModel", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=128, patch_size=2, cross_attention_dim=1152, caption_channels=4096,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        activation_fn="gelu-approximate", use_additional_conditions=True)),
    "flux.1-dev": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))),
    "sd3-medium": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)),
    "wan2.1-1.3b": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)),
    "sd1.5-unet": ("UNet2DConditionModel", dict(
        sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))),
    # -- families served by structure alone (docs/family_matrix.md). Each config is copied from the
    # diffusers source named beside it; tests/unit/test_arch_configs.py checks each parameter count
    # against the published model size.
    # scripts/convert_sana_to_diffusers.py, SanaMS_1600M_P1_D20 at --image_size 1024
    "sana-1600m": ("SanaTransformer2DModel", dict(
        in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
        num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240, caption_channels=2304,
        mlp_ratio=2.5, attention_bias=False, sample_size=32, patch_size=1, norm_elementwise_affine=False,
        norm_eps=1e-6, interpolation_scale=None)),
    # scripts/convert_pixart_sigma_to_diffusers.py at --image_size 1024 (interpolation_scale 2), no micro-conditions
    "pixart-sigma": ("PixArtTransformer2DModel", dict(
        sample_size=128, num_layers=28, attention_head_dim=72, in_channels=4, out_channels=8, patch_size=2,
        attention_bias=True, num_attention_heads=16, cross_attention_dim=1152, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=4096, interpolation_scale=2, use_additional_conditions=False)),
    # scripts/convert_sd3_to_diffusers.py: 38 joint blocks, heads = layers, caption dim = 38 x 64,
    # pos_embed_max_size 192 ("sd3.0 and sd3.5 8b"), rms qk-norm ("sd3.5"), no dual-attention layers
    "sd3.5-large": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, joint_attention_dim=4096, num_layers=38,
        caption_projection_dim=2432, num_attention_heads=38, attention_head_dim=64, pooled_projection_dim=2048,
        out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm", dual_attention_layers=())),
    # scripts/convert_wan_to_diffusers.py, "Wan-T2V-14B"
    "wan2.1-14b": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, added_kv_proj_dim=None)),
    # scripts/convert_aura_flow_to_diffusers.py builds AuraFlowTransformer2DModel(4 MMDiT, 32 single layers)
    # with the class defaults (transformer_aura_flow.py), written out here
    "auraflow": ("AuraFlowTransformer2DModel", dict(
        sample_size=64, patch_size=2, in_channels=4, num_mmdit_layers=4, num_single_dit_layers=32,
        attention_head_dim=256, num_attention_heads=12, joint_attention_dim=2048, caption_projection_dim=3072,
        out_channels=4, pos_embed_max_size=1024)),
    # scripts/convert_hunyuan_video_to_diffusers.py, TRANSFORMER_CONFIGS["HYVideo-T/2-cfgdistill"]
    "hunyuan-video": ("HunyuanVideoTransformer3DModel", dict(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
        num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
        rope_axes_dim=(16, 56, 56), image_condition_type=None)),
    # scripts/convert_ltx_to_diffusers.py, get_transformer_config("0.9.7") (LTXV-13B)
    "ltx-video-13b": ("LTXVideoTransformer3DModel", dict(
        in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
        cross_attention_dim=4096, num_layers=48, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, attention_bias=True,
        attention_out_bias=True)),
    # no conversion script: the class defaults of transformer_qwenimage.py (Qwen-Image's config), written out
    "qwen-image": ("QwenImageTransformer2DModel", dict(
        patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))),
    # no conversion script: the class defaults of transformer_chroma.py (Chroma1-HD's config), written out
    "chroma": ("ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56), approximator_num_channels=64,
        approximator_hidden_dim=5120, approximator_layers=5)),
    # no conversion script: the class defaults of transformer_allegro.py (rhymes-ai/Allegro's config), written out
    "allegro": ("AllegroTransformer3DModel", dict(
        patch_size=2, patch_size_t=1, num_attention_heads=24, attention_head_dim=96, in_channels=4, out_channels=4,
        num_layers=32, cross_attention_dim=2304, attention_bias=True, sample_height=90, sample_width=160,
        sample_frames=22, activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=4096, interpolation_scale_h=2.0, interpolation_scale_w=2.0, interpolation_scale_t=2.2)),
}
