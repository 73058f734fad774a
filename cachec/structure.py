"""Structural rules: what a denoiser's inputs and modules *are*, read from shapes and the graph.

cachec serves any diffusers denoiser (no class table), so every question that used to be answered
by a class or argument name is answered here from structure instead:

* the **latent** is the input whose shape the output has (the denoiser predicts something of the
  latent's shape); among several, the forward's first;
* the **streams** are the latent and every floating input of rank ≥ 3 that carries the batch
  (token sequences: text, image prompts); every other input is conditioning;
* **cross-attention** is an attention whose keys and values do not depend on the latent (they come
  from another stream); joint (MMDiT) attention concatenates both, so it is self-attention;
* a **parallel block** has two branches from one normalised input — an attention and a
  feed-forward — that meet (concatenated) in one projection; the cacheable unit is the fused
  projection's output;
* a failed ``torch.export`` is explained by the construct that failed it.

Nothing here imports the planner or the runtime: capture and regions call these rules.
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch import fx

_SDPA = {torch.ops.aten.scaled_dot_product_attention.default}
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"):
    if hasattr(torch.ops.aten, _name):
        _SDPA.add(getattr(torch.ops.aten, _name).default)
_SOFTMAX = {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default}
_MATMUL = {torch.ops.aten.bmm.default, torch.ops.aten.matmul.default, torch.ops.aten.baddbmm.default,
           torch.ops.aten.einsum.default}
_PROJECTION = {torch.ops.aten.linear.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default,
               torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default}
_CONCAT = {torch.ops.aten.cat.default}
# ops that only take a part of a tensor or reshape it: a branch that reads a slice of the
# normalised stream still starts from that stream (HunyuanVideo's single blocks split it into
# image and text tokens for the attention)
_PART_OF = {torch.ops.aten.slice.Tensor, torch.ops.aten.select.int, torch.ops.aten.view.default,
            torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.narrow.default,
            torch.ops.aten.split.Tensor, torch.ops.aten.split_with_sizes.default}


# -- inputs ----------------------------------------------------------------------------------------
def forward_order(model: torch.nn.Module | None, names: list[str]) -> list[str]:
    """``names`` in the order of the model's forward signature (unknown names keep their order, last)."""
    if model is None:
        return list(names)
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return list(names)
    rank = {p: i for i, p in enumerate(params)}
    return sorted(names, key=lambda n: (rank.get(n.split("__")[0], len(rank)), names.index(n)))


def first_tensor_input(model: torch.nn.Module | None, tensors: dict[str, torch.Tensor]) -> str:
    """The forward's first tensor argument: diffusers denoisers take the latent first
    (``hidden_states``, ``sample``, ``x``); capture confirms it from the output's shape."""
    floating = [n for n in tensors if tensors[n].is_floating_point() and tensors[n].dim() >= 2]
    order = forward_order(model, floating or list(tensors))
    return order[0]


def latent_from_output(tensors: dict[str, torch.Tensor], output_shape, guess: str) -> str:
    """The input whose shape the output has; ``guess`` (the forward's first tensor) when it has it
    or when none does. A learned-variance output (DiT-XL/2: twice the channels) matches no input
    exactly; then the input of the output's rank differing in one dimension only is taken."""
    shape = tuple(int(s) for s in output_shape)

    def same(t):
        return tuple(t.shape) == shape

    if guess in tensors and same(tensors[guess]):
        return guess
    exact = [n for n, t in tensors.items() if t.is_floating_point() and same(t)]
    if exact:
        return exact[0]
    near = [n for n, t in tensors.items() if t.is_floating_point() and t.dim() == len(shape)
            and sum(a != b for a, b in zip(t.shape, shape, strict=True)) == 1]
    if guess in near or not near:
        return guess
    return near[0]


def stream_inputs(tensors: dict[str, torch.Tensor], latent: str, batch_dims: dict[str, int]) -> list[str]:
    """The latent and every floating input of rank ≥ 3 that carries the batch (token sequences).

    Conditioning is what is left: timesteps, pooled embeddings, labels, position ids and RoPE
    tables (which carry no batch), so it is hoisted and computed once per call.
    """
    out = [latent]
    for n, t in tensors.items():
        if n != latent and t.is_floating_point() and t.dim() >= 3 and (n in batch_dims or not batch_dims):
            out.append(n)
    return out


