"""The pass manager's lint: every computed value is used or effectful (issue 12), and no-op
removal leaves no dead chain behind (it crashed forecast planning with an IndexError)."""

import pytest
import torch
from torch import fx

from cachec.passes import PassManager
from cachec.passes.infra import PassError, dead_values, lint
from cachec.passes.remove_noops import RemoveNoOps

aten = torch.ops.aten


def _graph_with_unused_text_mlp() -> fx.GraphModule:
    """``out = x + 1``; a text MLP ``dropout(gelu(x @ w))`` (eval dropout) whose output nothing reads."""
    g = fx.Graph()
    x = g.placeholder("x")
    w = g.placeholder("w")
    h = g.call_function(aten.mm.default, (x, w))
    a = g.call_function(aten.gelu.default, (h,))
    g.call_function(aten.dropout.default, (a, 0.1, False))  # unused, and kept by DCE as random
    y = g.call_function(aten.add.Tensor, (x, 1))
    g.output((y,))
    return fx.GraphModule(torch.nn.Module(), g)


def test_lint_rejects_a_dead_value():
    g = fx.Graph()
    x = g.placeholder("x")
    g.call_function(aten.gelu.default, (x,))
    g.output((x,))
    with pytest.raises(PassError, match="dead values"):
        lint(fx.GraphModule(torch.nn.Module(), g))


def test_remove_noops_leaves_no_dead_chain():
    gm = _graph_with_unused_text_mlp()
    PassManager([RemoveNoOps()])(gm)
    assert dead_values(gm) == []
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [aten.add.Tensor]
    torch.testing.assert_close(gm(torch.ones(2, 2), torch.ones(2, 2))[0], torch.full((2, 2), 2.0))


def test_fast_dead_code_elimination_removes_exactly_what_torchs_does():
    """:func:`~cachec.passes.infra.eliminate_dead_code` asks only unread nodes whether they are
    impure; it must remove the same nodes as ``fx.Graph.eliminate_dead_code``: the dead chain, not
    the random dropout nor an in-place write whose result nobody reads."""
    from cachec.passes.infra import eliminate_dead_code

    def graph():
        gm = _graph_with_unused_text_mlp()
        g = gm.graph
        x = next(n for n in g.nodes if n.name == "x")
        with g.inserting_before(next(n for n in g.nodes if n.op == "output")):
            dead = g.call_function(aten.mul.Tensor, (x, 2))
            g.call_function(aten.neg.default, (dead,))
            g.call_function(aten.add_.Tensor, (x, 1))  # in place: an effect although unread
        return g

    theirs, ours = graph(), graph()
    assert theirs.eliminate_dead_code() is eliminate_dead_code(ours) is True
    kept = [(n.op, n.target) for n in theirs.nodes]
    assert [(n.op, n.target) for n in ours.nodes] == kept
    assert (("call_function", aten.add_.Tensor) in kept and ("call_function", aten.dropout.default) in kept
            and ("call_function", aten.neg.default) not in kept)
    assert eliminate_dead_code(ours) is False
