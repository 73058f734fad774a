"""The compiled program: segments (lowerable graphs) and variants (what a step runs).

Values flow between segments by name in one namespace: a segment's placeholders are the names
of the values it reads and ``meta["cachec_output_names"]`` the names of the values it writes.
Cache state is functional: a cache is a value whose name starts with ``cache__``; a segment that
reads it has a placeholder of that name, a segment that writes it returns it. The runtime keeps
one buffer per cache name and moves values in and out; no graph holds hidden state, which is
what lets the same segments lower to ONNX and TensorRT.

A *variant* (DESIGN.md's word, also the manifest's) is an ordered list of typed ops:
:class:`Run` a segment, :class:`Load` a cache buffer as a value (``cache_read``) and
:class:`Store` a value into a cache buffer (``cache_write``). The variants of a step share their
segments, so every parameter is lowered once (see :func:`check_weight_ownership`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from .errors import ArtifactError, ModelError
from .graph_keys import OUTPUTS_KEY, SEGMENT_KEY
from .output_forms import FORMS as OUTPUT_FORMS
from .schema import ANY, DIM, DTYPE, NAME, NAT, NUM, POS, STR, Mismatch, list_of, map_of, nullable, one_of, record

CACHE_PREFIX = "cache__"
# a dynamic policy's probe head hands its values to one of its tails (see Program.followers)
FOLLOWERS = {"head": ("tail_full", "tail_reuse")}


ITEMS_SUFFIX = "__items"


def per_item(name: str) -> str:
    """The name of the per-batch-item version of a host-read scalar (a probe signal, a tail's
    feedback): a 1-D tensor with one value per batch item, which per-sample decisions read."""
    return name + ITEMS_SUFFIX


def cache_name(*parts: str) -> str:
    """A value name for a cache, safe as an FX placeholder and a file name."""
    text = "__".join(parts)
    return CACHE_PREFIX + "".join(c if c.isalnum() else "_" for c in text)


# ---------------------------------------------------------------------------------------------
# ops


@dataclass(frozen=True)
class Run:
    """Run a segment: its inputs are read from the step's values, its outputs added to them."""

    segment: str

    def to_json(self) -> list:
        return ["run", self.segment]


@dataclass(frozen=True)
class Load:
    """Read cache buffer ``cache`` as the step's value ``value`` (a cache read)."""

    cache: str
    value: str

    def to_json(self) -> list:
        return ["load", self.cache, self.value]


@dataclass(frozen=True)
class Store:
    """Copy the step's value ``value`` into cache buffer ``cache`` (a cache write)."""

    value: str
    cache: str

    def to_json(self) -> list:
        return ["store", self.value, self.cache]


Op = Run | Load | Store


def op_from_json(v: list) -> Op:
    """The op of a manifest entry (already checked by :data:`DESCRIPTION`)."""
    kind, *args = v
    return {"run": Run, "load": Load, "store": Store}[kind](*args)


# ---------------------------------------------------------------------------------------------
# program


@dataclass
class ValueSpec:
    """Shape (``"B"`` marks the batch dim) and dtype of a value crossing segments."""

    shape: list
    dtype: str

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "B" else int(d) for d in self.shape)


@dataclass
class Segment:
    """A lowerable subgraph. ``module`` is absent when the program was loaded from a manifest
    (ONNX / TensorRT artifacts), and then ``io`` holds its input and output names."""

    name: str
    module: fx.GraphModule | None
    flops: float = 0.0  # per sample
    role: str = ""  # prologue | glue | region | epilogue | cache | probe
    io: tuple[list[str], list[str]] | None = None

    @property
    def inputs(self) -> list[str]:
        if self.module is None:
            return list(self.io[0])
        return [n.name for n in self.module.graph.nodes if n.op == "placeholder"]

    @property
    def outputs(self) -> list[str]:
        if self.module is None:
            return list(self.io[1])
        return list(self.module.meta.get(OUTPUTS_KEY, []))

    def parameters(self) -> dict[str, torch.Tensor]:
        return {} if self.module is None else dict(_attrs(self.module).items())

    def to(self, device: torch.device) -> None:
        """Move every tensor the graph reads (parameters, buffers and plain tensor constants) in place.

        ``Module.to`` alone would leave constants that export attached as plain attributes behind.
        Parameters keep their identity (their data moves), so graphs that share them share the move.
        """
        if self.module is None:
            return
        self.module.to(device)
        for target, tensor in _attrs(self.module).items():
            if tensor.device != device:
                owner, _, attr = target.rpartition(".")
                holder = operator.attrgetter(owner)(self.module) if owner else self.module
                setattr(holder, attr, tensor.to(device))


