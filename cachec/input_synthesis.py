"""Example inputs synthesised from a denoiser's class and config: what export needs without a pipeline.

Why per-class rules: a forward's signature does not say what its inputs look like. FLUX-style
transformers take *packed* latent tokens and position ids, CogVideoX and SVD put frames before
channels, Kandinsky 5 puts channels last, HunyuanDiT and Lumina need rotary tables the pipeline
builds, CogView needs size conditioning. Left to the generic signature rule, such a class gets a
4-D ``(B, C, H, W)`` latent and its optional-but-needed inputs left out, and fails far from the
cause. Each rule here builds what the class's diffusers pipeline passes (the pipeline is named
beside it), from the config alone, so ``cachec inspect/compile DIR`` works on a bare directory
written by ``save_pretrained``. Any other class goes through :func:`signature_inputs`.

Inputs are a guess all the same: :mod:`cachec.input_check` runs the plain model on them once
before export, and blames the synthesis (pointing to ``--inputs FILE``) when the model fails.
Values are seeded noise, timesteps mid-schedule, so every device sees the same numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .errors import ModelError

INPUTS_FILE_HELP = ("--inputs FILE (a safetensors file holding one denoiser call's tensors, each named as the "
                    "forward's argument, a__b for a nested a={'b': ...})")


class _Config(dict):
    __getattr__ = dict.get


class _Synth:
    """What every rule needs: the config, the batch, sizes, and a seeded noise source."""

    def __init__(self, cls: str, config: dict, batch: int, seed: int, text_tokens: int, resolution: int | None, frames: int,
                 dtype: torch.dtype):
        self.c = _Config(config)
        self.cls = cls
        self.batch, self.text_tokens, self.resolution, self.frames, self.dtype = (
            batch, text_tokens, resolution, frames, dtype)
        self.g = torch.Generator().manual_seed(seed)
        self.size = resolution or self.c.get("sample_size") or 16

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g).to(self.dtype)

    def full(self, value: float, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A batch of one timestep (or guidance) value."""
        return torch.full((self.batch,), value, dtype=dtype or self.dtype)

    def text(self, width: int, tokens: int | None = None) -> torch.Tensor:
        return self.randn(self.batch, tokens or self.text_tokens, width)

    def ones(self, *shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.ones(*shape, dtype=dtype or self.dtype)


# -- the six classes cachec started with ------------------------------------------------------------
def _dit(s: _Synth) -> dict:
    c, b, size = s.c, s.batch, s.size
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), timestep=s.full(500, torch.long),
                class_labels=torch.randint(0, c.num_embeds_ada_norm, (b,), generator=s.g))


def _pixart(s: _Synth) -> dict:
    c, b, size = s.c, s.batch, s.size
    added = {"resolution": None, "aspect_ratio": None}
    if c.use_additional_conditions if c.use_additional_conditions is not None else c.sample_size == 128:
        added = {"resolution": torch.tensor([[size * 8.0, size * 8.0]] * b, dtype=s.dtype),
                 "aspect_ratio": s.ones(b, 1)}
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), encoder_hidden_states=s.text(c.caption_channels),
                timestep=s.full(500, torch.long), added_cond_kwargs=added)


def _flux(s: _Synth) -> dict:
    """FluxPipeline (and Chroma, Bria, LongCat-Image: FLUX's layout): packed 2x2 latent patches and
    (0, row, col) position ids per token, text ids all zero."""
    c, b = s.c, s.batch
    h = w = s.size // 2 if s.resolution else 8
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    kw = dict(hidden_states=s.randn(b, h * w, c.in_channels), encoder_hidden_states=s.text(c.joint_attention_dim))
    if c.pooled_projection_dim and "pooled_projections" in _parameters(s.cls):  # LongCat has the size, not the input
        kw["pooled_projections"] = s.randn(b, c.pooled_projection_dim)
    kw.update(timestep=s.full(0.5), img_ids=ids.reshape(h * w, 3).to(s.dtype),
              txt_ids=torch.zeros(s.text_tokens, 3, dtype=s.dtype))
    if c.guidance_embeds:
        kw["guidance"] = s.full(3.5)
    return kw


def _sd3(s: _Synth) -> dict:
    c, b, size = s.c, s.batch, s.size
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), encoder_hidden_states=s.text(c.joint_attention_dim),
                pooled_projections=s.randn(b, c.pooled_projection_dim), timestep=s.full(500.0))


