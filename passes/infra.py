"""Pass infrastructure: the ``Pass`` base class, ``PassResult`` and a linting ``PassManager``.

Modelled on ``onnx_ir.passes`` and ``torch.fx.passes.infra``: a pass is a callable object with
``requires``/``ensures`` hooks around a ``call`` that does the rewrite. Keeping the contract in
the class (rather than in comments) is what lets passes be reordered and composed safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from cachec.graph_keys import OUTPUTS_KEY

try:  # torch's own deferred-code graph module (Inductor's passes build theirs the same way)
    from torch.fx._lazy_graph_module import _LazyGraphModule as _DeferredCodeModule
except ImportError:  # a torch without it: code is generated at construction, as before
    _DeferredCodeModule = fx.GraphModule


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


class PassError(RuntimeError):
    """A pass found its precondition or postcondition violated (a bug, not a user error)."""


class Pass:
    """One graph rewrite. Subclasses implement :meth:`call`; they may override the checks.

    ``in_place`` declares whether :meth:`call` rewrites the graph module it is given (most passes
    of cachec do: graphs are large and a pass runs once per plan) or builds a new one and leaves
    its input untouched (:class:`~passes.gather_scatter.GatherScatter`: the region's own segment
    still runs in the other variants). A caller that needs the input of an in-place pass
    afterwards copies it first (:meth:`cachec.capture.Captured.copy`). :class:`PassManager`
    enforces the declaration, as ``onnx_ir``'s pass manager does: an in-place pass returns the
    module it was given, a pass that is not in place returns another and has not changed its input.
    """

    in_place: bool = True

    def requires(self, gm: fx.GraphModule) -> None:
        """Raise :class:`PassError` if ``gm`` is not a valid input for this pass."""

    def ensures(self, gm: fx.GraphModule) -> None:
        """Raise :class:`PassError` if ``gm`` does not have the properties this pass promises."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        self.requires(gm)
        result = self.call(gm)
        self.ensures(result.graph_module)
        return result

    @property
    def name(self) -> str:
        return type(self).__name__


def dead_values(gm: fx.GraphModule) -> list[fx.Node]:
    """Computed nodes nothing uses and that have no effect (what dead-code elimination removes)."""
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")
            and not n.users and not n.is_impure()]


def lint(gm: fx.GraphModule) -> None:
    """Structural check after every pass: FX lint, every ``get_attr`` resolves, and every
    non-output node is used or effectful.

    The last one matters beyond tidiness: a dead value inside a block (a text MLP whose output
    the model never reads) becomes a region with no outputs, on which planning fails far from
    the cause. Passes that can leave dead values (no-op removal) eliminate them themselves.
    """
    gm.graph.lint()
    dead = dead_values(gm)
    if dead:
        names = ", ".join(n.name for n in dead[:5]) + (" ..." if len(dead) > 5 else "")
        raise PassError(f"dead values (computed, never used, no effect): {names}")
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            target = node.target
            obj = gm
            for part in str(target).split("."):
                if not hasattr(obj, part):
                    raise PassError(f"get_attr {target!r} refers to a missing attribute")
                obj = getattr(obj, part)


def build_module(root, graph: fx.Graph, class_name: str, outputs: list[str] | None = None) -> fx.GraphModule:
    """The one way cachec makes a graph module outside a pass: a planner cut (a segment), a fused
    variant, a pruned copy or a new weightless segment (a delta, a probe).

    ``root`` holds what the graph's ``get_attr`` nodes read (a module, or a dict of tensors);
    ``outputs`` names the values the graph returns, in order (``meta[OUTPUTS_KEY]``, what a
    segment hands on). The result is in eval mode and checked once by :func:`lint`, as a pass's
    result is, so a built graph with a dead value or a dangling attribute fails here, naming the
    graph, instead of as an empty region or a lowering error far from the cause.
    """
    module = graph_module(root, graph, class_name).eval()
    if outputs is not None:
        module.meta[OUTPUTS_KEY] = list(outputs)
    check_built(module, class_name)
    return module


