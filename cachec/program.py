"""The compiled program: segments (lowerable graphs) and variants (what a step runs).

Values flow between segments by name in one namespace: a segment's placeholders are the names
of the values it reads and ``module.meta["cachec_output_names"]`` the names of the values it writes.
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
from .graph_keys import OUTPUTS_KEY
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
class ModelFacts:
    """What the capture recorded about the denoiser, which the runtime needs to call it.

    ``batch_dims``: the inputs that carry the batch, and at which dimension (empty: a static batch);
    ``max_batch``: the largest batch the program (an artifact: its lowered files) accepts;
    ``output_form``: how the model returns its output (:mod:`cachec.output_forms`; None: a tensor);
    ``config``: the model's config (not described: an artifact keeps it in ``model.config``).
    """

    model_class: str = ""
    config: dict = field(default_factory=dict)
    batch_dims: dict[str, int] = field(default_factory=dict)
    max_batch: int | None = None
    output_form: str | None = None


@dataclass
class PlanFacts:
    """What planning decided: the policy, the structure it planned on, and the names the runtime
    and the policy's controller look up in a step.

    ``blocks``/``regions``: the model's blocks and cacheable regions (``Region.to_json``);
    ``base_path``: the uncached segment order; ``none_flops``: per-sample FLOPs of the uncached step
    (the NFE unit); ``signal``: the probe value a dynamic policy reads on the host; ``feedback``:
    values a full step hands back to the controller; ``step_inputs``: per-step inputs the runtime
    fills (a forecast's coefficients); ``tokens``: token regions of ToCa/DuCa (None: no token
    variants); ``followers``: a program's own chain of variants within a step (per-block caching;
    not described: see :meth:`Program.followers`); ``method``: the
    :class:`~cachec.methods.base.Method` planned, in memory only (a description records its spec,
    ``policy``; :func:`cachec.compatibility.compiled_method` parses that once for a described program).
    """

    policy: str = ""
    policy_data: dict | None = None
    blocks: list[str] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    base_path: list[str] = field(default_factory=list)
    none_flops: float | None = None
    signal: str | None = None
    feedback: list[str] = field(default_factory=list)
    step_inputs: list[str] = field(default_factory=list)
    tokens: dict | None = None
    followers: dict[str, list[str]] = field(default_factory=dict)
    method: object = field(default=None, compare=False, repr=False)


# fields a description (a manifest's program.meta) records, and the facts that hold each; a field
# that is None is left out where its checker takes no null (see _META)
_MODEL_META = ("model_class", "batch_dims", "max_batch", "output_form")
_PLAN_META = ("policy", "blocks", "regions", "signal", "base_path", "none_flops", "feedback", "step_inputs",
              "policy_data", "tokens")
_NULLABLE_META = ("signal", "policy_data")


@dataclass
class Program:
    """Segments, variants and the interface of a compiled denoiser, with what its capture recorded
    (``model``) and its planning decided (``planned``). What a backend wrote (an artifact's lowered
    files) is not part of it: :meth:`Backend.artifact_options
    <cachec.backends.base.Backend.artifact_options>` hands it to the backend's lowering."""

    segments: dict[str, Segment]
    variants: dict[str, list[Op]]
    inputs: list[str]
    output: str
    values: dict[str, ValueSpec]
    model: ModelFacts = field(default_factory=ModelFacts)
    planned: PlanFacts = field(default_factory=PlanFacts)

    def variant_flops(self, variant: str) -> float:
        return sum(self.segments[op.segment].flops for op in self.variants[variant] if isinstance(op, Run))

    def batch_of(self, env: dict) -> int:
        """The batch size of a step, read from an input that has the batch dimension."""
        batched = [n for n in self.model.batch_dims if n in env]
        first = env[batched[0]] if batched else env[self.inputs[0]]
        return int(first.shape[0]) if first.dim() else 1

    def host_reads(self) -> set[str]:
        """Values the runtime reads on the host after a variant: the probe signal and tail feedback,
        and their per-item versions where the program has them (per-sample decisions)."""
        names = set(self.planned.feedback)
        if self.planned.signal:
            names.add(self.planned.signal)
        return names | {per_item(n) for n in names if per_item(n) in self.values}

    def followers(self, path: str) -> tuple[str, ...]:
        """The variants a step may run after ``path`` within the same call: a dynamic policy's probe
        head hands its values to one of its tails; every other variant is the whole step, unless
        the program declares its own chain (``planned.followers``: per-block caching runs a variant
        per block)."""
        return tuple(self.planned.followers.get(path, FOLLOWERS.get(path, ())))

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
            "meta": self.described_meta(),
        }

    def described_meta(self) -> dict:
        """The description's ``meta``: the facts a graph-less runtime needs, under their manifest names."""
        meta = {k: getattr(self.model, k) for k in _MODEL_META}
        meta.update({k: getattr(self.planned, k) for k in _PLAN_META})
        return {k: v for k, v in meta.items() if v is not None or k in _NULLABLE_META}

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
        meta = d["meta"]
        return cls(
            segments=segments,
            variants={n: [op_from_json(op) for op in ops] for n, ops in d["variants"].items()},
            inputs=list(d["inputs"]),
            output=d["output"],
            values={n: ValueSpec(v["shape"], v["dtype"]) for n, v in d["values"].items()},
            model=ModelFacts(**{k: meta[k] for k in _MODEL_META if meta.get(k) is not None}),
            planned=PlanFacts(**{k: meta[k] for k in _PLAN_META if meta.get(k) is not None}),
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
