"""Which method a program compiled for another method may run: the rule, written once.

A program holds the variants its compiled method planned. A requested method runs on it when

* it is ``none``: every program has the full variant (the same-backend uncached baseline), or
* its :meth:`~cachec.methods.base.Method.plan_key` equals the compiled method's: the variants
  depend on the plan key only, so run-time parameters (intervals, thresholds, warmup/final) may
  differ from the compiled ones.

Data: a method that reads data (a calibration file, published ratios) from the same source as
the compiled method takes the data the program carries (resolved when it was compiled), so a
loaded artifact or a served request never reads a file again.

The runtime (a program and the method to run on it), ``cachec serve`` (a request's method against
the served artifact's) and the artifact loader (a method planned again on the artifact's graph)
all apply this rule through :func:`compatible` / :func:`with_program_data`; none restates it.
"""

from __future__ import annotations

from .errors import PolicyError
from .methods.base import Method


def compiled_method(program) -> Method:
    """The method ``program`` was compiled for: the planner's own object, or, for a program read from
    a description (a manifest), its recorded spec parsed once here (an edge: data coming in)."""
    if program.planned.method is None:
        from .policy import parse_policy

        program.planned.method = parse_policy(program.planned.policy)
    return program.planned.method


def compatible(requested: Method, compiled: Method, blocks: int, data: dict | None = None) -> Method:
    """The method to run when ``requested`` is asked of a program compiled for ``compiled``.

    ``blocks`` is the program's block count (plan keys may depend on it), ``data`` the data the
    program carries (``meta["policy_data"]``). Raises :class:`PolicyError` naming both methods when
    the program lacks the variants ``requested`` runs."""
    if requested.name != "none" and requested.plan_key(blocks) != compiled.plan_key(blocks):
        raise PolicyError(
            f"the program was compiled for {compiled.spec!r}; {requested.spec!r} needs other variants: compile "
            f"for it, change only run-time parameters of {compiled.name} (intervals, thresholds, warmup/final; "
            f"e.g. {compiled.spec!r}), or use 'none'"
        )
    return with_program_data(requested, compiled, data)


def with_program_data(requested: Method, compiled: Method, data: dict | None) -> Method:
    """``requested`` with the program's ``data`` when it needs data from the compiled method's source
    and has none of its own; else ``requested`` unchanged (methods are immutable: a new instance)."""
    if requested.needs_data and requested.data is None and data is not None \
            and requested.data_source() == compiled.data_source():
        return requested.with_data(data)
    return requested
