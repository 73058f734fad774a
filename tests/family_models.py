"""Tiny random-weight instances of diffusers denoisers *beyond* the six in small_models.py.

cachec knows no model table: these classes are here to test that structure alone (the module
hierarchy, shapes, where attention keys come from) serves the diffusers family. Configs are the
smallest each constructor accepts (after diffusers' own model tests); :func:`make` re-initialises
every parameter with seeded noise like ``small_models.make`` (norm scales ~1, the rest ~0), so
no block is an identity. ``FAMILY[cls].inputs(batch, seed)`` builds one step's keyword inputs;
the first key is the latent. ``t_max`` is the timestep scale the class's pipelines pass (1000 or
1), ``increasing`` marks the classes whose pipelines count the timestep *up* (Lumina: ``1 − t``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import torch


@dataclass(frozen=True)
class Family:
    config: dict
    inputs: Callable[[int, torch.Generator], dict]
    t_max: float = 1000.0
    increasing: bool = False
    std: float = 0.1
    kind: str = ""  # what structure it exercises (the matrix's second column)
    unsupported: str = ""  # a class cachec cannot serve: the CachecError message it must raise (regex)
    fails: tuple[tuple[str, str], ...] = ()  # (policy, message regex): policies the class's structure rules out


def _r(g, *shape):
    return torch.randn(*shape, generator=g)


def _t(batch):
    return torch.full((batch,), 500.0)


def _flux_like(batch, g, channels=4, text_dim=32, pooled=None, tokens=16, text=6):
    kw = dict(hidden_states=_r(g, batch, tokens, channels), encoder_hidden_states=_r(g, batch, text, text_dim))
    if pooled:
        kw["pooled_projections"] = _r(g, batch, pooled)
    ids = torch.zeros(4, 4, 3)
    ids[..., 1] = torch.arange(4)[:, None]
    ids[..., 2] = torch.arange(4)[None, :]
    kw.update(timestep=torch.full((batch,), 0.5), img_ids=ids.reshape(tokens, 3), txt_ids=torch.zeros(text, 3))
    return kw


def _lumina_rope():
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return get_2d_rotary_pos_embed_lumina(8, 32, 32, linear_factor=1.0, ntk_factor=1.0)


def _audio_rope():
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return get_1d_rotary_pos_embed(4, 8 + 1, use_real=True, repeat_interleave_real=False)


FAMILY: dict[str, Family] = {
    "AllegroTransformer3DModel": Family(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
             cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b)),
        kind="video, cross-attention"),
    "AuraFlowTransformer2DModel": Family(
        dict(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=2,
             attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=12,
             out_channels=4, pos_embed_max_size=16),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 12), timestep=_t(b)),
        t_max=1.0, kind="MMDiT + single-stream"),
    "ChromaTransformer2DModel": Family(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=[2, 2, 4], approximator_num_channels=8,
             approximator_hidden_dim=16, approximator_layers=1),
        lambda b, g: _flux_like(b, g, text_dim=12),
        t_max=1.0, kind="MMDiT + parallel single blocks, RoPE"),
    "CogVideoXTransformer3DModel": Family(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
             text_embed_dim=8, num_layers=2, sample_width=8, sample_height=8, sample_frames=1, patch_size=2,
             patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=6),
        lambda b, g: dict(hidden_states=_r(g, b, 1, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b)),
        kind="video, text‖image joint attention (frames before channels)"),
    "CogView3PlusTransformer2DModel": Family(
        dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2, out_channels=4,
             text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b),
                          original_size=torch.full((b, 2), 64.0), target_size=torch.full((b, 2), 64.0),
                          crop_coords=torch.zeros(b, 2)),
        kind="MMDiT, size conditioning"),
    "CogView4Transformer2DModel": Family(
        dict(patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4, out_channels=4,
             text_embed_dim=8, time_embed_dim=8, condition_dim=4),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b),
                          original_size=torch.full((b, 2), 64.0), target_size=torch.full((b, 2), 64.0),
                          crop_coords=torch.zeros(b, 2)),
        kind="MMDiT, RoPE"),
    "EasyAnimateTransformer3DModel": Family(
        dict(attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=2, num_layers=2,
             out_channels=4, patch_size=2, sample_height=60, sample_width=90, text_embed_dim=8, time_embed_dim=8,
             time_position_encoding_type="3d_rope", timestep_activation_fn="silu"),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), timestep=_t(b), encoder_hidden_states=_r(g, b, 6, 8)),
        kind="video MMDiT, 3-D RoPE"),
    "HunyuanDiT2DModel": Family(
        dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4, hidden_size=16, text_len=4,
             text_len_t5=4, activation_fn="gelu-approximate"),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 4, 8),
                          text_embedding_mask=torch.ones(b, 4), encoder_hidden_states_t5=_r(g, b, 4, 8),
                          text_embedding_mask_t5=torch.ones(b, 4), timestep=_t(b),
                          image_meta_size=torch.tensor([[1024.0, 1024, 16, 16, 0, 0]] * b),
                          style=torch.zeros(b, dtype=torch.long),
                          image_rotary_emb=(torch.ones(16, 8), torch.zeros(16, 8))),
        kind="two text streams, long skips, cross-attention, RoPE"),
    "HunyuanVideoTransformer3DModel": Family(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
             num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
             text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 1, 4, 4), timestep=_t(b), encoder_hidden_states=_r(g, b, 6, 16),
                          encoder_attention_mask=torch.ones(b, 6), pooled_projections=_r(g, b, 8),
                          guidance=torch.full((b,), 3500.0)),
        kind="video MMDiT + parallel single blocks, token refiner"),
    "LatteTransformer3DModel": Family(
        dict(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=4, num_attention_heads=2,
             caption_channels=8, in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
             activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
             norm_elementwise_affine=False, norm_eps=1e-6, video_length=2),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b)),
        kind="video, spatial/temporal blocks, learned sigma"),
    "LTXVideoTransformer3DModel": Family(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
             num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=16),
        lambda b, g: dict(hidden_states=_r(g, b, 2 * 4 * 4, 4), encoder_hidden_states=_r(g, b, 6, 16),
                          timestep=_t(b), encoder_attention_mask=torch.ones(b, 6), num_frames=2, height=4, width=4),
        kind="video, packed tokens, cross-attention, RoPE"),
    "Lumina2Transformer2DModel": Family(
        dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1,
             num_attention_heads=3, num_kv_heads=1, multiple_of=2, ffn_dim_multiplier=None, norm_eps=1e-5,
             scaling_factor=1.0, axes_dim_rope=(4, 2, 2), axes_lens=(32, 32, 32), cap_feat_dim=16),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), timestep=_t(b) / 1000,
                          encoder_hidden_states=_r(g, b, 6, 16),
                          encoder_attention_mask=torch.ones(b, 6, dtype=torch.bool)),
        t_max=1.0, increasing=True, kind="single-stream, GQA, refiners, increasing t",
        unsupported="could not capture Lumina2Transformer2DModel .*tensor values used as Python dict keys"),
    "MochiTransformer3DModel": Family(
        dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
             in_channels=4, out_channels=None, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4,
             activation_fn="swiglu", max_sequence_length=6),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), encoder_hidden_states=_r(g, b, 6, 16), timestep=_t(b),
                          encoder_attention_mask=torch.ones(b, 6, dtype=torch.bool)),
        kind="video asymmetric MMDiT",
        unsupported="data-dependent size .* crosses a boundary between cacheable regions"),
    "SanaTransformer2DModel": Family(
        dict(patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
             num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
             sample_size=8),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 8), timestep=_t(b)),
        kind="linear attention + cross-attention, conv MLP"),
    "SkyReelsV2Transformer3DModel": Family(
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), encoder_hidden_states=_r(g, b, 6, 16), timestep=_t(b)),
        kind="video, self + cross-attention, RoPE"),
    "BriaTransformer2DModel": Family(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4]),
        lambda b, g: _flux_like(b, g, text_dim=12),
        kind="MMDiT + parallel single blocks"),
    "QwenImageTransformer2DModel": Family(
        dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)),
        lambda b, g: dict(hidden_states=_r(g, b, 16, 16), encoder_hidden_states=_r(g, b, 6, 16),
                          encoder_hidden_states_mask=torch.ones(b, 6, dtype=torch.long),
                          timestep=torch.full((b,), 0.5), img_shapes=[(1, 4, 4)] * b),
        t_max=1.0, kind="MMDiT, 3-D RoPE"),
    "UNet2DModel": Family(
        dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
             up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4, out_channels=3, in_channels=3,
             layers_per_block=1, sample_size=16),
        lambda b, g: dict(sample=_r(g, b, 3, 16, 16), timestep=torch.tensor(500)),
        kind="unconditional U-Net",
        fails=(("teacache:100", "teacache needs an attention or MLP region in the first block"),)),
    "UNet3DConditionModel": Family(
        dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
             up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=8, attention_head_dim=2,
             out_channels=4, in_channels=4, layers_per_block=1, sample_size=8),
        lambda b, g: dict(sample=_r(g, b, 4, 2, 8, 8), timestep=torch.tensor(500), encoder_hidden_states=_r(g, b, 6, 8)),
        kind="video U-Net, temporal attention"),
    "LongCatImageTransformer2DModel": Family(
        dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=12, axes_dims_rope=[2, 2, 4]),
        lambda b, g: dict(_flux_like(b, g, text_dim=12), guidance=torch.full((b,), 3.5)),
        t_max=1.0, kind="MMDiT + parallel single blocks"),
    "LuminaNextDiT2DModel": Family(
        dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_attention_heads=3,
             num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5, learn_sigma=False, qk_norm=True,
             cross_attention_dim=16, scaling_factor=1.0),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), timestep=_t(b) / 1000, encoder_hidden_states=_r(g, b, 6, 16),
                          encoder_mask=torch.ones(b, 6), image_rotary_emb=_lumina_rope(),
                          cross_attention_kwargs={}),
        t_max=1.0, increasing=True, kind="gated cross-attention inside self-attention, increasing t"),
    "SanaVideoTransformer3DModel": Family(
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
             num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
             mlp_ratio=2.5, dropout=0.0, attention_bias=False, sample_size=8, patch_size=(1, 2, 2),
             norm_elementwise_affine=False, norm_eps=1e-6, qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 2, 8, 8), encoder_hidden_states=_r(g, b, 6, 16), timestep=_t(b)),
        kind="video linear attention + cross-attention"),
    "StableAudioDiTModel": Family(
        dict(sample_size=8, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
             num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16, time_proj_dim=8,
             global_states_input_dim=12, cross_attention_input_dim=12),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8), timestep=_t(b), encoder_hidden_states=_r(g, b, 6, 12),
                          global_hidden_states=_r(g, b, 1, 12), rotary_embedding=_audio_rope()),
        kind="1-D audio, GQA, cross-attention, prepended global token"),
    "Transformer2DModel": Family(
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
             cross_attention_dim=12, norm_num_groups=4, sample_size=8),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), encoder_hidden_states=_r(g, b, 6, 12)),
        kind="generic continuous transformer, no timestep"),
    "HiDreamImageTransformer2DModel": Family(
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=4, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2,
             num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=(0, 1),
             force_inference_output=True),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 16, 16), timesteps=_t(b), encoder_hidden_states_t5=_r(g, b, 6, 8),
                          encoder_hidden_states_llama3=_r(g, 2, b, 6, 4), pooled_embeds=_r(g, b, 8)),
        kind="MoE MMDiT, several text streams",
        unsupported="could not capture HiDreamImageTransformer2DModel .*numpy"),
    "UNetSpatioTemporalConditionModel": Family(
        dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
             up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=8,
             num_attention_heads=2, out_channels=4, in_channels=4, layers_per_block=1, sample_size=8,
             projection_class_embeddings_input_dim=24, addition_time_embed_dim=8),
        lambda b, g: dict(sample=_r(g, b, 2, 4, 8, 8), timestep=torch.tensor(500.0), encoder_hidden_states=_r(g, b, 1, 8),
                          added_time_ids=torch.tensor([[6.0, 127, 0.02]] * b)),
        kind="video U-Net (SVD), frames before channels"),
    "OmniGenTransformer2DModel": Family(
        dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=2,
             pad_token_id=0, vocab_size=100, in_channels=4, time_step_dim=4,
             rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]}),
        lambda b, g: dict(hidden_states=_r(g, b, 4, 8, 8), timestep=_t(b) / 1000,
                          input_ids=torch.randint(0, 10, (b, 6), generator=g), input_img_latents=[],
                          input_image_sizes={}, attention_mask=torch.ones(b, 6 + 1 + 16, 6 + 1 + 16),
                          position_ids=torch.arange(6 + 1 + 16).repeat(b, 1)),
        t_max=1.0, kind="LLM-style single stream, token ids",
        unsupported="could not capture OmniGenTransformer2DModel .*data-dependent"),
}


def make(cls_name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny ``cls_name`` with seeded non-zero random weights (norm scales ~1, the rest ~0)."""
    fam = FAMILY[cls_name]
    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**fam.config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * fam.std
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") and p.dim() == 1 else noise)
    return model.eval().float()


