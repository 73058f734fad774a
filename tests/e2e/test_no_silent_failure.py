"""No silent failure on classes outside the tested family (issue 22, item 8).

Three diffusers classes whose structure used to fool cachec without a word, each at a tiny config:

* ``StableCascadeUNet``: its blocks are flat lists mixing ResBlocks and attention, so FORA and
  TaylorSeer found nothing to cache and planned ``reuse`` steps that ran the whole model (NFE =
  steps, the schedule claiming reuse). Such a plan is refused, naming the class and the policy.
* ``ZImageTransformer2DModel``: returns a list of per-sample tensors; the runtime returned sample 0's.
* ``Kandinsky5Transformer3DModel``: its first blocks are text-encoder blocks, which never read the
  latent; FBCache/TeaCache probed them.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

import cachec
from cachec.errors import PolicyError

pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded small weights (norm scales ~1, the rest ~0): no block is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") and p.dim() == 1 else noise)
    return model.eval().float()


def _r(g, *shape):
    return torch.randn(*shape, generator=g)


def stable_cascade(batch: int = 2):
    torch.manual_seed(0)
    model = diffusers.StableCascadeUNet(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=8, patch_size=1, conditioning_dim=16,
        block_out_channels=(16, 16), num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1), clip_text_pooled_in_channels=8, clip_seq=2, self_attn=True,
        dropout=(0.0, 0.0), timestep_conditioning_type=("sca",))
    g = torch.Generator().manual_seed(1)
    kw = dict(sample=_r(g, batch, 4, 8, 8), timestep_ratio=torch.full((batch,), 0.5),
              clip_text_pooled=_r(g, batch, 1, 8))
    return _seeded(model), kw


# -- (1) a plan that reuses nothing is refused -----------------------------------------------------
@pytest.mark.parametrize("policy", ["fora:3", "taylorseer"])
def test_a_plan_that_reuses_nothing_is_refused(policy):
    model, kw = stable_cascade()
    with pytest.raises(PolicyError, match=rf"{policy.split(':')[0]}.*StableCascadeUNet reuses nothing"):
        cachec.compile(model, kw, policy, num_steps=6)


def test_the_class_still_runs_uncached():
    model, kw = stable_cascade()
    rt = cachec.compile(model, kw, "none", num_steps=3)
    with torch.no_grad():
        want = model(**kw, return_dict=False)[0]
        got = [rt(**kw)[0] for _ in range(3)][-1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert rt.stats.schedule == "FFF"


# -- (2) outputs are returned whole ----------------------------------------------------------------
def z_image(batch: int = 2):
    torch.manual_seed(0)
    model = diffusers.ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=8, axes_dims=[4, 2, 2], axes_lens=[128, 32, 32])
    g = torch.Generator().manual_seed(1)
    # the pipeline passes lists of per-sample latents and captions; a stacked tensor iterates the same way
    kw = dict(x=_r(g, batch, 4, 1, 8, 8), t=torch.full((batch,), 0.5), cap_feats=_r(g, batch, 6, 8))
    model = _seeded(model)
    with torch.no_grad():  # its RoPE table is built on the first call, which export cannot trace
        model(**kw, return_dict=False)
    return model, kw


@pytest.mark.slow  # ~13 s: export, then an artifact saved and planned again
def test_a_list_of_per_sample_outputs_is_returned_whole(tmp_path):
    from cachec import artifact
    from cachec.capture import capture
    from cachec.planner import compile_program
    from cachec.policy import parse_policy
    from cachec.runtime import CacheRuntime, signature_of

    model, kw = z_image()
    captured = capture(model, kw)
    program = compile_program(captured.copy(), parse_policy("none"))
    rt = CacheRuntime(program, "none", signature=signature_of(model), num_steps=2)
    with torch.no_grad():
        want = model(**kw, return_dict=False)[0]
        got = rt(**kw, return_dict=False)[0]
    assert isinstance(want, list) and len(want) == 2
    assert isinstance(got, list) and len(got) == len(want), f"got {type(got).__name__} of {len(got)}, not every sample"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"sample {i}: {m}")
    assert isinstance(rt(**kw).sample, list)  # return_dict=True too
    # an artifact keeps the form, for its own policy and for one planned again from it
    out = artifact.save(tmp_path / "art", program, captured, "ZImageTransformer2DModel", signature_of(model))
    for policy in (None, "fora:2"):
        loaded, _ = artifact.load_program(out, policy)
        assert loaded.model.output_form == "list", policy


class _Returns(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.proj, self.make = torch.nn.Linear(4, 4), make

    def forward(self, hidden_states, return_dict=True):
        y = self.proj(hidden_states)
        return (self.make(y),)


@pytest.mark.parametrize("make, message", [
    (lambda y: {"sample": y, "extra": y}, r"returns a dict \(sample, extra\)"),
    (lambda y: [y, y[:, :1]], r"returns a list of 2 tensors of different shapes"),
])
def test_an_output_cachec_cannot_return_whole_is_refused_at_capture(make, message):
    from cachec.errors import ModelError

    with pytest.raises(ModelError, match=message):
        cachec.compile(_Returns(make), dict(hidden_states=torch.randn(2, 3, 4)), "none")


# -- (3) probes sit on the first block that reads the latent ---------------------------------------
def kandinsky5(batch: int = 2):
    torch.manual_seed(0)
    model = diffusers.Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=8, in_text_dim2=8, time_dim=8, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 2, 2))
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=_r(g, batch, 1, 8, 8, 4), encoder_hidden_states=_r(g, batch, 6, 8),
              timestep=torch.full((batch,), 999.0), pooled_projections=_r(g, batch, 8),
              visual_rope_pos=[torch.arange(1), torch.arange(4), torch.arange(4)], text_rope_pos=torch.arange(6))
    return _seeded(model), kw


def _trajectory(call, kw, steps):
    x, outs = kw["hidden_states"].clone(), []
    for t in torch.linspace(999.0, 0.0, steps):
        out = call(dict(kw, hidden_states=x, timestep=torch.full_like(kw["timestep"], float(t))))
        outs.append(out.clone())
        x = x - out / steps
    return outs


def test_the_probe_block_is_the_first_that_reads_the_latent():
    from cachec.capture import capture
    from cachec.planner import Planner

    model, kw = kandinsky5()
    planner = Planner(capture(model, kw))
    assert planner.blocks[0] == "text_transformer_blocks.0"  # the text encoder's block runs first
    assert planner.blocks[planner.first_latent_block()] == "visual_transformer_blocks.0"


def test_teacache_probes_the_image_stream_and_reuses_it():
    model, kw = kandinsky5()
    steps = 6
    rt = cachec.compile(model, kw, "teacache:100", num_steps=steps)
    with torch.no_grad():
        plain = _trajectory(lambda k: model(**k, return_dict=False), kw, steps)
    got = _trajectory(lambda k: rt(**k, return_dict=False)[0], kw, steps)
    assert rt.stats.schedule == "FRRRRF"  # the accumulated distance never reaches 100; final=1
    torch.testing.assert_close(got[0], plain[0], rtol=1e-4, atol=1e-5)
    assert max(float((a - b).abs().max()) for a, b in zip(got, plain, strict=True)) > 1e-4  # reuse replaced work


def test_fbcache_names_the_image_block_it_cannot_probe():
    """Kandinsky 5 flattens the image tokens on the way into its first visual block, so that block
    has no residual of its input's shape: FBCache says so about *that* block, not the text block."""
    from cachec.errors import ModelError

    model, kw = kandinsky5()
    with pytest.raises(ModelError, match=r"fbcache: blocks 1\.\.1 have no residual stream"):
        cachec.compile(model, kw, "fbcache:0.05", num_steps=4)
