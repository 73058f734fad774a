"""Tiny models saved with ``save_pretrained``, as a user hands them to ``cachec inspect/compile DIR``.

Every class of the family matrix (``family_models.FAMILY``), the six of ``small_models``, and the
classes issue 22 found failing from a saved directory that neither list holds (``EXTRA``: FLUX.2,
the AnimateDiff motion U-Net, ChronoEdit, Cosmos, Kandinsky 5). Weights are seeded noise.

``no_accelerate()`` makes the process look like one without ``accelerate`` installed, the way
diffusers finds out: ``importlib.util.find_spec("accelerate")`` returns None and ``import
accelerate`` fails (a ``None`` entry in ``sys.modules`` does both), and diffusers' cached answer
``is_accelerate_available()`` says False.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import diffusers
import torch
from family_models import FAMILY
from family_models import make as make_family
from small_models import CONFIGS
from small_models import make as make_small

# classes of issue 22 outside both lists: the smallest configs their constructors accept
EXTRA: dict[str, dict] = {
    "Flux2Transformer2DModel": dict(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4)),
    "UNetMotionModel": dict(
        block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), num_attention_heads=2,
        motion_num_attention_heads=2, motion_max_seq_length=4, in_channels=4, out_channels=4, sample_size=8),
    "ChronoEditTransformer3DModel": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=12, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32),
    "CosmosTransformer3DModel": dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
        rope_scale=(2.0, 1.0, 1.0), extra_pos_embed_type="learnable",
        concat_padding_mask=False),  # True resizes the mask with torchvision, not a cachec dependency
    "Kandinsky5Transformer3DModel": dict(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6)),
}

ALL_CLASSES = sorted({*FAMILY, *CONFIGS, *EXTRA})


def make(cls_name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny ``cls_name`` with seeded random weights (as the family and small-model helpers build them)."""
    if cls_name in FAMILY:
        return make_family(cls_name, seed)
    if cls_name in CONFIGS:
        return make_small(cls_name, seed)
    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**EXTRA[cls_name])
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") and p.dim() == 1 else noise)
    return model.eval().float()


def save(cls_name: str, root: Path) -> tuple[Path, torch.nn.Module]:
    """``make(cls_name)`` written by ``save_pretrained`` to ``root/cls_name``; returns the folder and the model."""
    model = make(cls_name)
    folder = Path(root) / cls_name
    model.save_pretrained(str(folder))
    return folder, model


@contextlib.contextmanager
def no_accelerate():
    """Within: this process looks to diffusers as one where ``accelerate`` is not installed."""
    import diffusers.models.modeling_utils as modeling_utils
    import diffusers.utils.import_utils as import_utils

    saved_module = sys.modules.get("accelerate", None)
    had_module = "accelerate" in sys.modules
    saved_flag = import_utils._accelerate_available
    saved_attr = modeling_utils.__dict__.get("accelerate")
    sys.modules["accelerate"] = None  # find_spec -> None, import -> ImportError
    import_utils._accelerate_available = False
    modeling_utils.__dict__.pop("accelerate", None)  # as if `import accelerate` had never run there
    try:
        yield
    finally:
        if had_module:
            sys.modules["accelerate"] = saved_module
        else:
            del sys.modules["accelerate"]
        import_utils._accelerate_available = saved_flag
        if saved_attr is not None:
            modeling_utils.accelerate = saved_attr