def inputs(cls_name: str, batch: int, seed: int = 0) -> dict:
    return FAMILY[cls_name].inputs(batch, torch.Generator().manual_seed(seed))


def timesteps(cls_name: str, steps: int, like: torch.Tensor) -> list[torch.Tensor]:
    """The trajectory's timesteps in the class's scale and direction, shaped like ``like``."""
    fam = FAMILY[cls_name]
    vals = torch.linspace(0.999, 0.0, steps) * fam.t_max
    if fam.increasing:
        vals = fam.t_max - vals
    return [torch.full_like(like, float(v)) for v in vals]


def latent_update(x: torch.Tensor, out: torch.Tensor, steps: int) -> torch.Tensor:
    """``x - out / steps`` (a learned-sigma output's extra channels are the variance: dropped)."""
    if out.shape != x.shape:
        out = out.narrow(1, 0, x.shape[1])
    return x - out / steps


def timestep_name(kw: dict) -> str:
    return "timesteps" if "timesteps" in kw else "timestep"


# -- the matrix: one class × one policy ------------------------------------------------------------
STEPS = 8
# policies of the matrix; fbcache/teacache at a threshold no probe reaches, so their schedule is known
# (Δ-DiT's default range leaves out the first and last block: the tiny models have 2, so 0-1)
POLICIES = ("none", "fora:3", "fbcache:10", "teacache:100", "taylorseer", "delta:2,blocks=0-1")