def batch_dims(tensors: dict[str, torch.Tensor], batch: int, latent: str) -> dict[str, int]:
    """Which inputs carry the batch, and in which dimension.

    The latent's batch is its leading dimension (every diffusers denoiser's). Another input carries
    it when its leading dimension equals the batch, unless it is a table of positions: FLUX-style
    ``*_ids`` are 2-D ``(tokens, 3)`` and their token count can equal the batch by accident.
    """
    out = {}
    for n, t in tensors.items():
        if t.dim() < 1 or t.shape[0] != batch:
            continue
        if n != latent and n.endswith("_ids") and t.dim() == 2:
            continue
        out[n] = 0
    return out


# -- attention -------------------------------------------------------------------------------------
_SHAPE_READS = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_size}


def _closure(gm: fx.GraphModule, roots: set[str]) -> set[fx.Node]:
    """Nodes whose *values* depend on ``roots`` (a shape read carries only the batch size, not values)."""
    dep: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.target in _SHAPE_READS:
            continue
        if n.name in roots or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    return dep


def attention_key_values(nodes: list[fx.Node]) -> list[fx.Node]:
    """The key and value tensors of the attention products among ``nodes``.

    ``scaled_dot_product_attention(q, k, v)`` names them; a hand-written attention
    (``softmax(q @ kᵀ) @ v``) gives them as the operands of the products around the softmax that
    are not the query (for a product feeding the softmax, both operands are taken: the query is
    recognised by the caller's rule only through the keys anyway).
    """
    kv: list[fx.Node] = []
    member = set(nodes)
    for n in nodes:
        if n.target in _SDPA and len(n.args) >= 3:
            kv += [a for a in n.args[1:3] if isinstance(a, fx.Node)]
    if kv:
        return kv
    for n in nodes:
        if n.target in _SOFTMAX:
            for u in n.users:  # attn @ v
                if u in member and u.target in _MATMUL:
                    kv += [a for a in u.all_input_nodes if a is not n]
    return kv


def cross_attention(gm: fx.GraphModule, latent: str, attention: dict[str, list[fx.Node]]) -> set[str]:
    """Attention modules (fqn → their nodes) whose keys and values do not depend on the latent."""
    dep = _closure(gm, {latent})
    found = set()
    for fqn, nodes in attention.items():
        kv = attention_key_values(nodes)
        if kv and not any(k in dep for k in kv):
            found.add(fqn)
    return found


# -- parallel blocks -------------------------------------------------------------------------------
def parallel_branches(
    block: str, children: dict[str, list[fx.Node]], attention: list[str], order: dict[fx.Node, int]
) -> tuple[str, ...] | None:
    """The children of a parallel block, attention first: ``(attn, mlp..., projection)``, or None.

    ``children`` maps each direct child module of the block to its graph nodes. The block is
    parallel when an attention child's output and another branch are concatenated and fed to one
    projection in another child, and both branches start from the same input (the normalised
    stream): the attention reads it, and the other branch reaches back to it without passing
    through the attention. The MLP branch's children are those its nodes belong to.
    """
    owner = {n: c for c, ns in children.items() for n in ns}
    lo = min((order[n] for ns in children.values() for n in ns), default=0)

    def in_block(n: fx.Node) -> bool:  # the block's children and the glue between them
        return n in owner or order.get(n, -1) >= lo
    for attn in attention:
        a_nodes = set(children.get(attn, []))
        if not a_nodes:
            continue
        a_inputs = {i for n in a_nodes for i in n.all_input_nodes if i not in a_nodes and i.op == "call_function"}
        a_inputs |= {src for i in a_inputs for src in _whole_of(i)}
        a_out = _joined_outputs(a_nodes, owner)
        for n in a_out:
            for cat in n.users:
                if cat in a_out or cat.target not in _CONCAT:
                    continue
                proj = [u for u in cat.users if u.target in _PROJECTION and owner.get(u) not in (None, attn)]
                if len(proj) != 1:
                    continue
                others = [x for x in cat.args[0] if isinstance(x, fx.Node) and x not in a_out]
                branch = _branch_back_to(others, a_inputs, a_nodes, order, in_block)
                if branch is None:
                    continue
                mlp = sorted({owner[b] for b in branch if b in owner and owner[b] != attn},
                             key=lambda c: min(order[x] for x in children[c]))
                if not mlp:
                    continue
                return (attn, *mlp, owner[proj[0]])
    return None


