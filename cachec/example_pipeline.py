"""``cachec example-pipeline KIND DIR``: a small, complete diffusers pipeline written to a local folder.

Why: ``cachec run PIPELINE_DIR --prompt`` needs a pipeline directory, and offline there is no
other way to get one. These are real pipeline classes (``FluxPipeline``, ``PixArtAlphaPipeline``,
``CogView3PlusPipeline``) with every component — tokenizers built here from a tiny vocabulary,
random-weight text encoders, a 2-block denoiser, an 8x VAE — so the prompt → image path runs end
to end in seconds on a CPU, and nothing reaches a model hub. Their weights are random: the images
are noise, and the fidelity a policy gets on them (PSNR/SSIM against the plain pipeline) says
nothing about image quality on a trained model. The tests build their pipelines from here too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch

from .errors import CachecError
from .progress import library_bars_off_terminal

try:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
except ImportError as exc:  # transformers is in the dev extra, not a core dependency
    raise CachecError(f"cachec example-pipeline needs transformers ({exc}); install it with: "
                      "pip install transformers") from None

WORDS = "a an the of in on with red blue green small big cat dog house tree photo painting".split()


def _noised(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Random weights around 1 for norm scales, small noise elsewhere (adaLN-zero gates are no identity)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name and name.endswith("weight")):
                p.copy_(1 + std * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return module.eval()


def t5_tokenizer() -> T5TokenizerFast:
    """A SentencePiece-style Unigram vocabulary: the special tokens, the word-start marker, a few
    words and single letters (any other character is <unk>)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE tokenizer with no merges: every character is a token (the CLIP scheme, tiny)."""
    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=77)


def t5_encoder(vocab_size: int, d_model: int) -> T5EncoderModel:
    torch.manual_seed(2)
    return _noised(T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model, num_layers=1,
                                           num_heads=2, d_kv=d_model // 2, relative_attention_num_buckets=8,
                                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)))


def vae(latent_channels: int, **extra) -> diffusers.AutoencoderKL:
    """Four levels (an 8x VAE, as the real ones), 8 channels each."""
    torch.manual_seed(1)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), **extra).eval()


def flux_pipeline():
    """FluxPipeline: CLIP + T5 text encoders, a 2 + 2 block FLUX transformer, an 8x VAE with 16 latent channels."""
    clip_tok = clip_tokenizer()
    t5_tok = t5_tokenizer()
    torch.manual_seed(3)
    clip = _noised(CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)))
    torch.manual_seed(0)
    transformer = _noised(diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6)))
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae(16, shift_factor=0.0, scaling_factor=1.0),
        text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5_encoder(len(t5_tok), 32), tokenizer_2=t5_tok,
        transformer=transformer)
    return pipe


def pixart_pipeline():
    """PixArtAlphaPipeline: a T5 text encoder, a 2-block PixArt transformer for 256² images, an 8x VAE."""
    t5_tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = _noised(diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=32,
        patch_size=2, cross_attention_dim=16, caption_channels=32, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate",
        use_additional_conditions=False))
    pipe = diffusers.PixArtAlphaPipeline(
        tokenizer=t5_tok, text_encoder=t5_encoder(len(t5_tok), 32), vae=vae(4), transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler())
    return pipe


def cogview3plus_pipeline():
    """CogView3PlusPipeline: a T5 text encoder, a 2-block CogView3-Plus transformer whose size conditioning
    (``original_size``, ``target_size``, ``crop_coords``) its forward signature does not describe, an 8x VAE."""
    t5_tok = t5_tokenizer()
    torch.manual_seed(0)
    transformer = _noised(diffusers.CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2, out_channels=4,
        text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=8))
    pipe = diffusers.CogView3PlusPipeline(
        tokenizer=t5_tok, text_encoder=t5_encoder(len(t5_tok), 8), vae=vae(4), transformer=transformer,
        scheduler=diffusers.CogVideoXDDIMScheduler())
    return pipe


KINDS = {"flux": flux_pipeline, "pixart": pixart_pipeline, "cogview3plus": cogview3plus_pipeline}


def write(kind: str, out: str | Path, force: bool = False) -> Path:
    """Build the ``kind`` pipeline and save it to ``out`` atomically (a temporary folder, then a rename)."""
    if kind not in KINDS:
        raise CachecError(f"unknown example pipeline {kind!r}; known: {', '.join(KINDS)}")
    from .output_dir import check_replaceable, is_pipeline

    out = Path(out)
    # --force replaces only a pipeline folder or an empty one: never user files, the cwd or above
    check_replaceable(out, force, replaceable=is_pipeline, what="a saved pipeline (no model_index.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        library_bars_off_terminal()
        KINDS[kind]().save_pretrained(tmp)
        from .file_modes import follow_umask

        follow_umask(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_flux(root: Path) -> Path:
    """``root/flux``: what the tests load (kept under the name they use)."""
    return write("flux", Path(root) / "flux")


def save_pixart(root: Path) -> Path:
    return write("pixart", Path(root) / "pixart")


def save_cogview3plus(root: Path) -> Path:
    return write("cogview3plus", Path(root) / "cogview3plus")
