"""The passes and ``program.split``/``split_segment`` on the hand-built toy denoiser of
``toy_graphs.py``, against expectations worked out by hand (no export: each test takes
milliseconds; the first symbolic trace pays torch's one-time set-up)."""

import pytest
import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx
from toy_graphs import ORDER, inputs, op, run_segments, segmented, toy_denoiser

from cachec.errors import ModelError
from cachec.graph_keys import COND_KEY, SEGMENT_KEY
from cachec.passes import DedupeConditioning, HoistConditioning, PassManager, StripExportArtifacts
from cachec.passes.infra import PassError
from cachec.planner.split import split, split_segment
from cachec.program import Segment

aten = torch.ops.aten


# -- passes --------------------------------------------------------------------------------------
def test_hoist_conditioning_moves_the_timestep_embedding_first_and_tags_it():
    gm = toy_denoiser()
    PassManager([HoistConditioning(["x"])])(gm)
    calls = [(n.name, n.meta[COND_KEY]) for n in gm.graph.nodes if n.op == "call_function"]
    assert calls == [("e", True)] + [(name, False) for name in ["h0", "n0", "a0", "h1", "n1", "a1", "h2", "out"]]
    kw = inputs()
    torch.testing.assert_close(gm(**kw)[0], toy_denoiser()(**kw)[0])  # same weights: the toy is seeded


def test_hoist_conditioning_requires_its_stream_inputs_to_be_graph_inputs():
    with pytest.raises(PassError, match=r"stream inputs \['latent'\] are not placeholders"):
        HoistConditioning(["latent"])(toy_denoiser())


def test_assign_segments_cuts_each_block_into_glue_and_region_segments():
    gm, order = segmented(toy_denoiser())
    assert order == ORDER
    tags = [(n.name, n.meta[SEGMENT_KEY]) for n in gm.graph.nodes if n.op == "call_function"]
    assert tags == [("e", "prologue"), ("h0", "prologue"),
                    ("n0", "b0_g0"), ("a0", "b0_attn"), ("h1", "b0_g1"),
                    ("n1", "b1_g0"), ("a1", "b1_attn"), ("h2", "b1_g1"),
                    ("out", "epilogue")]


def test_assign_segments_refuses_a_block_that_runs_again_after_the_next_one():
    gm = toy_denoiser()
    h2 = next(n for n in gm.graph.nodes if n.name == "h2")
    h2.meta["nn_module_stack"] = {"blocks.0": ("blocks.0", "Module")}  # block 1's residual add, by block 0
    with pytest.raises(PassError, match="runs after blocks.1: a module is reused out of order"):
        segmented(gm)


def test_strip_export_artifacts_removes_asserts_and_unused_symbolic_inputs():
    gm = toy_denoiser()
    g = gm.graph
    x = next(n for n in g.nodes if n.name == "x")
    with g.inserting_after(x):
        g.call_function(aten._assert_tensor_metadata.default, (x,), {"dtype": torch.float32})
    with g.inserting_before(x):
        size = g.placeholder("s0")  # an input that carried a size, used by nothing once asserts are gone
    size.meta["val"] = 3
    kw = inputs()
    want = toy_denoiser()(**kw)[0]
    result = PassManager([StripExportArtifacts()])(gm)
    assert result.modified
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "t"]
    assert aten._assert_tensor_metadata.default not in {n.target for n in gm.graph.nodes}
    torch.testing.assert_close(gm(**kw)[0], want)


# -- program.split -------------------------------------------------------------------------------
def test_split_gives_each_segment_its_values_and_weights_and_computes_the_same_output():
    kw = inputs()
    want = toy_denoiser()(**kw)[0]
    gm, order = segmented(toy_denoiser())
    segments = split(gm, order, "out")
    io = {name: (s.inputs, s.outputs, sorted(s.parameters())) for name, s in segments.items()}
    assert io == {
        "prologue": (["t", "x"], ["e", "h0"], []),
        "b0_g0": (["h0", "e"], ["n0"], []),
        "b0_attn": (["n0"], ["a0"], ["w0"]),
        "b0_g1": (["h0", "a0"], ["h1"], []),
        "b1_g0": (["h1", "e"], ["n1"], []),
        "b1_attn": (["n1"], ["a1"], ["w1"]),
        "b1_g1": (["h1", "a1"], ["h2"], []),
        "epilogue": (["h2"], ["out"], []),
    }
    assert segments["b0_attn"].parameters()["w0"] is gm.w0  # shared, not copied
    torch.testing.assert_close(run_segments(segments, order, kw)["out"], want)