def _wan(s: _Synth) -> dict:
    """WanPipeline (and ChronoEdit, Wan's layout): (B, C, F, H, W) latents, T5 text."""
    c, b, size = s.c, s.batch, s.resolution or 16
    return dict(hidden_states=s.randn(b, c.in_channels, s.frames, size, size), timestep=s.full(500, torch.long),
                encoder_hidden_states=s.text(c.text_dim))


def _qwen_image(s: _Synth) -> dict:
    # packed 2x2 latent patches, (frames, rows, cols) of the packed grid per sample, as QwenImagePipeline passes
    c, b = s.c, s.batch
    h = w = s.size // 2 if s.resolution else 8
    return dict(hidden_states=s.randn(b, h * w, c.in_channels), encoder_hidden_states=s.text(c.joint_attention_dim),
                encoder_hidden_states_mask=s.ones(b, s.text_tokens, dtype=torch.long), timestep=s.full(0.5),
                img_shapes=[(1, h, w)] * b)


def _ltx_video(s: _Synth) -> dict:
    # packed latent tokens (frames x rows x cols, patch 1) and the grid they came from, as LTXPipeline passes them
    c, b, size = s.c, s.batch, s.resolution or 16
    return dict(hidden_states=s.randn(b, s.frames * size * size, c.in_channels),
                encoder_hidden_states=s.text(c.caption_channels), timestep=s.full(500.0),
                encoder_attention_mask=s.ones(b, s.text_tokens), num_frames=s.frames, height=size, width=size)


def _unet(s: _Synth) -> dict:
    # a 0-d timestep, as StableDiffusionPipeline passes it (a batched one bounds the batch at 2..63)
    c, b, size = s.c, s.batch, s.size
    return dict(sample=s.randn(b, c.in_channels, size, size), timestep=torch.tensor(500, dtype=torch.long),
                encoder_hidden_states=s.text(c.cross_attention_dim))


# -- classes whose signature leaves out what their pipeline passes ------------------------------------
def _flux2(s: _Synth) -> dict:
    """Flux2Pipeline: packed latent tokens with (t, row, col, layer) ids per sample, text ids (0, 0, 0, token)."""
    c, b = s.c, s.batch
    h = w = s.size // 2 if s.resolution else 8
    img = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    txt = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(s.text_tokens))
    kw = dict(hidden_states=s.randn(b, h * w, c.in_channels), encoder_hidden_states=s.text(c.joint_attention_dim),
              timestep=s.full(0.5), img_ids=img.expand(b, -1, -1).to(s.dtype), txt_ids=txt.expand(b, -1, -1).to(s.dtype))
    if c.get("guidance_embeds", True):  # the class default embeds guidance
        kw["guidance"] = s.full(4.0)
    return kw


def _cogvideox(s: _Synth) -> dict:
    """CogVideoXPipeline: (B, F, C, H, W) latents, text padded to ``max_text_seq_length``, and the 3-D
    rotary table when the config uses one (CogVideoX-5B)."""
    c, b = s.c, s.batch
    height, width = s.resolution or c.sample_height or 16, s.resolution or c.sample_width or 16
    tokens = c.max_text_seq_length or s.text_tokens
    kw = dict(hidden_states=s.randn(b, s.frames, c.in_channels, height, width),
              encoder_hidden_states=s.text(c.text_embed_dim, tokens), timestep=s.full(500, torch.long))
    if c.use_rotary_positional_embeddings:
        kw["image_rotary_emb"] = _cogvideox_rope(c, height, width, s.frames)
    return kw


