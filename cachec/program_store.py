"""The captured program on disk without pickle: the exporter's JSON graph plus safetensors weights.

Why not ``torch.export.save``/``load``: a ``.pt2`` archive may hold pickled tensors and objects,
and ``torch.export.load`` unpickles them without restriction (``weights_only=False``), so a
``model.pt2`` taken from shared storage could run any code it carried. Here the graph is the
exporter's own JSON (``torch._export.serde``) and every tensor is in a safetensors file; loading
reads both with parsers that build data, never objects.

The JSON is still *interpreted* by torch: symbolic shapes are parsed with ``sympy.sympify``
(an ``eval``), guard code is ``exec``-ed by ``ExportedProgram.module()``, and each node's target
names a callable that running the graph calls. So before torch sees the document,
:func:`check_document` admits only what an exported denoiser contains: expressions made of
sympy constructors, numbers and symbol names (checked on their syntax tree, not by running
them); no guard code; ATen/prims operators and a few higher-order wrappers as targets; and after
deserialising, :func:`check_targets` confirms every resolved target is such an operator. A
document that fails is an :class:`~cachec.errors.ArtifactError`; ``save`` applies the same check,
so cachec never writes a program it would refuse to load.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
import os
import re
from pathlib import Path

import torch

from .errors import ArtifactError

GRAPH_FILE = "program.json"  # the exporter's JSON of the captured ExportedProgram
WEIGHTS_FILE = "program.safetensors"  # its state_dict and tensor constants
MAX_EXPR_CHARS = 4096  # a symbolic shape of an exported denoiser is a few dozen characters

# what a graph node may call: ATen and prims operators, and higher-order wrappers that only
# run their own subgraph (an exported denoiser uses these for no_grad/autocast regions)
OP_NAMESPACES = ("aten", "prims")
HIGHER_ORDER = ("wrap_with_set_grad_enabled", "wrap_with_autocast")
# ATen operators that reach outside the process's tensors (a file by name)
DENIED_OPS = ("from_file",)
# Python-level targets the exporter writes for symbolic-shape arithmetic
PY_TARGETS = {f"_operator.{n}" for n in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq",
                                          "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "getitem")}
PY_TARGETS |= {f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")}
PY_TARGETS |= {f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite",
                                       "sym_sqrt", "sym_sum", "_sym_sqrt")}
_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_HOP_TARGET = re.compile(r"torch\.ops\.higher_order\.([A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

# sympy constructors an expression may call (srepr output of integer shape arithmetic)
SYMPY_CALLS = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "Tuple",
}
SYMPY_NAMES = {"oo", "zoo", "nan", "true", "false", "True", "False", "pi", "E", "S"}


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's are often several), cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _torch_sympy_functions() -> frozenset[str]:
    """The torch sympy functions the deserialiser puts in scope (FloorDiv, CeilDiv, ...)."""
    import sympy
    import torch.utils._sympy.functions as fns

    return frozenset(n for n, v in vars(fns).items()
                     if not n.startswith("_") and isinstance(v, type) and issubclass(v, sympy.Basic))


# ---------------------------------------------------------------------------------------------
# the document


@functools.lru_cache(maxsize=4096)
def _expr_problem(text) -> str | None:
    """Why ``text`` is not a symbolic expression as the exporter writes it (None: it is).

    Checked on its Python syntax tree (``ast.parse`` does not run anything): calls of known sympy
    constructors, numbers, ``True``/``False``, keyword flags, arithmetic and comparisons; a string
    only as a symbol's name or a float's digits. No attribute, subscript, lambda or other name.
    """
    if not isinstance(text, str):
        return "is not a string"
    if len(text) > MAX_EXPR_CHARS:
        return f"is {len(text)} characters long (at most {MAX_EXPR_CHARS})"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "is not an expression"
    calls = SYMPY_CALLS | _torch_sympy_functions()
    allowed_ops = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
                   ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or, ast.Not)

    def bad(node) -> str | None:
        if isinstance(node, ast.Expression):
            return bad(node.body)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in calls:
                return f"calls {ast.unparse(node.func)!r}, which is not a sympy constructor"
            for i, arg in enumerate(node.args):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    ok = (i == 0 and ((node.func.id == "Symbol" and _NAME.fullmatch(arg.value))
                                      or (node.func.id == "Float" and _NUMBER.fullmatch(arg.value))))
                    if not ok:
                        return f"passes the string {arg.value[:40]!r} to {node.func.id}"
                    continue
                if (why := bad(arg)) is not None:
                    return why
            for kw in node.keywords:
                if kw.arg is None or not isinstance(kw.value, ast.Constant) or isinstance(kw.value.value, str):
                    return f"passes a keyword to {node.func.id} that is not a flag or number"
            return None
        if isinstance(node, ast.Constant):
            return None if isinstance(node.value, (bool, int, float)) else f"holds the constant {node.value!r:.40}"
        if isinstance(node, ast.Name):
            return None if node.id in SYMPY_NAMES or node.id in calls or re.fullmatch(r"[a-z]+\d+", node.id) \
                else f"names {node.id!r}"
        if isinstance(node, ast.BinOp) and isinstance(node.op, allowed_ops):
            return bad(node.left) or bad(node.right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, allowed_ops):
            return bad(node.operand)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, allowed_ops):
            return next((w for v in node.values if (w := bad(v)) is not None), None)
        if isinstance(node, ast.Compare) and all(isinstance(o, allowed_ops) for o in node.ops):
            return next((w for v in [node.left, *node.comparators] if (w := bad(v)) is not None), None)
        return f"contains {type(node).__name__}"

    try:
        return bad(tree)
    except RecursionError:
        return "is nested too deeply"


def _target_problem(target) -> str | None:
    """Why a node may not call ``target`` (None: it may)."""
    if not isinstance(target, str):
        return "is not a string"
    if target in PY_TARGETS:
        return None
    if m := _OP_TARGET.fullmatch(target):
        ns, op = m.group(1), m.group(2)
        if ns == "higher_order":
            return None if op in HIGHER_ORDER else f"is the higher-order operator {op!r}, which cachec does not load"
        if ns not in OP_NAMESPACES:
            return f"is in the operator namespace {ns!r}; accepted: {', '.join(OP_NAMESPACES)}"
        return f"reads outside the program ({op})" if op in DENIED_OPS else None
    if m := _HOP_TARGET.fullmatch(target):
        return None if m.group(1) in HIGHER_ORDER else \
            f"is the higher-order operator {m.group(1)!r}, which cachec does not load"
    return "is not an ATen/prims operator or shape arithmetic"


def check_document(doc, where: str) -> None:
    """Refuse a graph document torch would have to run code from (see the module docstring).

    ``where`` names the file in the message. Walks the whole document once: every ``expr_str``
    (symbolic shapes), every node ``target``, the guard code and the range constraints.
    """
    def fail(field: str, problem: str):
        raise ArtifactError(f"{where}: {field} {problem}; this is not a program cachec wrote: recompile the "
                            "artifact (cachec compile) or restore it from the original")

    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        fail("the document", "is not an exported program")
    if doc.get("guards_code"):
        fail("'guards_code'", "is not empty (cachec writes no guard code: it would be executed on load)")
    ranges = doc.get("range_constraints", {})
    if not isinstance(ranges, dict):
        fail("'range_constraints'", "is not a mapping")
    for name, r in ranges.items():
        if not (isinstance(r, dict) and all(isinstance(r.get(k), (int, type(None))) and not isinstance(r.get(k), bool)
                                            for k in ("min_val", "max_val"))):
            fail(f"'range_constraints.{name[:40]}'", "is not a pair of integer bounds")

    def dotted(path: tuple) -> str:
        return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")

    # iterative, paths formatted only for a message: a denoiser's document has ~10^5 values
    stack = [(doc["graph_module"], ("graph_module",), False)]
    while stack:
        node, path, in_nodes = stack.pop()
        if len(path) > 200:
            fail(dotted(path[:8]) + "...", "is nested too deeply")
        if isinstance(node, dict):
            expr = node.get("expr_str")
            if expr is not None and (why := _expr_problem(expr) if isinstance(expr, str) else "is not a string"):
                fail(f"the symbolic expression at {dotted(path)}", why)
            if in_nodes and "target" in node and (why := _target_problem(node["target"])) is not None:
                fail(f"the node target {str(node['target'])[:80]!r} at {dotted(path)}", why)
            stack.extend((value, (*path, key), key == "nodes") for key, value in node.items()
                         if isinstance(value, (dict, list)))
        elif isinstance(node, list):
            stack.extend((value, (*path, i), in_nodes) for i, value in enumerate(node)
                         if isinstance(value, (dict, list)))


def check_targets(ep: torch.export.ExportedProgram, where: str) -> None:
    """After deserialising: every node of every (sub)graph calls an admitted operator."""
    allowed_py = {getattr(operator, n.split(".", 1)[1]) for n in PY_TARGETS if n.startswith("_operator.")}
    allowed_py |= {getattr(math, n.split(".", 1)[1]) for n in PY_TARGETS if n.startswith("math.")}
    allowed_py |= {getattr(torch, n.split(".", 1)[1]) for n in PY_TARGETS
                   if n.startswith("torch.") and hasattr(torch, n.split(".", 1)[1])}
    for gm in ep.graph_module.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        for node in gm.graph.nodes:
            if node.op not in ("call_function", "call_method", "call_module"):
                continue
            t = node.target
            ok = node.op == "call_function" and (
                (isinstance(t, torch._ops.OpOverload) and t.namespace in OP_NAMESPACES
                 and t._schema.name.split("::")[-1] not in DENIED_OPS)
                or (isinstance(t, torch._ops.HigherOrderOperator) and t.name() in HIGHER_ORDER)
                or any(t is f for f in allowed_py))
            if not ok:
                raise ArtifactError(f"{where}: node {node.name!r} calls {t!r}, which is not an ATen/prims operator; "
                                    "this is not a program cachec wrote: recompile the artifact")


# ---------------------------------------------------------------------------------------------
# save and load


def save(ep: torch.export.ExportedProgram, out_dir: Path) -> None:
    """Write ``ep`` as ``GRAPH_FILE`` (JSON, no guard code) and ``WEIGHTS_FILE`` (safetensors)."""
    from torch._export.serde.serialize import serialize

    art = serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    doc = json.loads(art.exported_program)
    doc["guards_code"] = []  # exec-ed by ExportedProgram.module(); cachec's graph carries its own checks
    check_document(doc, f"{out_dir / GRAPH_FILE} (being written)")
    tensors, meta = {}, {"params": {}, "aliases": {}, "devices": {}}
    first_of: dict[tuple, str] = {}
    for kind, items in (("state_dict", ep.state_dict), ("constants", ep.constants)):
        for fqn, t in items.items():
            if not isinstance(t, torch.Tensor):
                raise ArtifactError(f"the captured program holds a constant {fqn!r} of type {type(t).__name__}; "
                                    "only tensors can be stored without pickle")
            name = f"{kind}/{fqn}"
            if isinstance(t, torch.nn.Parameter):
                meta["params"][name] = bool(t.requires_grad)
            meta["devices"][name] = t.device.type
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if key in first_of:  # safetensors refuses shared memory: store it once, the rest by name
                meta["aliases"][name] = first_of[key]
                continue
            first_of[key] = name
            tensors[name] = t.detach().to("cpu").contiguous()
    _save_weights(tensors, out_dir / WEIGHTS_FILE, {"cachec": json.dumps(meta)})
    (out_dir / GRAPH_FILE).write_bytes(json.dumps(doc).encode())


def _save_weights(tensors: dict, path: Path, metadata: dict) -> None:
    """safetensors' ``save_file``, whose write errors (a full disk) surface as the ``OSError`` they are.

    Why: the Rust writer reports them as ``SafetensorError("... I/O error: File too large (os error
    27)")``, which callers that handle a full disk (``cachec compile``) would not recognise.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