def test_split_refuses_a_weight_read_by_two_segments():
    shared = torch.randn(4, 4)
    gm = toy_denoiser([shared, shared])
    a1 = next(n for n in gm.graph.nodes if n.name == "a1")
    a1.args = (a1.args[0], next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == "w0"))
    gm.graph.eliminate_dead_code()
    gm, order = segmented(gm)
    with pytest.raises(ModelError, match="parameter w0 is used by segments b0_attn and b1_attn"):
        split(gm, order, "out")


def _one_block_segment(weight_in_norm: bool) -> Segment:
    """Block 0 as one segment ``n = h * e (* w); a = n @ w; y = h + a``; outputs ``y``."""
    root = torch.nn.Module()
    root.register_buffer("w", torch.randn(4, 4))
    g = fx.Graph()
    h, e = g.placeholder("h"), g.placeholder("e")
    w = g.get_attr("w")
    n = op(g, "n", aten.mul.Tensor, (h, e))
    if weight_in_norm:
        n = op(g, "nw", aten.mul.Tensor, (n, w))
    a = op(g, "a", aten.mm.default, (n, w))
    y = op(g, "y", aten.add.Tensor, (h, a))
    g.output((y,))
    gm = fx.GraphModule(root, g)
    gm.meta["cachec_output_names"] = ["y"]
    return Segment("b0", gm, role="glue")


def test_split_segment_cuts_at_an_inner_value_which_the_rest_reads_as_an_input():
    seg = _one_block_segment(weight_in_norm=False)
    kw = {"h": torch.randn(3, 4), "e": torch.randn(3, 4)}
    head, tail = split_segment(seg, {"n"}, "b0_rest")
    assert (head.name, head.inputs, head.outputs, sorted(head.parameters())) == ("b0", ["h", "e"], ["n"], [])
    assert (tail.name, tail.inputs, tail.outputs, sorted(tail.parameters())) == ("b0_rest", ["n", "h"], ["y"], ["w"])
    (n,) = head.module(**kw)
    torch.testing.assert_close(n, kw["h"] * kw["e"])
    torch.testing.assert_close(tail.module(n, kw["h"])[0], seg.module(**kw)[0])


def test_split_segment_keeps_a_weight_and_all_its_readers_in_the_first_part():
    """The cut value ``nw = (h * e) * w`` reads ``w`` itself, so ``a = nw @ w`` comes along and
    only the residual add is left for the second part, which reads ``a`` (and not ``nw``)."""
    seg = _one_block_segment(weight_in_norm=True)
    head, tail = split_segment(seg, {"nw"}, "b0_rest")
    assert (head.outputs, sorted(head.parameters())) == (["a"], ["w"])
    assert (tail.inputs, tail.outputs, tail.parameters()) == (["h", "a"], ["y"], {})
    kw = {"h": torch.randn(4, 4), "e": torch.randn(4, 4)}
    (a,) = head.module(**kw)
    torch.testing.assert_close(tail.module(kw["h"], a)[0], seg.module(**kw)[0])


def test_split_segment_moves_nothing_when_everything_is_needed():
    seg = _one_block_segment(weight_in_norm=False)
    assert split_segment(seg, {"y"}, "b0_rest") == (seg, None)


