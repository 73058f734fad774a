"""Structure instead of names: the rules of cachec/structure.py and what they let any class do,
on captured models (the rules that need no export are in ``unit/test_any_class.py``).

Each rule is checked against a hand-built case: a model that counts its timestep up, one that
bakes its batch size into its code, one that branches on a tensor's value, a parallel block in a
class other than FLUX, cross-attention found from the graph, and a class outside the six through
``enable``.
"""

import logging

import pytest
import torch
from diffusers import DiTTransformer2DModel
from family_models import inputs as family_inputs
from family_models import make as make_family

import cachec
from cachec.capture import capture

pytestmark = pytest.mark.usefixtures("one_thread")


def _dit(cls=DiTTransformer2DModel):
    torch.manual_seed(0)
    m = cls(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
            attention_head_dim=8, num_embeds_ada_norm=10).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


def _kw(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 4, 8, 8, generator=g), timestep=torch.full((batch,), 500),
                class_labels=torch.arange(batch) % 10)


def test_an_increasing_timestep_caches_and_a_restart_is_a_new_trajectory():
    """Flow-matching pipelines may pass 1 − t/1000: the direction is learned from the first two steps."""
    m = _dit()
    rt = cachec.compile(m, _kw(), "fora:3")  # no num_steps: trajectories are told apart by the timestep alone
    for _ in range(2):
        for t in range(0, 900, 100):  # 9 increasing steps, then the same trajectory again
            rt(**dict(_kw(), timestep=torch.full((2,), t)))
    assert [h.schedule for h in rt.history] == ["FRRFRRFRR", "FRRFRRFRR"]
    rt.reset()
    for t in range(900, 0, -100):  # decreasing, as before
        rt(**dict(_kw(), timestep=torch.full((2,), t)))
    assert rt.stats.schedule == "FRRFRRFRR"


class BatchBakedDiT(DiTTransformer2DModel):
    """Specialises the batch in Python (as ``torch.tensor([0] * batch_size)`` in some forwards)."""

    def forward(self, hidden_states, timestep, class_labels, return_dict=True):
        offset = torch.tensor([0] * hidden_states.shape[0])
        return super().forward(hidden_states, timestep + offset, class_labels, return_dict=return_dict)


def test_a_model_that_specialises_its_batch_is_captured_statically(caplog):
    m = _dit(BatchBakedDiT)
    with caplog.at_level(logging.INFO, logger="cachec"):
        rt = cachec.compile(m, _kw(2), "none")
    assert "statically" in caplog.text and "BatchBakedDiT" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(rt(**_kw(2, seed=1))[0], m(**_kw(2, seed=1), return_dict=False)[0])
    with pytest.raises(cachec.ShapeError, match="shape"):
        rt(**_kw(3))


class BranchingDiT(DiTTransformer2DModel):
    def forward(self, hidden_states, timestep, class_labels, return_dict=True):
        if hidden_states.sum() > 0:  # Python control flow on a tensor's value
            hidden_states = -hidden_states
        return super().forward(hidden_states, timestep, class_labels, return_dict=return_dict)


def test_a_capture_failure_names_the_construct():
    with pytest.raises(cachec.ModelError, match="BranchingDiT.*data-dependent Python control flow"):
        cachec.compile(_dit(BranchingDiT), _kw(), "none")


def test_a_parallel_block_outside_flux_is_found_from_the_graph():
    """Bria's single blocks: attention ∥ MLP from one norm, concatenated into proj_out."""
    m = make_family("BriaTransformer2DModel")
    program = cachec.build_program(m, family_inputs("BriaTransformer2DModel", 2), "fora:3")
    regions = {r["name"]: r for r in program.planned.regions}
    single = regions["single_transformer_blocks.1.parallel"]
    assert single["kind"] == "mlp"
    assert [mod.rsplit(".", 1)[-1] for mod in single["modules"]] == ["attn", "proj_mlp", "act_mlp", "proj_out"]
    assert regions["transformer_blocks.0.attn"]["kind"] == "attn"  # joint attention: keys depend on the latent


def test_a_parallel_block_whose_attention_reads_slices_and_joins_its_outputs_is_found():
    """HunyuanVideo's single blocks slice the normalised stream into image and text tokens for the
    attention and concatenate its two outputs before they meet the MLP branch in proj_out. Found
    as one parallel region, a FORA cached step skips the MLP half too (it skipped only the
    attention before: half of a full step's FLOPs)."""
    m = make_family("HunyuanVideoTransformer3DModel")
    program = cachec.build_program(m, family_inputs("HunyuanVideoTransformer3DModel", 2), "fora:3")
    regions = {r["name"]: r for r in program.planned.regions}
    single = [r for name, r in regions.items() if name.startswith("single_transformer_blocks.")]
    assert single and all(r["name"].endswith(".parallel") for r in single)
    assert [mod.rsplit(".", 1)[-1] for mod in single[0]["modules"]] == ["attn", "proj_mlp", "act_mlp", "proj_out"]
    assert program.variant_flops("reuse") / program.variant_flops("full") < 0.2


def test_cross_attention_is_where_keys_come_from_another_stream():
    m = make_family("SanaTransformer2DModel")
    cap = capture(m, family_inputs("SanaTransformer2DModel", 2))
    assert cap.latent_input == "hidden_states" and cap.stream_inputs == ["hidden_states", "encoder_hidden_states"]
    assert cap.cross_attention == {"transformer_blocks.0.attn2", "transformer_blocks.1.attn2"}


class _Pipe:
    def __init__(self, transformer):
        self.transformer = transformer


def test_enable_accepts_a_class_outside_the_six():
    m = make_family("SanaTransformer2DModel")
    pipe = cachec.enable(_Pipe(m), "none")
    kw = family_inputs("SanaTransformer2DModel", 1)
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(**kw, return_dict=False)[0], m(**kw, return_dict=False)[0])
