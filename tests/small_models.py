"""Tiny, seeded random-weight instances of the six diffusers denoiser classes cachec supports.

Each config has 2-3 blocks and a hidden size of 16-32 so a 20-step trajectory takes well under a
second on two CPU cores. diffusers zero-initialises adaLN-zero gates and several output
projections, which would make every block an identity (and every cache policy trivially exact);
:func:`make` therefore re-initialises *every* parameter with small seeded normal noise (norm
scales: 1 + noise) so that each block, attention and feed-forward module changes its input
measurably.

Text token counts (``TEXT_TOKENS``) deliberately differ from every model's image token count.
"""

from __future__ import annotations

import diffusers
import torch

# class name -> constructor kwargs
CONFIGS: dict[str, dict] = {
    "DiTTransformer2DModel": dict(
        sample_size=8, in_channels=4, out_channels=4, num_layers=3, num_attention_heads=2, attention_head_dim=8,
        num_embeds_ada_norm=10),
    "PixArtTransformer2DModel": dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2, sample_size=8,
        cross_attention_dim=16, caption_channels=12, norm_type="ada_norm_single", use_additional_conditions=False),
    "FluxTransformer2DModel": dict(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, pooled_projection_dim=6, guidance_embeds=True, axes_dims_rope=(2, 2, 4)),
    "SD3Transformer2DModel": dict(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=6, out_channels=4,
        pos_embed_max_size=16),
    "WanTransformer3DModel": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=12, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32),
    "UNet2DConditionModel": dict(
        sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=12, block_out_channels=(8, 16),
        layers_per_block=1, attention_head_dim=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
}

# short ids used in test parametrisation
SHORT = {
    "dit": "DiTTransformer2DModel",
    "pixart": "PixArtTransformer2DModel",
    "flux": "FluxTransformer2DModel",
    "sd3": "SD3Transformer2DModel",
    "wan": "WanTransformer3DModel",
    "unet": "UNet2DConditionModel",
}

# image tokens: DiT/PixArt/SD3 (8/2)^2 = 16, FLUX 8*8 = 64, Wan 1*(16/2)^2 = 64; text: 5
TEXT_TOKENS = 5

# per-class init std: large enough that blocks matter, small enough that 20 steps stay finite
INIT_STD = {
    "DiTTransformer2DModel": 0.1,
    "PixArtTransformer2DModel": 0.1,
    "FluxTransformer2DModel": 0.1,
    "SD3Transformer2DModel": 0.1,
    "WanTransformer3DModel": 0.1,
    "UNet2DConditionModel": 0.1,
}


def make(name: str, seed: int = 0) -> torch.nn.Module:
    """Build the small model ``name`` (short id or class name) with seeded non-zero random weights."""
    cls_name = SHORT.get(name, name)
    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**CONFIGS[cls_name])
    g = torch.Generator().manual_seed(seed + 1)
    std = INIT_STD[cls_name]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * std
            # norm scales around 1 (attention logits and group norms stay meaningful), the rest around 0
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") and p.dim() == 1 else noise)
    return model.eval().float()
