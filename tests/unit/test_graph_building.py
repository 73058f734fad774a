"""Graph building outside passes (issue 23, item 3) on small hand-built FX graphs: every built graph
is linted once (:func:`passes.infra.build_module`), the planner's cuts (:mod:`cachec.planner.split`)
build through it, and :class:`PassManager` holds a pass to its ``in_place`` declaration."""

import pytest
import torch
from torch import fx
from torch.export import Dim, export

from cachec.graph_keys import OUTPUTS_KEY, SEGMENT_KEY
from cachec.passes import Pass, PassManager, PassResult
from cachec.passes.infra import PassError, build_module
from cachec.planner.split import split, split_segment

aten = torch.ops.aten


def _tagged(weight: torch.Tensor) -> fx.GraphModule:
    """``y = relu(x @ w) + x``: ``mm`` and ``relu`` in segment ``a``, the ``add`` in ``b``."""
    g = fx.Graph()
    x = g.placeholder("x")
    w = g.get_attr("w")
    h = g.create_node("call_function", aten.mm.default, (x, w), name="mm")
    r = g.create_node("call_function", aten.relu.default, (h,), name="relu")
    y = g.create_node("call_function", aten.add.Tensor, (r, x), name="add")
    for node, seg in ((h, "a"), (r, "a"), (y, "b")):
        node.meta[SEGMENT_KEY] = seg
    g.output((y,))
    root = torch.nn.Module()
    root.w = torch.nn.Parameter(weight)
    return fx.GraphModule(root, g)


def test_built_graph_with_a_dead_value_is_refused_naming_it():
    g = fx.Graph()
    x = g.placeholder("x")
    g.call_function(aten.gelu.default, (x,))  # computed for nobody
    g.output((x,))
    with pytest.raises(PassError, match="built graph DeltaWrite is invalid: dead values .*gelu"):
        build_module({}, g, "DeltaWrite", ["x"])


def test_split_builds_linted_segments_that_keep_one_owner_per_weight():
    w = torch.randn(3, 3)
    gm = _tagged(w)
    segs = split(gm, ["a", "b"], "out")
    assert list(segs) == ["a", "b"]
    assert (segs["a"].inputs, segs["a"].outputs) == (["x"], ["relu"])
    assert (segs["b"].inputs, segs["b"].outputs) == (["relu", "x"], ["out"])
    assert segs["a"].parameters()["w"] is gm.w and not segs["b"].parameters()
    x = torch.randn(2, 3)
    (r,) = segs["a"].module(x)
    (y,) = segs["b"].module(r, x)
    torch.testing.assert_close(y, torch.relu(x @ w) + x)


def test_split_segment_cuts_at_an_inner_value():
    gm = _tagged(torch.randn(3, 3))
    seg = split(gm, ["a", "b"], "out")["a"]
    head, tail = split_segment(seg, {"mm"}, "a_rest")
    assert (head.name, head.outputs) == ("a", ["mm"])  # the cut point handed over by name
    assert (tail.inputs, tail.outputs) == (["mm"], ["relu"])
    assert tail.module.meta[OUTPUTS_KEY] == ["relu"]
    assert split_segment(seg, {"relu"}, "a_rest") == (seg, None)  # nothing would move


def test_a_batch_size_computed_for_later_segments_is_not_left_dead_in_its_own():
    """The size a later segment reshapes with is re-read there; the segment that computed it keeps
    no dead copy (the lint of built graphs found one in every DiT prologue)."""

    class M(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            return (y + 1).reshape(x.shape[0], -1)

    ep = export(M(), (torch.randn(2, 3, 4),), dynamic_shapes=({0: Dim("batch")},))
    gm = ep.module()
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    cut = next(i for i, n in enumerate(nodes) if n.target == aten.add.Tensor)
    for i, n in enumerate(nodes):
        n.meta[SEGMENT_KEY] = "a" if i < cut else "b"
    segs = split(gm, ["a", "b"], "out")
    assert all(n.target != aten.sym_size.int or n.users for n in segs["a"].module.graph.nodes)
    x = torch.randn(5, 3, 4)
    (y,) = segs["a"].module(x)
    (out,) = segs["b"].module(*(dict(x=x, mul=y)[n] for n in segs["b"].inputs))
    torch.testing.assert_close(out, (x * 2 + 1).reshape(5, -1))


class _Rebuild(Pass):
    """Returns a fresh copy of its input (what a pass that is not in place does)."""

    in_place = False

    def call(self, gm):
        return PassResult(fx.GraphModule(gm, _copy_graph(gm)), True)


class _RebuildAndMutate(_Rebuild):
    def call(self, gm):
        result = super().call(gm)
        relu = next(n for n in gm.graph.nodes if n.target == aten.relu.default)
        relu.target = aten.gelu.default  # a change to the graph it was given
        return result


class _RebuildDeclaredInPlace(_Rebuild):
    in_place = True


class _KeepDeclaredNotInPlace(_Rebuild):
    def call(self, gm):
        return PassResult(gm, False)


def _copy_graph(gm):
    g = fx.Graph()
    out = g.graph_copy(gm.graph, {})
    g.output(out)
    return g


def _relu_graph():
    g = fx.Graph()
    x = g.placeholder("x")
    g.output((g.call_function(aten.relu.default, (x,)),))
    return fx.GraphModule(torch.nn.Module(), g)


def test_pass_manager_enforces_in_place_declarations():
    gm = _relu_graph()
    result = PassManager([_Rebuild()])(gm)
    assert result.graph_module is not gm
    with pytest.raises(PassError, match="_RebuildAndMutate is declared not in place but changed"):
        PassManager([_RebuildAndMutate()])(_relu_graph())
    with pytest.raises(PassError, match="_RebuildDeclaredInPlace is declared in place but returned a new"):
        PassManager([_RebuildDeclaredInPlace()])(_relu_graph())
    with pytest.raises(PassError, match="_KeepDeclaredNotInPlace is declared not in place but returned the graph"):
        PassManager([_KeepDeclaredNotInPlace()])(_relu_graph())
