"""Graph → graph rewrites of cachec, one small pass per file (installed as ``cachec.passes``).

Each pass states what it *requires* of its input graph and what it *ensures* of its output, and
returns a :class:`PassResult`. The :class:`PassManager` lints the graph after every pass, so a
broken rewrite is caught where it happens, not three passes later.
"""

from .assign_segments import AssignSegments
from .attention_scores import ScoreError, TapTokenScore
from .dedupe_conditioning import DedupeConditioning
from .gather_scatter import GatherScatter, TokenwiseError
from .hoist_conditioning import HoistConditioning
from .infra import Pass, PassManager, PassResult
from .narrow_chunked_linears import NarrowChunkedLinears
from .remove_noops import RemoveNoOps
from .strip_export import StripExportArtifacts

__all__ = [
    "Pass",
    "PassManager",
    "PassResult",
    "StripExportArtifacts",
    "RemoveNoOps",
    "HoistConditioning",
    "AssignSegments",
    "DedupeConditioning",
    "NarrowChunkedLinears",
    "GatherScatter",
    "TokenwiseError",
    "TapTokenScore",
    "ScoreError",
]