def test_a_batch_size_crossing_a_segment_boundary_is_re_read_from_a_tensor_input():
    """``y = (x * 2).reshape(B, -1) + 1`` with a symbolic batch ``B``: the second segment gets no
    size input; it reads ``B`` from the shape of the tensor it receives."""
    gm = make_fx(lambda x: ((x * 2).reshape(x.shape[0], -1) + 1,), tracing_mode="symbolic")(torch.randn(3, 2, 2))
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [aten.mul.Tensor, aten.sym_size.int, aten.view.default, aten.add.Tensor]
    for n, seg in zip(calls, ["a", "a", "b", "b"], strict=True):  # the size is read in a, used in b
        n.meta[SEGMENT_KEY] = seg
    segments = split(gm, ["a", "b"], "y")
    assert (segments["a"].inputs, segments["a"].outputs) == (["x_1"], ["mul"])  # the size is not an output
    assert (segments["b"].inputs, segments["b"].outputs) == (["mul"], ["y"])
    reread = [n for n in segments["b"].module.graph.nodes if n.target is aten.sym_size.int]
    assert [(n.args[0].name, n.args[1]) for n in reread] == [("mul", 0)]
    x = torch.randn(5, 2, 2)  # another batch than the traced one
    torch.testing.assert_close(run_segments(segments, ["a", "b"], {"x_1": x})["y"], x.reshape(5, -1) * 2 + 1)


def test_split_names_a_node_with_an_unknown_segment():
    gm, order = segmented(toy_denoiser())
    with pytest.raises(ModelError, match=r"tagged with unknown segment 'epilogue'"):
        split(gm, order[:-1], "out")



def _graph_with_two_timestep_embeddings() -> fx.GraphModule:
    """Two blocks each embed ``t`` (``sin(t * 2)``, as DiT's per-block embeddings), each builds a
    table in place (``arange(4).div_(2)``), and two identical stream ops read ``x``."""
    g = fx.Graph()
    x, t = g.placeholder("x"), g.placeholder("t")
    outs = []
    for i in range(2):
        s = op(g, f"sin{i}", aten.sin.default, (op(g, f"scaled{i}", aten.mul.Tensor, (t, 2)),))
        table = g.create_node("call_function", aten.arange.default, (4,), {"dtype": torch.float32}, name=f"table{i}")
        op(g, f"halved{i}", aten.div_.Scalar, (table, 2))
        stream = op(g, f"stream{i}", aten.mul.Tensor, (x, 3))
        outs += [op(g, f"out{i}", aten.add.Tensor, (op(g, f"mod{i}", aten.mul.Tensor, (stream, s)), table))]
    g.output(tuple(outs))
    return fx.GraphModule(torch.nn.Module(), g)


def test_dedupe_conditioning_merges_identical_embeddings_but_no_stream_op_or_in_place_table():
    gm = _graph_with_two_timestep_embeddings()
    kw = {"x": torch.randn(2, 4), "t": torch.randn(2, 1)}
    want = gm(**kw)
    PassManager([HoistConditioning(["x"]), DedupeConditioning()])(gm)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function"]
    assert "scaled1" not in names and "sin1" not in names  # block 1 reads block 0's embedding
    assert {"table0", "table1", "halved0", "halved1", "stream0", "stream1"} <= set(names)
    assert next(n for n in gm.graph.nodes if n.name == "mod1").args[1].name == "sin0"
    for got, w in zip(gm(**kw), want, strict=True):
        torch.testing.assert_close(got, w)


def test_dedupe_conditioning_requires_the_hoisting_marks():
    with pytest.raises(PassError, match="needs HoistConditioning's marks"):
        DedupeConditioning()(_graph_with_two_timestep_embeddings())


def test_split_generates_no_segment_code_until_a_segment_runs(monkeypatch):
    """Planning cuts a module per segment (about 250 on FLUX.1-dev) and merges most away unrun:
    their Python code is generated when one first runs (or is read), not when it is cut. Code
    generation at construction was about half of planning (issue 23, item 10)."""
    kw = inputs()
    want = toy_denoiser()(**kw)[0]
    gm, order = segmented(toy_denoiser())
    generated = []
    real = fx.Graph.python_code
    monkeypatch.setattr(fx.Graph, "python_code", lambda self, *a, **k: generated.append(self) or real(self, *a, **k))
    segments = split(gm, order, "out")
    assert generated == []
    torch.testing.assert_close(run_segments(segments, order, kw)["out"], want)
    assert len(generated) == len(order)  # each once, when it ran
    assert "torch.ops.aten.mm.default" in segments["b0_attn"].module.code
