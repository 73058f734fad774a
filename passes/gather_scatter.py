"""Gather/scatter: a region that computes only a subset of its tokens (ToCa / DuCa partial steps).

:class:`GatherScatter` rewrites a module region's segment graph (an MLP, a cross-attention, or a
self-attention) into a graph that takes, besides the region's inputs,

* ``index`` — ``int64 [B, k]``: the token positions to compute, supplied by the runtime each step
  (``k`` is dynamic: the same graph runs any ``0 <= k <= N``), and
* ``cache`` — ``[B, N, C]``: the region's cached output,

gathers the selected rows of every token-wise input, runs the region on those rows only, and
scatters the fresh rows into the cache: the output is the whole ``[B, N, C]`` tensor, fresh where
selected, cached elsewhere — the new cache and the region's output at once.

Why a rewrite and not a re-trace: the exported region graph is all we keep (nothing re-traces
the model's Python), and it may hard-code the token count ``N`` in ``view``/``reshape``/
``expand`` shapes. So the rewrite *tracks the token axis* of every value from the gathered
inputs to the outputs — through element-wise ops, linear layers, norms, views, transposes and
permutes — and rewrites each shape argument that mentions ``N`` on that axis to ``-1`` (or to the
runtime ``k``). Ops that mix tokens are handled by operand role: attention
(``scaled_dot_product_attention``) and ``matmul``/``bmm`` take their *first* operand (the queries)
on the selected rows and their other operands (keys/values) on **all** tokens — so
cross-attention is the selected queries against all text keys/values, and a self-attention
becomes the selected queries against all keys/values (exact for those rows) through SDPA, which
keeps flash attention usable. Anything else that moves data along the token axis (a reduction, a
slice, a cat along it) cannot be computed on a subset; it is refused with a :class:`TokenwiseError`
naming the node, rather than computed wrongly.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from cachec.graph_keys import OUTPUTS_KEY

from .infra import Pass, PassError, PassResult, eliminate_dead_code, graph_module

aten = torch.ops.aten

_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
# ops whose first operand is the query side and whose other operands are keys/values (all tokens)
_QUERY_FIRST = {aten.scaled_dot_product_attention.default, aten.matmul.default, aten.bmm.default,
                aten._scaled_dot_product_flash_attention_for_cpu.default}
_REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default, aten.softmax.int,
               aten._softmax.default, aten.log_softmax.int, aten.cumsum.default, aten.var.correction,
               aten.std.correction, aten.linalg_vector_norm.default, aten.argmax.default, aten.max.dim}
_AXIS_OPS = {aten.slice.Tensor, aten.select.int, aten.narrow.default, aten.index_select.default,
             aten.roll.default, aten.flip.default}


class TokenwiseError(ValueError):
    """The region has an op that needs tokens other than the ones computed (it is not token-wise)."""


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _hint(d) -> int:
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else int(d)


def _ints(shape) -> list[int]:
    return [_hint(d) for d in shape]


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


class _Rewriter:
    """Copies a region graph into ``graph`` twice over, lazily: ``full`` (all tokens) and ``sel``
    (the gathered rows), tracking for every ``sel`` value which axis holds the tokens."""

    def __init__(self, src: fx.GraphModule, graph: fx.Graph, n_tokens: int, index: fx.Node, k: fx.Node):
        self.src, self.g, self.n, self.index, self.k = src, graph, n_tokens, index, k
        self.full: dict[fx.Node, fx.Node] = {}
        self.sel: dict[fx.Node, tuple[fx.Node, int | None]] = {}
        self.depends = self._token_dependence()

    def _token_dependence(self) -> set[fx.Node]:
        dep = set()
        for n in self.src.graph.nodes:
            if n.op == "placeholder":
                s = _shape(n)
                if s is not None and len(s) >= 2 and _hint(s[1]) == self.n:
                    dep.add(n)
            elif n.op == "call_function" and any(a in dep for a in n.all_input_nodes):
                dep.add(n)
        return dep

    # -- all tokens -------------------------------------------------------------------------------
    def emit_full(self, n: fx.Node) -> fx.Node:
        if n not in self.full:
            if n.op == "get_attr":
                new = self.g.get_attr(str(n.target))
                new.meta = dict(n.meta)
            else:
                new = self.g.node_copy(n, self.emit_full)
            self.full[n] = new
        return self.full[n]

    # -- selected tokens --------------------------------------------------------------------------
    def emit_sel(self, n: fx.Node) -> tuple[fx.Node, int | None]:
        """The node computed on the selected rows, and its token axis (None: token-independent)."""
        if n in self.sel:
            return self.sel[n]
        if n not in self.depends:
            out = (self.emit_full(n), None)
        elif n.op == "placeholder":
            out = (self._gather(self.emit_full(n), _shape(n)), 1)
        else:
            out = self._sel_op(n)
        self.sel[n] = out
        return out

    def _gather(self, x: fx.Node, shape: tuple) -> fx.Node:
        idx = self.index
        for _ in range(len(shape) - 2):
            idx = self.g.call_function(aten.unsqueeze.default, (idx, -1))
        if len(shape) > 2:
            idx = self.g.call_function(aten.expand.default, (idx, [-1, -1, *_ints(shape[2:])]))
        return self.g.call_function(aten.gather.default, (x, 1, idx))

    def _sel_op(self, n: fx.Node) -> tuple[fx.Node, int | None]:
        t = n.target
        if n.op != "call_function":
            raise TokenwiseError(f"{n.name}: {n.op} nodes are not supported in a token-wise region")
        if t is aten.sym_size.int:  # a size: the batch (or another) dim is unchanged, the token dim is k
            _, axis = self.emit_sel(n.args[0])
            if axis is not None and _norm_dim(n.args[1], len(_shape(n.args[0]))) == axis:
                return self.k, None
            return self.emit_full(n), None
        if t is operator.getitem:
            base, axis = self.emit_sel(n.args[0])
            return self.g.call_function(operator.getitem, (base, n.args[1])), self._same_axis(n, n.args[0], axis)
        if t in _QUERY_FIRST:
            q, axis = self.emit_sel(n.args[0])
            rest = [self.emit_full(a) if isinstance(a, fx.Node) else a for a in n.args[1:]]
            kwargs = {}
            for key, v in n.kwargs.items():
                if isinstance(v, fx.Node) and v in self.depends:
                    raise TokenwiseError(f"{n.name}: its {key} depends on the tokens, so rows cannot be computed apart")
                kwargs[key] = self.emit_full(v) if isinstance(v, fx.Node) else v
            if axis is None:  # the query side does not depend on tokens: nothing per-row here
                raise TokenwiseError(f"{n.name}: only its keys/values depend on the tokens")
            rank = len(_shape(n.args[0]))
            if _norm_dim(axis, rank) != rank - 2:
                raise TokenwiseError(f"{n.name}: the tokens are not the query rows (axis {axis} of rank {rank})")
            return self.g.call_function(t, (q, *rest), kwargs), axis
        args, axes = [], []
        for a in n.args:
            if isinstance(a, fx.Node):
                node, axis = self.emit_sel(a)
                args.append(node)
                if axis is not None:
                    axes.append((a, axis))
            elif isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a):
                items = []
                for x in a:
                    if isinstance(x, fx.Node):
                        node, axis = self.emit_sel(x)
                        items.append(node)
                        if axis is not None:
                            axes.append((x, axis))
                    else:
                        items.append(x)
                args.append(type(a)(items))
            else:
                args.append(a)
        kwargs = {}
        for key, v in n.kwargs.items():
            if isinstance(v, fx.Node):
                kwargs[key], kaxis = self.emit_sel(v)
                if kaxis is not None:
                    raise TokenwiseError(f"{n.name}: its keyword {key} carries the tokens")
            else:
                kwargs[key] = v
        if not axes:  # token-dependent only through sizes that do not change
            return self.g.call_function(t, tuple(args), kwargs), None
        src, axis = axes[0]
        rank_in, shape_out = len(_shape(src)), _shape(n)
        if t in _VIEWS:
            axis, new_shape = self._view(n, src, axis)
            args[1] = new_shape
        elif t is aten.expand.default:
            axis = self._right_aligned(n, src, axis)
            shape = list(args[1])
            shape[axis] = -1
            args[1] = shape
        elif t is aten.transpose.int:
            d0, d1 = (_norm_dim(d, rank_in) for d in n.args[1:3])
            axis = d1 if axis == d0 else d0 if axis == d1 else axis
        elif t is aten.permute.default:
            perm = [_norm_dim(d, rank_in) for d in n.args[1]]
            axis = perm.index(axis)
        elif t is aten.flatten.using_ints:
            start, end = (_norm_dim(d, rank_in) for d in n.args[1:3])
            if start <= axis <= end:
                raise TokenwiseError(f"{n.name}: flattens the token axis")
            axis = axis - (end - start) if axis > end else axis
        elif t is aten.unflatten.int:
            d = _norm_dim(n.args[1], rank_in)
            if d == axis:
                raise TokenwiseError(f"{n.name}: unflattens the token axis")
            axis = axis + len(n.args[2]) - 1 if d < axis else axis
        elif t in (aten.unsqueeze.default, aten.squeeze.dim):
            d = _norm_dim(n.args[1], len(shape_out) if t is aten.unsqueeze.default else rank_in)
            if t is aten.unsqueeze.default:
                axis = axis + 1 if d <= axis else axis
            elif d == axis:
                raise TokenwiseError(f"{n.name}: squeezes the token axis")
            else:
                axis = axis - 1 if d < axis else axis
        elif t in _AXIS_OPS or t in _REDUCTIONS or t is aten.cat.default:
            pos = 2 if t is aten.linalg_vector_norm.default else 1  # norm(x, ord, dim)
            dims = n.args[pos] if len(n.args) > pos else n.kwargs.get("dim")
            dims = dims if isinstance(dims, (list, tuple)) else [dims]
            if t in _REDUCTIONS and (dims == [None] or not dims):
                raise TokenwiseError(f"{n.name}: {t} reduces over every axis, the tokens included")
            rank = rank_in
            if any(isinstance(d, int) and _norm_dim(d, rank) == axis for d in dims):
                raise TokenwiseError(f"{n.name}: {t} works along the token axis")
            axis = self._right_aligned(n, src, axis)
        else:
            axis = self._right_aligned(n, src, axis)
        for other, oaxis in axes[1:]:  # every token-wise operand must put its tokens on the same axis
            if len(_shape(other)) - oaxis != rank_in - axes[0][1]:
                raise TokenwiseError(f"{n.name}: its operands hold the tokens on different axes")
        return self.g.call_function(t, tuple(args), kwargs), axis

    def _same_axis(self, n: fx.Node, src: fx.Node, axis: int | None) -> int | None:
        return None if axis is None else self._right_aligned(n, src, axis)

    def _right_aligned(self, n: fx.Node, src: fx.Node, axis: int) -> int:
        """Token axis of an output broadcast against its input (element-wise, linear, norms)."""
        si, so = _shape(src), _shape(n)
        if so is None:
            raise TokenwiseError(f"{n.name}: {n.target} has no tensor shape to follow the tokens through")
        out_axis = axis + len(so) - len(si)
        if out_axis < 0 or _hint(so[out_axis]) != self.n:
            raise TokenwiseError(f"{n.name}: {n.target} does not keep the tokens on one axis")
        return out_axis

    def _view(self, n: fx.Node, src: fx.Node, axis: int) -> tuple[int, list]:
        """Map the token axis through a view: the output axis that starts at the same element
        offset and has size N; its entry in the shape argument becomes -1 (or the runtime k)."""
        si, so = _ints(_shape(src)), _ints(_shape(n))
        before = math.prod(si[:axis])
        out_axis = next((j for j in range(len(so)) if math.prod(so[:j]) == before and so[j] == self.n), None)
        if out_axis is None or math.prod(si[axis + 1 :]) != math.prod(so[out_axis + 1 :]):
            raise TokenwiseError(f"{n.name}: a view merges or splits the token axis ({si} -> {so})")
        shape = [self.emit_sel(d)[0] if isinstance(d, fx.Node) else d for d in n.args[1]]
        if shape[out_axis] != -1:
            shape[out_axis] = -1 if -1 not in shape else self.k
        return out_axis, shape


def _token_variant(region: fx.GraphModule, n_tokens: int, index: str, caches: dict[str, str]) -> fx.GraphModule:
    """The region ``region`` computed on the rows ``index`` of its token-wise inputs.

    ``caches`` maps each output value name of the region to the cache it is scattered into; the
    returned graph's placeholders are the region's inputs, then ``index``, then the caches, and
    it returns the scattered tensors under the region's output names (``meta[OUTPUTS_KEY]``).
    Raises :class:`TokenwiseError` if an output does not hold ``n_tokens`` tokens on axis 1 or
    some op needs other rows than its own.
    """
    g = fx.Graph()
    outputs = list(region.meta[OUTPUTS_KEY])
    out_node = next(n for n in region.graph.nodes if n.op == "output")
    placeholders = [n for n in region.graph.nodes if n.op == "placeholder"]
    ph = {}
    for p in placeholders:
        ph[p] = g.placeholder(p.name)
        ph[p].meta = dict(p.meta)
    idx = g.placeholder(index)
    cache_ph = {name: g.placeholder(caches[name]) for name in outputs}
    k = g.call_function(aten.sym_size.int, (idx, 1))
    rw = _Rewriter(region, g, n_tokens, idx, k)
    rw.full.update(ph)
    results = []
    for name, src in zip(outputs, out_node.args[0], strict=True):
        shape = _shape(src)
        if shape is None or len(shape) < 2 or _hint(shape[1]) != n_tokens:
            raise TokenwiseError(f"output {name} of shape {shape} does not hold the {n_tokens} tokens on axis 1")
        fresh, axis = rw.emit_sel(src)
        if axis != 1:
            raise TokenwiseError(f"output {name}: the tokens end up on axis {axis}, not 1")
        where = idx
        for _ in range(len(shape) - 2):
            where = g.call_function(aten.unsqueeze.default, (where, -1))
        if len(shape) > 2:
            where = g.call_function(aten.expand.default, (where, [-1, -1, *_ints(shape[2:])]))
        results.append(g.call_function(aten.scatter.src, (cache_ph[name], 1, where, fresh)))
    g.output(tuple(results))
    eliminate_dead_code(g)
    attrs = {str(n.target): operator.attrgetter(str(n.target))(region) for n in g.nodes if n.op == "get_attr"}
    gm = graph_module(attrs, g, "TokenVariant").eval()
    gm.meta[OUTPUTS_KEY] = outputs
    return gm


class GatherScatter(Pass):
    """The token variant of a region graph (see the module docstring).

    Not in place: it builds a new graph, leaving the region's own segment intact for the variants
    that still run it on all tokens. Requires a region graph that names its outputs
    (``meta[OUTPUTS_KEY]``); ensures placeholders ``inputs…, index, caches…`` and the same outputs.
    Raises :class:`TokenwiseError` for a region whose rows depend on other rows.
    """

    in_place = False

    def __init__(self, n_tokens: int, index: str, caches: dict[str, str]):
        self.n_tokens, self.index, self.caches = n_tokens, index, caches

    def requires(self, gm: fx.GraphModule) -> None:
        if OUTPUTS_KEY not in gm.meta:
            raise PassError("a region graph names its outputs in meta[OUTPUTS_KEY]")

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(_token_variant(gm, self.n_tokens, self.index, self.caches), True)

    def ensures(self, gm: fx.GraphModule) -> None:
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        if self.index not in names or any(c not in names for c in self.caches.values()):
            raise PassError(f"token variant lacks its index or cache inputs: {names}")