def load(directory: Path) -> torch.export.ExportedProgram:
    """Read the program :func:`save` wrote; every problem is one :class:`ArtifactError`."""
    from safetensors import SafetensorError, safe_open
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    graph, weights = Path(directory) / GRAPH_FILE, Path(directory) / WEIGHTS_FILE
    try:
        doc = json.loads(graph.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{graph} is corrupt: not valid JSON ({one_line(exc, 200)})") from None
    except OSError as exc:
        raise ArtifactError(f"{graph} cannot be read: {exc}") from None
    check_document(doc, str(graph))
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("cachec", "null"))
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{weights} is corrupt: not a safetensors file cachec wrote ({one_line(exc, 200)})") from None
    if not (isinstance(meta, dict) and all(isinstance(meta.get(k), dict) for k in ("params", "aliases", "devices"))
            and all(isinstance(v, str) for v in meta["aliases"].values())):
        raise ArtifactError(f"{weights} is corrupt: its metadata does not describe the program's tensors")
    parts: dict[str, dict] = {"state_dict": {}, "constants": {}}
    for name in list(raw) + list(meta["aliases"]):
        kind, _, fqn = str(name).partition("/")
        target = raw.get(meta["aliases"].get(name, name))
        if kind not in parts or not fqn or target is None:
            raise ArtifactError(f"{weights} is corrupt: entry {str(name)[:80]!r} is not a tensor of the program")
        device = meta["devices"].get(name, "cpu")
        t = target.to(device) if device == "cuda" and torch.cuda.is_available() else target
        if name in meta["params"]:
            try:
                t = torch.nn.Parameter(t, requires_grad=bool(meta["params"][name]))
            except RuntimeError as exc:  # e.g. an integer tensor marked as requiring gradients
                raise ArtifactError(f"{weights} is corrupt: entry {name[:80]!r} cannot be a parameter ({exc})") from None
        parts[kind][fqn] = t
    try:
        program = _dict_to_dataclass(schema.ExportedProgram, doc)
        ep = ExportedProgramDeserializer().deserialize(program, parts["state_dict"], parts["constants"], None)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - the deserialiser raises many kinds on a malformed document
        raise ArtifactError(f"{graph} could not be deserialised by torch {torch.__version__} "
                            f"({type(exc).__name__}: {one_line(exc, 300)}); recompile the artifact") from exc
    check_targets(ep, str(graph))
    ep._guards_code = []
    return ep
