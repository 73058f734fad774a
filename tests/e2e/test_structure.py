"""Regions, segments, weight ownership and FLOPs, checked against hand computations."""

import pytest
import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, UNet2DConditionModel

import cachec
from cachec.capture import capture
from cachec.models import example_inputs
from cachec.planner import compile_program
from cachec.policy import parse_policy
from cachec.program import Load, Run, Store


def _dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                                 attention_head_dim=8, num_embeds_ada_norm=10).eval()


@pytest.fixture(scope="module")
def dit_captured():
    """The small DiT and one capture of it; each test plans its policy on a copy, as
    ``cachec.build_program`` does after its own capture (one export for the module instead of two)."""
    m = _dit()
    return m, capture(m, example_inputs(m, 2))


def test_dit_regions_and_flops_by_hand(dit_captured):
    _, captured = dit_captured
    program = compile_program(captured.copy(), parse_policy("fora:2"))
    regions = {r["name"]: r for r in program.planned.regions}
    assert set(regions) == {f"transformer_blocks.{i}.{k}" for i in range(2) for k in ("attn1", "ff")}
    assert regions["transformer_blocks.0.attn1"]["kind"] == "attn"
    assert regions["transformer_blocks.0.ff"]["kind"] == "mlp"
    tokens, dim, heads, head_dim = (8 // 2) ** 2, 16, 2, 8
    # q, k, v, out projections + QK^T and AV
    attn = 4 * 2 * tokens * dim * dim + 2 * 2 * heads * tokens * tokens * head_dim
    ff = 2 * 2 * tokens * dim * 4 * dim
    assert regions["transformer_blocks.0.attn1"]["flops_per_sample"] == attn
    assert regions["transformer_blocks.1.ff"]["flops_per_sample"] == ff
    # the reuse path runs no region segment and reads every region output from a cache
    reuse = program.variants["reuse"]
    assert not any(isinstance(op, Run) and ("attn1" in op.segment or op.segment.endswith("_ff")) for op in reuse)
    assert sum(isinstance(op, Load) for op in reuse) == 4
    assert sum(isinstance(op, Store) for op in program.variants["full"]) == 4


def test_adaln_is_hoisted_and_every_parameter_has_one_segment(dit_captured):
    m, captured = dit_captured
    program = compile_program(captured.copy(), parse_policy("fbcache:0.1"))
    owners = {}
    for seg in program.segments.values():
        for name in seg.parameters():
            assert name not in owners, f"{name} in {owners.get(name)} and {seg.name}"
            owners[name] = seg.name
    # DiT calls transformer_blocks[0].norm1.emb again after the loop: hoisting puts it in the prologue
    # (segments that always run together are coalesced, so the prologue may carry block 0 along)
    # (a dynamic policy splits the prologue: what only its full tail reads goes to prologue_full)
    assert all(owners[n].split("-")[0] in ("prologue", "prologue_full") for n in owners if ".norm1." in n)
    # every model parameter is somewhere; the rest are buffers (the fixed position embedding)
    held = {n.removeprefix("denoiser.") for n in owners}
    assert {n for n, _ in m.named_parameters()} <= held
    assert held - {n for n, _ in m.named_parameters()} <= {n for n, _ in m.named_buffers()}
    # glue and cache segments carry no weights
    for seg in program.segments.values():
        if seg.role in ("glue", "cache", "probe"):
            assert not seg.parameters(), seg.name


def test_flux_single_blocks_cache_their_fused_output():
    torch.manual_seed(0)
    m = FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
                               guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    program = cachec.build_program(m, example_inputs(m, 2, text_tokens=5), "fora:3")
    kinds = {r["name"]: r["kind"] for r in program.planned.regions}
    assert kinds["transformer_blocks.0.attn"] == "attn"
    assert kinds["transformer_blocks.0.ff_context"] == "mlp"
    assert kinds["single_transformer_blocks.1.parallel"] == "mlp"
    assert program.planned.blocks == ["transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"]


def test_unet_blocks_include_the_declared_mid_block_and_cross_attention():
    torch.manual_seed(0)
    m = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=12,
                             block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=2, norm_num_groups=4,
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    program = cachec.build_program(m, example_inputs(m, 2, text_tokens=5), "none")
    assert program.planned.blocks == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    kinds = {r["name"].rsplit(".", 1)[-1]: r["kind"] for r in program.planned.regions}
    assert kinds["attn2"] == "cross_attn" and kinds["attn1"] == "attn"


def test_shape_and_dtype_errors_are_clear():
    m = _dit()
    rt = cachec.compile(m, example_inputs(m, 2), "none")
    bad = example_inputs(m, 2)
    bad["hidden_states"] = torch.randn(2, 4, 6, 6)
    with pytest.raises(cachec.ShapeError, match=r"shape \(2, 4, 6, 6\).*accepts \('B', 4, 8, 8\)"):
        rt(**bad)
    bad = example_inputs(m, 2)
    bad["hidden_states"] = bad["hidden_states"].double()
    with pytest.raises(cachec.ShapeError, match="dtype"):
        rt(**bad)


def test_batch_is_dynamic_and_a_batch_change_resets_the_trajectory(caplog):
    m = _dit()
    rt = cachec.compile(m, example_inputs(m, 2), "fora:3", num_steps=10)
    for batch in (1, 3):
        kw = example_inputs(m, batch, seed=batch)
        with torch.no_grad():
            ref = m(**kw, return_dict=False)[0]
        torch.testing.assert_close(rt(**kw)[0], ref, atol=1e-5, rtol=1e-5)
    assert rt.stats.schedule == "F"  # the batch change started a new trajectory with a full step
    assert "input shapes changed" in caplog.text