def eliminate_dead_code(graph: fx.Graph) -> bool:
    """``graph.eliminate_dead_code()``, removing the same nodes, faster.

    Why: torch's version asks every node whether it is impure (an operator-schema lookup), although
    only a node nobody reads can go; asking only those was about a tenth of planning on FLUX.1-dev.
    """
    return graph.eliminate_dead_code(is_impure_node=lambda node: bool(node.users) or node.is_impure())


def graph_module(root, graph: fx.Graph, class_name: str = "GraphModule") -> fx.GraphModule:
    """A graph module whose Python code is generated when it first runs, not when it is built.

    Why: planning builds a module per segment cut, pruned copy and fused chain (about 250 on
    FLUX.1-dev), and most are read as graphs only and then merged away; generating and compiling
    each one's ``forward`` source was about half of planning. The module behaves as a plain
    ``fx.GraphModule`` (``recompile()`` marks its code stale, a call or ``.code`` regenerates it);
    hand it to :func:`ready` before an exporter inspects its ``forward``.
    """
    return _DeferredCodeModule(root, graph, class_name=class_name)


def ready(module: fx.GraphModule) -> fx.GraphModule:
    """``module`` with its Python code generated now, for tools that read ``forward``'s signature
    instead of calling it (``torch.export``, the ONNX exporter)."""
    if isinstance(module, _DeferredCodeModule) and _DeferredCodeModule is not fx.GraphModule:
        _DeferredCodeModule.force_recompile(module)
    return module


def check_built(module: fx.GraphModule, what: str) -> None:
    """Lint a graph module that was built or edited outside a pass (see :func:`build_module`)."""
    try:
        lint(module)
    except Exception as exc:
        raise PassError(f"built graph {what} is invalid: {exc}") from exc


def _fingerprint(gm: fx.GraphModule) -> list[tuple]:
    """What a pass that is not in place must leave as it was: every node, its op, target and args."""
    return [(n, n.op, n.target, n.args, n.kwargs) for n in gm.graph.nodes]


class PassManager:
    """Runs passes in order, eliminating dead code and linting (:func:`lint`) after each; the result
    says whether any modified the graph.

    Dead-code elimination after every pass is what guarantees that no region, segment or variant
    computes a value nobody reads (a pass that leaves one — no-op removal, hoisting — needs no
    clean-up of its own), and lint then checks the promise.

    The module's code is regenerated once, after the last pass: no pass runs the module, lint
    reads the graph, and regenerating a whole denoiser's code costs about a second on FLUX.1-dev's
    7,000 nodes, once per pass before (a module from :func:`graph_module`, as the planner's are,
    only marks its code stale then: it is generated if the module ever runs).
    """

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for p in self.passes:
            before = None if p.in_place else _fingerprint(gm)
            result = p(gm)
            _check_in_place(p, gm, result.graph_module, before)
            gm = result.graph_module
            if eliminate_dead_code(gm.graph):
                modified = True
            try:
                lint(gm)
            except Exception as exc:
                raise PassError(f"graph is invalid after pass {p.name}: {exc}") from exc
            modified |= result.modified
        gm.recompile()
        return PassResult(gm, modified)


def _check_in_place(p: Pass, given: fx.GraphModule, returned: fx.GraphModule, before: list[tuple] | None) -> None:
    """Hold ``p`` to its ``in_place`` declaration (see :class:`Pass`)."""
    if p.in_place and returned is not given:
        raise PassError(f"pass {p.name} is declared in place but returned a new graph module")
    if not p.in_place:
        if returned is given:
            raise PassError(f"pass {p.name} is declared not in place but returned the graph module it was given")
        if _fingerprint(given) != before:
            raise PassError(f"pass {p.name} is declared not in place but changed the graph module it was given")
