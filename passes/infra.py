"""Pass infrastructure: the ``Pass`` base class, ``PassResult`` and a linting ``PassManager``.

Modelled on ``onnx_ir.passes`` and ``torch.fx.passes.infra``: a pass is a callable object with
``requires``/``ensures`` hooks around a ``call`` that does the rewrite. Keeping the contract in
the class (rather than in comments) is what lets passes be reordered and composed safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


class PassError(RuntimeError):
    """A pass found its precondition or postcondition violated (a bug, not a user error)."""


class Pass:
    """One graph rewrite. Subclasses implement :meth:`call`; they may override the checks."""

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


def lint(gm: fx.GraphModule) -> None:
    """Structural check after every pass: FX lint plus 'every non-output node is used or effectful'."""
    gm.graph.lint()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            target = node.target
            obj = gm
            for part in str(target).split("."):
                if not hasattr(obj, part):
                    raise PassError(f"get_attr {target!r} refers to a missing attribute")
                obj = getattr(obj, part)


class PassManager:
    """Runs passes in order, linting after each; records which passes modified the graph."""

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)
        self.log: list[tuple[str, bool]] = []

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for p in self.passes:
            result = p(gm)
            gm = result.graph_module
            gm.recompile()
            try:
                lint(gm)
            except Exception as exc:
                raise PassError(f"graph is invalid after pass {p.name}: {exc}") from exc
            self.log.append((p.name, result.modified))
            modified |= result.modified
        return PassResult(gm, modified)