def _cogvideox_rope(c: _Config, height: int, width: int, frames: int):
    """``CogVideoXPipeline._prepare_rotary_positional_embeddings`` at the latent size."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p, p_t = c.patch_size, c.patch_size_t
    grid_h, grid_w = height // p, width // p
    base_w, base_h = c.sample_width // p, c.sample_height // p
    if p_t is None:
        if grid_h / grid_w > base_h / base_w:  # get_resize_crop_region_for_grid of the pipeline
            rh, rw = base_h, int(round(base_h / grid_h * grid_w))
        else:
            rw, rh = base_w, int(round(base_w / grid_w * grid_h))
        top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
        return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=((top, left), (top + rh, left + rw)),
                                       grid_size=(grid_h, grid_w), temporal_size=frames)
    return get_3d_rotary_pos_embed(embed_dim=c.attention_head_dim, crops_coords=None, grid_size=(grid_h, grid_w),
                                   temporal_size=(frames + p_t - 1) // p_t, grid_type="slice", max_size=(base_h, base_w))


def _cogview(s: _Synth) -> dict:
    """CogView3PlusPipeline / CogView4Pipeline: size conditioning in pixels (8x the latent), no crop."""
    c, b, size = s.c, s.batch, s.size
    pixels = torch.full((b, 2), size * 8.0, dtype=s.dtype)
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), encoder_hidden_states=s.text(c.text_embed_dim),
                timestep=s.full(500.0), original_size=pixels, target_size=pixels.clone(),
                crop_coords=torch.zeros(b, 2, dtype=s.dtype))


def _hidream(s: _Synth) -> dict:
    """HiDreamImagePipeline: T5 text, Llama-3 hidden states of every layer the model reads, pooled CLIP."""
    c, b = s.c, s.batch
    size = s.resolution or (c.max_resolution or (128, 128))[0]
    t5, llama = c.caption_channels
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), timesteps=s.full(500.0),
                encoder_hidden_states_t5=s.text(t5), encoder_hidden_states_llama3=s.randn(
                    max(c.llama_layers) + 1, b, s.text_tokens, llama), pooled_embeds=s.randn(b, c.text_emb_dim))


def _hunyuan_dit(s: _Synth) -> dict:
    """HunyuanDiTPipeline: CLIP and T5 text with their masks, size/crop meta, a style id, and the 2-D
    rotary table of the latent grid."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    c, b, size = s.c, s.batch, s.size
    grid, base = size // c.patch_size, 512 // 8 // c.patch_size
    # the pipeline's get_resize_crop_region_for_grid of a square grid: the whole base square, uncropped
    rope = get_2d_rotary_pos_embed(c.attention_head_dim, ((0, 0), (base, base)), (grid, grid), output_type="pt")
    pixels = float(size * 8)
    return dict(hidden_states=s.randn(b, c.in_channels, size, size),
                encoder_hidden_states=s.text(c.cross_attention_dim, c.text_len),
                text_embedding_mask=s.ones(b, c.text_len, dtype=torch.long),
                encoder_hidden_states_t5=s.text(c.cross_attention_dim_t5, c.text_len_t5),
                text_embedding_mask_t5=s.ones(b, c.text_len_t5, dtype=torch.long), timestep=s.full(500.0),
                image_meta_size=torch.tensor([[pixels, pixels, pixels, pixels, 0, 0]] * b, dtype=s.dtype),
                style=torch.zeros(b, dtype=torch.long), image_rotary_emb=tuple(t.to(s.dtype) for t in rope))


def _lumina2(s: _Synth) -> dict:
    """Lumina2Pipeline: t in [0, 1], Gemma text of width ``cap_feat_dim`` and its boolean mask."""
    c, b, size = s.c, s.batch, s.size
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), timestep=s.full(0.5),
                encoder_hidden_states=s.text(c.cap_feat_dim),
                encoder_attention_mask=s.ones(b, s.text_tokens, dtype=torch.bool))