def _whole_of(n: fx.Node) -> list[fx.Node]:
    """The tensors ``n`` is a part or a reshape of (getitem of a split included), nearest first."""
    out = []
    while True:
        if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node):
            n = n.args[0]
        elif n.op == "call_function" and n.target in _PART_OF and isinstance(n.args[0], fx.Node):
            n = n.args[0]
            out.append(n)
        else:
            return out


def _joined_outputs(a_nodes: set[fx.Node], owner: dict) -> set[fx.Node]:
    """The attention's nodes plus the glue that only joins its outputs (HunyuanVideo concatenates its
    image and text outputs before they meet the MLP branch): nodes of no child whose inputs all are
    attention outputs."""
    out = set(a_nodes)
    todo = [u for n in a_nodes for u in n.users]
    while todo:
        u = todo.pop()
        if u in out or u in owner or u.op != "call_function":
            continue
        if u.target in _CONCAT | _PART_OF and all(i in out for i in u.all_input_nodes):
            out.add(u)
            todo.extend(u.users)
    return out


def _branch_back_to(starts: list[fx.Node], roots: set[fx.Node], avoid: set[fx.Node],
                    order: dict[fx.Node, int], inside) -> set[fx.Node] | None:
    """Nodes from ``starts`` back to any of ``roots`` (not through ``avoid``, staying ``inside`` the
    block), or None if no root is reached."""
    if not starts:
        return None
    lo = min(order[r] for r in roots) if roots else 0
    seen: set[fx.Node] = set()
    todo = list(starts)
    reached = False
    while todo:
        n = todo.pop()
        if n in seen or n in avoid:
            continue
        if n in roots:
            reached = True
            continue
        if order.get(n, -1) < lo or n.op != "call_function" or not inside(n):
            continue
        seen.add(n)
        todo.extend(n.all_input_nodes)
    return seen if reached else None


# -- export failures -------------------------------------------------------------------------------
_CONSTRUCTS = (
    ("GuardOnDataDependentSymNode", "data-dependent Python control flow (an `if`, `int()`, `bool()` or `.item()` on a "
                                    "tensor's value)"),
    ("Could not guard on data-dependent", "data-dependent Python control flow (an `if`, `int()` or `.item()` on a "
                                          "tensor's value)"),
    ("tolist", "`.tolist()` on a tensor (its values become Python numbers)"),
    ("numpy", "numpy on a tensor or its shape (values leave the graph)"),
    ("data-dependent", "a tensor whose size depends on its values (nonzero, masked_select, unique)"),
    ("Constraints violated", "a model that specialises the batch size (e.g. `torch.tensor([0] * batch)`)"),
    ("specialized", "a model that specialises the batch size (e.g. `torch.tensor([0] * batch)`)"),
    ("unhashable type: non-nested SymInt", "tensor values used as Python dict keys or set members (e.g. per-sample "
                                           "lengths read from a mask with .tolist())"),
    ("fake tensor in the exported program constant", "a tensor written through `.data` or built outside the graph "
                                                     "during forward (e.g. a position table recomputed for a size "
                                                     "other than the config's)"),
    ("Unsupported", "a Python construct torch.export does not support"),
)


def export_failure_construct(exc: BaseException) -> str:
    """The construct that made ``torch.export`` fail, in words (from torch's report)."""
    text = f"{type(exc).__name__}: {exc}"
    for marker, construct in _CONSTRUCTS:
        if marker in text:
            return construct
    return "a construct torch.export cannot trace"