def expected_schedule(policy: str, steps: int = STEPS) -> str:
    """Each policy's schedule written from its definition (docs/methods.md), not from cachec's controllers."""
    def mark(full):
        return "".join("F" if full(s) else "R" for s in range(steps))

    name = policy.split(":")[0]
    if name == "none":
        return "F" * steps
    if name == "fora":
        return mark(lambda s: s % 3 == 0)  # FORA N=3: a full step, then 2 reuse steps
    if name == "delta":
        return mark(lambda s: s % 2 == 0)  # Δ-DiT N=2
    if name == "taylorseer":
        return mark(lambda s: s < 2 or (s - 1) % 4 == 0)  # warmup 2, then N=4 from the last full step
    if name == "fbcache":
        return "F" + "R" * (steps - 1)  # the probe's change never exceeds 10
    if name == "teacache":
        return "F" + "R" * (steps - 2) + "F"  # the accumulated distance never exceeds 100; final=1
    raise KeyError(policy)


def trajectory(call, cls_name: str, kw0: dict, steps: int = STEPS) -> list[torch.Tensor]:
    """Per-step outputs of a trajectory: timesteps in the class's scale and direction, ``x ← x − out/T``."""
    latent, tname = next(iter(kw0)), timestep_name(kw0)
    x, outs = kw0[latent].clone(), []
    # a model without a timestep input (Transformer2DModel) is called with the same inputs each step
    ts = timesteps(cls_name, steps, kw0[tname]) if tname in kw0 else [None] * steps
    for t in ts:
        out = call(dict(kw0, **{latent: x}, **({tname: t} if t is not None else {})))
        outs.append(out.clone())
        x = latent_update(x, out, steps)
    return outs


