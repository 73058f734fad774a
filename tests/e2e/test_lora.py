"""LoRA end to end: the diffusers LoRA API on a pipeline after ``cachec.enable``.

Two tiny FLUX pipelines with the same weights, one plain and one with ``cachec.enable``, get the
same LoRA calls (``load_lora_weights`` of two adapters, ``set_adapters`` weights, a scale per
call, ``fuse_lora``, ``unfuse_lora``, ``unload_lora_weights``); after each, the cached pipeline
under ``none`` equals the plain one bit for bit. The LoRAs are random A/B matrices in the
diffusers/PEFT format made here (nothing reaches a hub).
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from small_loras import lora_state_dict
from small_models import make

import cachec

pytestmark = pytest.mark.slow  # each change is a new capture of the pipeline's denoiser


def _embeds(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _flux():
    pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=make("flux"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


KW = dict(prompt_embeds=_embeds(1, 5, 12, seed=3), pooled_prompt_embeds=_embeds(1, 6, seed=4), guidance_scale=3.5,
          height=64, width=64, output_type="latent", num_inference_steps=3)


def test_the_lora_api_works_after_enable_and_equals_the_plain_pipeline():
    plain, cached = _flux(), _flux()
    cachec.enable(cached, "none")
    lora_a = lora_state_dict(plain.transformer, seed=1)
    lora_b = lora_state_dict(plain.transformer, seed=2)

    def both(call):
        call(plain)
        call(cached)

    def assert_equal(**extra):
        want = plain(**KW, **extra, generator=torch.Generator().manual_seed(0)).images
        got = cached(**KW, **extra, generator=torch.Generator().manual_seed(0)).images
        assert torch.equal(got, want), (got - want).abs().max()

    assert_equal()
    both(lambda p: p.load_lora_weights(dict(lora_a), adapter_name="a"))
    assert_equal()
    both(lambda p: p.load_lora_weights(dict(lora_b), adapter_name="b"))
    both(lambda p: p.set_adapters(["a", "b"], [0.7, -0.4]))
    assert cached.get_list_adapters() == {"transformer": ["a", "b"]}
    assert cached.get_active_adapters() == ["a", "b"]
    assert_equal()
    assert_equal(joint_attention_kwargs={"scale": 0.5})  # a runtime of its own for this scale
    both(lambda p: p.fuse_lora(lora_scale=0.9))
    assert_equal()
    both(lambda p: p.unfuse_lora())
    assert_equal()
    both(lambda p: p.unload_lora_weights())
    assert cached.get_list_adapters() == {}
    assert_equal()
    assert isinstance(cached.transformer, cachec.CachedDenoiser)
    rebuilds = sum(rt.watch.rebuilds for rt in cached.transformer.runtimes.values())
    assert rebuilds >= 5  # each change above recompiled (none was served stale)


def _fused(model_dir, loras: list[str]):
    """The plain model with ``loras`` fused the way ``cachec compile --lora`` fuses them."""
    from cachec.lora import fuse_lora_files

    model = diffusers.FluxTransformer2DModel.from_pretrained(model_dir).eval()
    fuse_lora_files(model, loras)
    return model


def test_compile_fuses_loras_and_an_artifact_swaps_in_new_weights(tmp_path):
    from safetensors.torch import save_file

    import cachec.cli
    from cachec.models import example_inputs

    model = make("flux")
    model.save_pretrained(tmp_path / "model")
    save_file(lora_state_dict(model, seed=1), str(tmp_path / "a.safetensors"))  # keys "transformer.…"
    save_file({k.split(".", 1)[1]: v for k, v in lora_state_dict(model, seed=2).items()},
              str(tmp_path / "b.safetensors"))  # keys without a prefix
    loras = [f"{tmp_path / 'a.safetensors'}:0.5", str(tmp_path / "b.safetensors")]
    args = ["compile", str(tmp_path / "model"), "--out", str(tmp_path / "art")]
    assert cachec.cli.main(args + [x for lora in loras for x in ("--lora", lora)]) == 0
    kw = example_inputs(model, 1, 0)

    def plain(m):
        with torch.no_grad():
            return m(**kw, return_dict=False)[0]

    fused = _fused(tmp_path / "model", loras)
    assert (plain(fused) - plain(model)).abs().max() > 1e-3  # the LoRAs change the output
    for backend in ("eager", "inductor"):
        rt = cachec.load(tmp_path / "art", backend=backend)
        tol = dict(atol=0, rtol=0) if backend == "eager" else dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rt(**kw)[0], plain(fused), **tol)
        variants = dict(rt.variants)
        other = _fused(tmp_path / "model", [f"{tmp_path / 'a.safetensors'}:-1.5"])
        rt.load_weights(other.state_dict())
        cachec.reset(rt)
        torch.testing.assert_close(rt(**kw)[0], plain(other), **tol)
        assert rt.variants == variants  # nothing was lowered again
    with pytest.raises(cachec.ShapeError, match="not weights of this program"):
        rt.load_weights({"no.such.weight": torch.zeros(1)})
    with pytest.raises(cachec.ShapeError, match="compiled with"):
        rt.load_weights({"proj_out.weight": torch.zeros(3, 3)})
    assert cachec.cli.main(args + ["--force", "--lora", str(tmp_path / "missing.safetensors")]) != 0
