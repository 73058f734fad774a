"""A plan must reuse something: a cached variant that loads no cache replaces no computation.

A method plans its cached variants from the regions it finds (blocks, attention/MLP children).
On a model whose structure those rules do not see (StableCascadeUNet's blocks are flat lists that
mix ResBlocks and attention, so no region is found inside them) the cached variant comes out as a
copy of the full one: the schedule would still print ``R`` steps and the NFE would equal the
number of steps, a silent no-op sold as caching. Reuse in a program means a :class:`Load` of a
cache buffer in place of the segments that computed it; a program whose variants besides
``full`` hold no ``Load`` at all reuses nothing and is refused here, naming the model and policy.
"""

from __future__ import annotations

from ..errors import PolicyError
from ..program import Load


def reuses_something(variants: dict[str, list]) -> bool:
    """Whether any cached variant (every variant but ``full``) reads a cache buffer.

    A program with only a ``full`` variant (``none``) plans no reuse and passes."""
    cached = [ops for name, ops in variants.items() if name != "full"]
    return not cached or any(isinstance(op, Load) for ops in cached for op in ops)


def check_plan_reuses(variants: dict[str, list], model_class: str, policy: str) -> None:
    """Raise :class:`PolicyError` when the plan's cached variants reuse nothing."""
    if reuses_something(variants):
        return
    raise PolicyError(
        f"{policy}: its plan for {model_class} reuses nothing — no cached variant reads a cache, so its "
        f"'reuse' steps would run the whole model (NFE = steps) while the schedule claims reuse. cachec found "
        f"no block or attention/MLP region of {model_class} this policy caches; try another policy "
        "(`cachec inspect MODEL` lists the blocks and regions found), or `none`"
    )
