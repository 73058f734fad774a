"""Small LoRAs in the diffusers/PEFT format, made here: random A and B matrices (nothing reaches a hub)."""

from __future__ import annotations

import torch

FLUX_TARGETS = ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp")


def lora_state_dict(model, targets=FLUX_TARGETS, rank=2, seed=0, prefix="transformer") -> dict:
    """``{prefix}.{target}.lora_A.weight`` / ``lora_B.weight`` for each target ``Linear`` of ``model``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for t in targets:
        linear = model.get_submodule(t)
        linear = getattr(linear, "base_layer", linear)  # a layer that holds adapters already
        sd[f"{prefix}.{t}.lora_A.weight"] = torch.randn(rank, linear.in_features, generator=g) * 0.3
        sd[f"{prefix}.{t}.lora_B.weight"] = torch.randn(linear.out_features, rank, generator=g) * 0.3
    return sd