def check(cls_name: str, policy: str, *, model=None, captured=None, steps: int = STEPS, batches=(2, 1)) -> str:
    """Run ``policy`` on ``cls_name`` and check it; returns the schedule (raises on a failed check).

    ``none`` must equal the plain model at every step at every batch in ``batches``. Every other
    policy must run a trajectory with its :func:`expected_schedule`, its first (full) step must
    equal the plain model's, and where it reuses, the result must differ from the plain model's
    (the cache really replaced computation).
    """
    import cachec
    from cachec.capture import capture
    from cachec.planner import compile_program
    from cachec.policy import parse_policy
    from cachec.runtime import CacheRuntime, signature_of

    model = model if model is not None else make(cls_name)
    cap = captured if captured is not None else capture(model, inputs(cls_name, 2))
    program = compile_program(cap.copy(), parse_policy(policy))
    schedule = None
    for batch in (batches if policy == "none" else batches[:1]):
        kw0 = inputs(cls_name, batch, seed=batch)
        if batch > cap.max_batch or (not cap.batch_dims and batch != cap.example_batch):
            rt = cachec.compile(model, kw0, policy, num_steps=steps)  # a static-batch capture serves only its batch
        else:
            rt = CacheRuntime(program, policy, signature=signature_of(model), num_steps=steps)
        with torch.no_grad():
            plain = trajectory(lambda kw: model(**kw, return_dict=False)[0], cls_name, kw0, steps)
        got = trajectory(lambda kw, rt=rt: rt(**kw)[0], cls_name, kw0, steps)
        schedule = rt.stats.schedule
        want = expected_schedule(policy, steps)
        assert schedule == want, f"schedule {schedule}, expected {want}"
        if policy == "none":
            for s, (a, b) in enumerate(zip(got, plain, strict=True)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, s=s, b=batch: f"batch {b} step {s}: {m}")
        else:
            torch.testing.assert_close(got[0], plain[0], rtol=1e-4, atol=1e-5)
            if "R" in schedule:
                diff = max(float((a - b).abs().max()) for a, b in zip(got, plain, strict=True))
                assert diff > 1e-4, f"reuse steps changed nothing (max |Δ| {diff:.1e}): no region was cached"
    return schedule