def _attrs(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = operator.attrgetter(str(n.target))(gm)
            if isinstance(obj, torch.Tensor):
                out[str(n.target)] = obj
    return out


@dataclass
class Program:
    """Segments, variants and the interface of a compiled denoiser."""

    segments: dict[str, Segment]
    variants: dict[str, list[Op]]
    inputs: list[str]
    output: str
    values: dict[str, ValueSpec]
    meta: dict = field(default_factory=dict)

    def variant_flops(self, variant: str) -> float:
        return sum(self.segments[op.segment].flops for op in self.variants[variant] if isinstance(op, Run))

    def batch_of(self, env: dict) -> int:
        """The batch size of a step, read from an input that has the batch dimension."""
        batched = [n for n in self.meta.get("batch_dims") or {} if n in env]
        first = env[batched[0]] if batched else env[self.inputs[0]]
        return int(first.shape[0]) if first.dim() else 1

    def host_reads(self) -> set[str]:
        """Values the runtime reads on the host after a variant: the probe signal and tail feedback,
        and their per-item versions where the program has them (per-sample decisions)."""
        names = set(self.meta.get("feedback") or ())
        if self.meta.get("signal"):
            names.add(self.meta["signal"])
        return names | {per_item(n) for n in names if per_item(n) in self.values}

    def followers(self, path: str) -> tuple[str, ...]:
        """The variants a step may run after ``path`` within the same call: a dynamic policy's probe
        head hands its values to one of its tails; every other variant is the whole step, unless
        the program declares its own chain (``meta["followers"]``: per-block caching runs a variant
        per block)."""
        declared = self.meta.get("followers") or {}
        return tuple(declared.get(path, FOLLOWERS.get(path, ())))

    def needed_after(self, path: str) -> set[str]:
        """Values a variant must hand on: the model output, the values the runtime reads on the host,
        and the inputs of the variants that may follow it in the same step.

        Only a variant's *followers* count, not every other variant: a cached variant that kept the
        values the full variant's skipped modules read (their layer norms, shifts and scales) would
        compute them for nobody.
        """
        keep = {self.output}
        keep.update(self.host_reads())
        for name in self.followers(path):
            for op in self.variants.get(name, ()):
                if isinstance(op, Run):
                    keep.update(self.segments[op.segment].inputs)
        return keep

    def caches(self) -> dict[str, ValueSpec]:
        return {k: v for k, v in self.values.items() if k.startswith(CACHE_PREFIX)}

    def describe(self) -> dict:
        """The program without its graphs: what a manifest records and a runtime needs."""
        return {
            "inputs": self.inputs,
            "output": self.output,
            "segments": {
                n: {"role": s.role, "inputs": s.inputs, "outputs": s.outputs, "flops_per_sample": s.flops}
                for n, s in self.segments.items()
            },
            "variants": {n: [op.to_json() for op in ops] for n, ops in self.variants.items()},
            "values": {n: {"shape": v.shape, "dtype": v.dtype} for n, v in self.values.items()},
            "meta": {k: v for k, v in self.meta.items() if k in _DESCRIBED_META},
        }

    @classmethod
    def from_description(cls, d: dict, *, validated: bool = False) -> Program:
        """Rebuild a graph-less program (ONNX Runtime / TensorRT artifacts) from :meth:`describe`.

        The description is validated first (:func:`validate_description`), so a malformed one
        raises :class:`DescriptionError` naming the field instead of a KeyError/TypeError here or,
        worse, in the middle of a denoising step; ``validated=True`` says the caller already did
        (an artifact's manifest is validated once, as a whole, when it is read).
        """
        if not validated:
            validate_description(d)
        segments = {
            n: Segment(n, None, s["flops_per_sample"], s["role"], (s["inputs"], s["outputs"]))
            for n, s in d["segments"].items()
        }
        return cls(
            segments=segments,
            variants={n: [op_from_json(op) for op in ops] for n, ops in d["variants"].items()},
            inputs=list(d["inputs"]),
            output=d["output"],
            values={n: ValueSpec(v["shape"], v["dtype"]) for n, v in d["values"].items()},
            meta=dict(d["meta"]),
        )


_DESCRIBED_META = (
    "model_class", "policy", "blocks", "regions", "signal", "base_path", "batch_dims", "none_flops", "max_batch",
    "feedback", "step_inputs", "policy_data", "tokens", "output_form",
)


# ---------------------------------------------------------------------------------------------
# description checks (the generic checkers are in cachec/schema.py)


def variant_op(v, where):
    """An op: ["run", segment] | ["load", cache, value] | ["store", value, cache]."""
    expected = 'an op ["run", SEGMENT], ["load", CACHE, VALUE] or ["store", VALUE, CACHE]'
    ok = (isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
          and ((v[0] == "run" and len(v) == 2) or (v[0] in ("load", "store") and len(v) == 3)))
    if not ok:
        raise Mismatch(where, expected, v)


VALUE_SPEC = record({"shape": list_of(DIM), "dtype": DTYPE})
SEGMENT = record({"role": STR, "inputs": list_of(NAME), "outputs": list_of(NAME), "flops_per_sample": NUM})
VARIANTS = map_of(list_of(variant_op))
_META = {"policy": NAME, "blocks": list_of(NAME), "model_class": STR, "regions": list_of(ANY),
         "signal": nullable(NAME), "base_path": list_of(NAME), "batch_dims": map_of(NAT), "none_flops": nullable(NUM),
         "max_batch": POS, "feedback": list_of(NAME), "step_inputs": list_of(NAME),
         "policy_data": nullable(map_of(ANY)), "tokens": ANY, "output_form": one_of(*OUTPUT_FORMS)}


def description_schema(required_meta: tuple[str, ...] = ("policy", "blocks")):
    """The checker of a description; an artifact requires more of ``meta`` than a bare program."""
    meta = record({k: _META[k] for k in required_meta}, {k: v for k, v in _META.items() if k not in required_meta})
    return record({"inputs": list_of(NAME), "output": NAME, "segments": map_of(SEGMENT), "variants": VARIANTS,
                   "values": map_of(VALUE_SPEC), "meta": meta})


DESCRIPTION = description_schema()


class DescriptionError(ArtifactError):
    """A program description (an artifact manifest's ``program``) that is malformed at ``where``."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"program description: field {where!r} {problem}")
        self.where, self.problem = where, problem


def validate_description(d) -> None:
    """Check a :meth:`Program.describe` dict: structure, and that every name a variant, segment or
    the runtime looks up exists (segments of ``run`` ops, values of segment I/O, cache buffers,
    host reads). Which variants a policy needs is its method's business
    (:meth:`cachec.methods.base.Method.check_program`), checked where the policy is known."""
    try:
        DESCRIPTION(d, "")
    except Mismatch as bad:
        raise DescriptionError(bad.where, bad.problem()) from None
    values, segments = d["values"], d["segments"]
    for i, n in enumerate(d["inputs"]):
        if n not in values:
            raise DescriptionError(f"inputs[{i}]", f"names {n!r}, which has no entry in values")
    if d["output"] not in values:
        raise DescriptionError("output", f"names {d['output']!r}, which has no entry in values")
    for name, seg in segments.items():
        for key in ("inputs", "outputs"):
            for i, n in enumerate(seg[key]):
                if n not in values:
                    raise DescriptionError(f"segments.{name}.{key}[{i}]", f"names {n!r}, which has no entry in values")
    for variant, ops in d["variants"].items():
        for i, op in enumerate(ops):
            where = f"variants.{variant}[{i}]"
            if op[0] == "run" and op[1] not in segments:
                raise DescriptionError(where, f"runs segment {op[1]!r}, which is not among the segments")
            cache = op[1] if op[0] == "load" else op[2] if op[0] == "store" else None
            if cache is not None and not (cache.startswith(CACHE_PREFIX) and cache in values):
                raise DescriptionError(where, f"uses cache {cache!r}, which is not a cache value in values")
    signal = d["meta"].get("signal")
    if signal is not None and signal not in values:
        raise DescriptionError("meta.signal", f"names {signal!r}, which has no entry in values")
    for key in ("feedback", "step_inputs"):
        for i, n in enumerate(d["meta"].get(key) or ()):
            if n not in values:
                raise DescriptionError(f"meta.{key}[{i}]", f"names {n!r}, which has no entry in values")


def value_spec(node_or_val, batch_symbol: str | None) -> ValueSpec | None:
    val = node_or_val.meta.get("val") if isinstance(node_or_val, fx.Node) else node_or_val
    if not isinstance(val, torch.Tensor):
        return None
    shape = []
    for d in val.shape:
        shape.append("B" if (not isinstance(d, int) and str(d) == batch_symbol) else int(d))
    return ValueSpec(shape, str(val.dtype).replace("torch.", ""))


def batch_symbol(gm: fx.GraphModule, latent: str) -> str | None:
    for n in gm.graph.nodes:
        if n.op == "placeholder" and n.name == latent:
            d0 = n.meta["val"].shape[0]
            return None if isinstance(d0, int) else str(d0)
    return None


def _is_symint(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.SymInt)


def split(gm: fx.GraphModule, order: list[str], output_name: str) -> dict[str, Segment]:
    """Cut a tagged graph (see :class:`~passes.assign_segments.AssignSegments`) into segments.

    Parameters become attributes of the one segment that uses them (they are shared tensors,
    not copies). A batch size (SymInt) needed across a boundary is re-read from a tensor input
    of the consuming segment instead of being passed, so segment interfaces are tensors only.
    """
    members: dict[str, list[fx.Node]] = {s: [] for s in order}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            seg = n.meta[SEGMENT_KEY]
            if seg not in members:
                raise ModelError(f"node {n.name} is tagged with unknown segment {seg!r}")
            members[seg].append(n)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    final = out_node.args[0][0]
    owner: dict[str, str] = {}
    segments: dict[str, Segment] = {}
    for seg in order:
        nodes = members[seg]
        if not nodes:
            continue
        inside = set(nodes)
        for a in {a for n in nodes for a in n.all_input_nodes if a.op == "get_attr"}:
            prev = owner.setdefault(str(a.target), seg)
            if prev != seg:
                raise ModelError(f"parameter {a.target} is used by segments {prev} and {seg}")
        outputs = [n for n in nodes if n is final or any(u not in inside and u.op != "output" for u in n.users)]
        outputs = [(output_name if n is final else n.name, n) for n in outputs if not _is_symint(n)]
        segments[seg] = Segment(seg, _subgraph(gm, nodes, outputs, seg))
    return segments



def split_segment(seg: Segment, needed: set[str], rest_name: str) -> tuple[Segment, Segment | None]:
    """Cut ``seg`` in two: what computes the values in ``needed``, and everything else.

    ``needed`` names outputs of the segment or inner values (node names): DeepCache cuts a segment
    at the deep feature it caches, which the rest of the segment then reads as an input.

    The first part keeps the segment's name and computes ``needed`` (plus whatever the second part
    reads from it); the second, ``rest_name``, computes the segment's other outputs. A weight read
    by both parts stays in the first (with the nodes that read it), so weights keep one owner. A
    batch size the second part reads is re-read from one of its own tensor inputs. Returns
    ``(seg, None)`` when nothing would move.
    """
    gm = seg.module
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    produced = dict(zip(out_node.args[0], seg.outputs, strict=True))  # node -> value name
    compute = [n for n in gm.graph.nodes if n.op == "call_function"]
    first: set[fx.Node] = set()

    def pull(node: fx.Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.op != "call_function" or n in first:
                continue
            first.add(n)
            stack.extend(n.all_input_nodes)

    for node in compute:
        if produced.get(node) in needed or node.name in needed:  # an output, or an inner value (a cut point)
            pull(node)
    changed = True
    while changed:
        changed = False
        for n in gm.graph.nodes:
            if n.op == "get_attr":  # a weight read in the first part takes all its readers along
                users = [u for u in n.users if u.op == "call_function"]
                anchored = any(u in first for u in users)
            elif n in first and isinstance(n.meta.get("val"), (list, tuple)):
                users = list(n.users)  # a multi-output op (chunk) keeps its getitems: a tuple is no segment value
                anchored = True
            else:
                continue
            if anchored and not all(u in first for u in users):
                for u in users:
                    pull(u)
                changed = True
    rest = [n for n in compute if n not in first and not _is_symint(n)]
    if not rest:
        return seg, None
    handoff = [n for n in compute if n in first and not _is_symint(n) and any(u in rest for u in n.users)]
    head_outputs = [(produced[n], n) for n in compute if n in first and n in produced] + \
        [(n.name, n) for n in handoff if n not in produced]
    tail_outputs = [(produced[n], n) for n in compute if n in rest and n in produced]
    head = Segment(seg.name, _subgraph(gm, [n for n in compute if n in first], head_outputs, seg.name), role=seg.role)
    tail = Segment(rest_name, _subgraph(gm, rest, tail_outputs, rest_name), role=seg.role)
    return head, tail


def _subgraph(gm: fx.GraphModule, nodes: list[fx.Node], outputs: list[tuple[str, fx.Node]], name: str) -> fx.GraphModule:
    """A segment module computing ``nodes`` of ``gm``; values from outside arrive as placeholders
    named by value (a graph input keeps its name, a handed-over node its node name)."""
    inside = set(nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, torch.Tensor] = {}
    tensors: list[fx.Node] = []
    symints: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a in inside or a in env:
                continue
            if a.op == "get_attr":
                attrs[str(a.target)] = operator.attrgetter(str(a.target))(gm)
                env[a] = graph.get_attr(str(a.target))
                env[a].meta = dict(a.meta)
            elif _is_symint(a):
                symints.append(a)
                env[a] = None
            else:
                ph = graph.placeholder(a.name)
                ph.meta = dict(a.meta)
                env[a] = ph
                tensors.append(ph)
    for a in symints:
        env[a] = _rematerialise(graph, a, tensors)
    for n in nodes:
        env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(tuple(env[n] for _, n in outputs))
    module = fx.GraphModule(attrs, graph, class_name=f"Segment_{name}").eval()
    module.meta[OUTPUTS_KEY] = [value for value, _ in outputs]
    return module


def _rematerialise(graph: fx.Graph, sym: fx.Node, tensors: list[fx.Node]) -> fx.Node:
    """Re-read a SymInt (the batch size) from a tensor placeholder that has it as a dimension."""
    want = str(sym.meta["val"])
    scaled = []  # (tensor, dim, p, q): a dimension the size is p/q of (frames folded into the batch)
    for t in tensors:
        val = t.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim, d in enumerate(val.shape):
            if str(d) == want:
                with graph.inserting_after(t):
                    node = graph.call_function(torch.ops.aten.sym_size.int, (t, dim))
                node.meta["val"] = sym.meta["val"]
                return node
            ratio = _ratio(sym.meta["val"], d)
            if ratio is not None:
                scaled.append((t, dim, *ratio))
    if scaled:
        t, dim, p, q = scaled[0]
        with graph.inserting_after(t):
            size = graph.call_function(torch.ops.aten.sym_size.int, (t, dim))
        size.meta["val"] = t.meta["val"].shape[dim]
        if p != 1:
            with graph.inserting_after(size):
                size = graph.call_function(operator.mul, (size, p))
            size.meta["val"] = t.meta["val"].shape[dim] * p
        with graph.inserting_after(size):
            node = graph.call_function(operator.floordiv, (size, q))
        node.meta["val"] = sym.meta["val"]
        return node
    expr = getattr(getattr(sym.meta["val"], "node", None), "expr", None)
    if expr is not None and any(str(s).startswith("u") for s in expr.free_symbols):
        raise ModelError(f"a data-dependent size ({want}: computed from an input's values, e.g. from an attention "
                         "mask) crosses a boundary between cacheable regions, which cachec cannot split there")
    raise ModelError(f"segment boundary carries the size {want}, which no tensor input of the segment has")


def _ratio(size, dim) -> tuple[int, int] | None:
    """``(p, q)`` when the symbolic ``size`` is ``p/q`` times the symbolic dimension ``dim``."""
    try:
        r = size.node.expr / dim.node.expr
    except AttributeError:
        return None
    if not r.is_Rational or r <= 0:
        return None
    return int(r.p), int(r.q)


def _weight_key(t: torch.Tensor) -> int:
    """What identifies a weight: its storage address (views of one buffer are one weight). Meta
    tensors (a model planned without its weights) all sit at address 0, and a tensor subclass that
    wraps its data (torchao's quantized weights) has no storage of its own to ask: there the
    tensor object stands for itself."""
    if not t.numel() or t.is_meta:
        return id(t)
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:
        return id(t)


def check_weight_ownership(program: Program) -> None:
    """Every parameter tensor is held by exactly one segment (no duplication across variants)."""
    seen: dict[int, str] = {}
    for seg in program.segments.values():
        for name, t in seg.parameters().items():
            key = _weight_key(t)
            if key in seen and seen[key] != seg.name:
                raise ModelError(f"parameter {name} is held by segments {seen[key]} and {seg.name}")
            seen[key] = seg.name


def cache_bytes(program, batch: int) -> int:
    """Bytes of the cache buffers the runtime allocates for ``batch`` (one buffer per cache value)."""
    total = 0
    for v in program.caches().values():
        numel = 1
        for d in v.concrete(batch):
            numel *= int(d)
        total += torch.empty((), dtype=getattr(torch, v.dtype)).element_size() * numel
    return total