def _lumina_next(s: _Synth) -> dict:
    """LuminaPipeline: t in [0, 1], text with its mask, the rotary table the pipeline builds (384 x 384)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    c, b, size = s.c, s.batch, s.size
    rope = get_2d_rotary_pos_embed_lumina(c.hidden_size // c.num_attention_heads, 384, 384,
                                          linear_factor=1.0, ntk_factor=1.0)
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), timestep=s.full(0.5),
                encoder_hidden_states=s.text(c.cross_attention_dim), encoder_mask=s.ones(b, s.text_tokens),
                image_rotary_emb=rope, cross_attention_kwargs={})


def _omnigen(s: _Synth) -> dict:
    """OmniGenPipeline, text only: token ids, no input images, and the joint attention mask and positions
    over text + timestep token + latent tokens."""
    c, b, size = s.c, s.batch, s.size
    tokens = s.text_tokens + 1 + (size // (c.patch_size or 2)) ** 2
    return dict(hidden_states=s.randn(b, c.in_channels, size, size), timestep=s.full(0.5),
                input_ids=torch.randint(0, 10, (b, s.text_tokens), generator=s.g), input_img_latents=[],
                input_image_sizes={}, attention_mask=s.ones(b, tokens, tokens), position_ids=torch.arange(tokens).repeat(b, 1))


def _stable_audio(s: _Synth) -> dict:
    """StableAudioPipeline: a 1-D latent, the duration (global) token, and the 1-D rotary table over
    the latent plus that token."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    c, b, length = s.c, s.batch, s.size
    rope = get_1d_rotary_pos_embed(c.attention_head_dim // 2, length + 1, use_real=True, repeat_interleave_real=False)
    return dict(hidden_states=s.randn(b, c.in_channels, length), timestep=s.full(500.0),
                encoder_hidden_states=s.text(c.cross_attention_input_dim),
                global_hidden_states=s.randn(b, 1, c.global_states_input_dim),
                rotary_embedding=tuple(t.to(s.dtype) for t in rope))


def _unet_motion(s: _Synth) -> dict:
    """AnimateDiffPipeline: a 5-D (B, C, F, H, W) latent, a 0-d timestep, the text repeated per frame."""
    c, b, size = s.c, s.batch, s.size
    return dict(sample=s.randn(b, c.in_channels, s.frames, size, size), timestep=torch.tensor(500, dtype=torch.long),
                encoder_hidden_states=s.text(c.cross_attention_dim).repeat_interleave(s.frames, dim=0))


def _unet_svd(s: _Synth) -> dict:
    """StableVideoDiffusionPipeline: (B, F, C, H, W) latents, one CLIP image token, and the added time
    ids (fps - 1, motion bucket, noise augmentation)."""
    c, b, size = s.c, s.batch, s.size
    ids = [6.0, 127.0, 0.02][: c.projection_class_embeddings_input_dim // c.addition_time_embed_dim]
    return dict(sample=s.randn(b, max(s.frames, 2), c.in_channels, size, size), timestep=torch.tensor(500.0, dtype=s.dtype),
                encoder_hidden_states=s.text(c.cross_attention_dim, 1), added_time_ids=torch.tensor([ids] * b, dtype=s.dtype))


def _cosmos(s: _Synth) -> dict:
    """CosmosTextToWorldPipeline: (B, C, F, H, W) latents, the frame rate, a padding mask in pixels."""
    c, b, size = s.c, s.batch, s.resolution or 16
    kw = dict(hidden_states=s.randn(b, c.in_channels, s.frames, size, size), timestep=s.full(500.0),
              encoder_hidden_states=s.text(c.text_embed_dim), fps=30)
    if c.concat_padding_mask:
        kw["padding_mask"] = torch.zeros(1, 1, size * 8, size * 8, dtype=s.dtype)
    return kw


def _kandinsky5(s: _Synth) -> dict:
    """Kandinsky5T2VPipeline: channels-last (B, F, H, W, C) latents, Qwen text and pooled CLIP, and the
    RoPE positions of the patch grid and of the text tokens."""
    c, b, size = s.c, s.batch, s.resolution or 16
    pt, ph, pw = c.patch_size
    return dict(hidden_states=s.randn(b, s.frames, size, size, c.in_visual_dim), encoder_hidden_states=s.text(c.in_text_dim),
                timestep=s.full(500.0), pooled_projections=s.randn(b, c.in_text_dim2),
                visual_rope_pos=[torch.arange(s.frames // pt), torch.arange(size // ph), torch.arange(size // pw)],
                text_rope_pos=torch.arange(s.text_tokens))


RULES: dict[str, Callable[[_Synth], dict]] = {
    "DiTTransformer2DModel": _dit, "PixArtTransformer2DModel": _pixart, "SD3Transformer2DModel": _sd3,
    "FluxTransformer2DModel": _flux, "ChromaTransformer2DModel": _flux, "BriaTransformer2DModel": _flux,
    "LongCatImageTransformer2DModel": _flux, "Flux2Transformer2DModel": _flux2,
    "WanTransformer3DModel": _wan, "ChronoEditTransformer3DModel": _wan,
    "QwenImageTransformer2DModel": _qwen_image, "LTXVideoTransformer3DModel": _ltx_video,
    "UNet2DConditionModel": _unet, "UNetMotionModel": _unet_motion, "UNetSpatioTemporalConditionModel": _unet_svd,
    "CogVideoXTransformer3DModel": _cogvideox, "CogView3PlusTransformer2DModel": _cogview,
    "CogView4Transformer2DModel": _cogview, "HiDreamImageTransformer2DModel": _hidream,
    "HunyuanDiT2DModel": _hunyuan_dit, "Lumina2Transformer2DModel": _lumina2, "LuminaNextDiT2DModel": _lumina_next,
    "OmniGenTransformer2DModel": _omnigen, "StableAudioDiTModel": _stable_audio, "CosmosTransformer3DModel": _cosmos,
    "Kandinsky5Transformer3DModel": _kandinsky5,
}


def synth_inputs(cls: str, config: dict, batch: int = 2, seed: int = 0, *, text_tokens: int = 8,
                 resolution: int | None = None, frames: int = 1, dtype: torch.dtype = torch.float32,
                 model: torch.nn.Module | None = None) -> dict:
    """Keyword inputs for a model class and config (no module needed, so artifacts can be sampled):
    the class's rule (:data:`RULES`), else :func:`signature_inputs`. The latent comes first."""
    rule = RULES.get(cls)
    if rule is not None:
        return rule(_Synth(cls, config, batch, seed, text_tokens, resolution, frames, dtype))
    return signature_inputs(cls, config, batch, seed, text_tokens=text_tokens, resolution=resolution, frames=frames,
                            dtype=dtype, model=model)


# config keys that give a text stream's width, in the order diffusers' classes use them
# (``caption_channels`` first: where a class has it, a caption projection maps it to ``cross_attention_dim``)
_TEXT_DIMS = ("joint_attention_dim", "caption_channels", "cross_attention_dim", "text_dim", "text_embed_dim",
              "encoder_hid_dim", "context_dim", "caption_projection_dim")


def signature_inputs(cls: str, config: dict, batch: int = 2, seed: int = 0, *, text_tokens: int = 8,
                     resolution: int | None = None, frames: int = 1, dtype: torch.dtype = torch.float32,
                     model: torch.nn.Module | None = None) -> dict:
    """Example inputs of any class from its forward signature and config.

    The forward's first argument is the latent: ``(B, in_channels, H, W)``, with a frame axis for
    a ``*3D*``/video class; ``timestep`` is a batch of mid-schedule values; ``encoder_hidden_states``
    a token sequence as wide as the config's text dimension; ``pooled_projections`` as wide as
    ``pooled_projection_dim``. Arguments with a default are left out. A required argument none of
    these rules covers is ambiguous: the error asks for ``--inputs FILE``.
    """
    g = torch.Generator().manual_seed(seed)
    c = _Config(config)
    forward = getattr(model, "forward", None) if model is not None else _forward_of(cls)
    params = [p for p in inspect.signature(forward).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    sample_size = c.get("sample_size")
    size = resolution or (sample_size if isinstance(sample_size, int) else 16)
    channels = c.get("in_channels") or c.get("in_dim") or c.get("num_channels_latents")
    video = "3D" in cls or "Video" in cls
    out: dict = {}
    for i, p in enumerate(params):
        name = p.name
        if i == 0:
            if not channels:
                break
            shape = (batch, channels, frames, size, size) if video else (batch, channels, size, size)
            out[name] = torch.randn(*shape, generator=g).to(dtype)
        elif name in ("timestep", "timesteps", "t"):
            out[name] = torch.full((batch,), 500.0, dtype=dtype)
        elif name == "encoder_hidden_states" and any(c.get(k) for k in _TEXT_DIMS):
            width = next(c.get(k) for k in _TEXT_DIMS if c.get(k))
            out[name] = torch.randn(batch, text_tokens, width, generator=g).to(dtype)
        elif name == "pooled_projections" and c.get("pooled_projection_dim"):
            out[name] = torch.randn(batch, c.pooled_projection_dim, generator=g).to(dtype)
        elif name == "encoder_attention_mask" and "encoder_hidden_states" in out and p.default is p.empty:
            out[name] = torch.ones(batch, text_tokens, dtype=dtype)  # every text token attended
        elif name == "guidance" and c.get("guidance_embeds"):
            out[name] = torch.full((batch,), 3.5, dtype=dtype)  # a model with a guidance embedding needs its input
        elif p.default is p.empty:
            break
    missing = [p.name for p in params if p.default is p.empty and p.name not in out]
    if missing or not out:
        raise ModelError(
            f"cannot build example inputs for {cls} from its forward signature and config: no rule for the required "
            f"input(s) {missing or [params[0].name if params else '?']}; pass them with {INPUTS_FILE_HELP} or use a "
            "pipeline directory (its own first denoiser call supplies them) or a pipeline with cachec.enable"
        )
    return out


def _parameters(cls: str) -> set[str]:
    return set(inspect.signature(_forward_of(cls)).parameters)


def _forward_of(cls: str):
    import diffusers

    found = getattr(diffusers, cls, None)
    if not (isinstance(found, type) and issubclass(found, diffusers.ModelMixin)):
        raise ModelError(f"model class {cls!r} is not a diffusers model class (diffusers {diffusers.__version__})")
    return found.forward
