"""The Plan a method returns: the op-list functions and the checks the planner makes of it.

No model here (no export): the functions are pure, and the checks read only the method and the
plan, so a planner with a stand-in capture is enough.
"""

from collections import ChainMap
from types import SimpleNamespace

import pytest

from cachec.errors import ModelError, PolicyError
from cachec.methods.base import Method
from cachec.planner import Planner
from cachec.planner.plan import Plan, insert_after, per_segment, replace, split_head
from cachec.program import Load, Run, Store

FULL = [Run("prologue"), Run("a"), Run("b"), Run("c"), Run("epilogue")]


def test_op_list_functions_build_new_lists_and_leave_theirs():
    before = list(FULL)
    assert replace(FULL, ["a", "b"], [Load("x", "x"), Run("apply")]) == [
        Run("prologue"), Load("x", "x"), Run("apply"), Run("c"), Run("epilogue")]
    assert insert_after(FULL, "b", [Store("v", "cv")]) == [
        Run("prologue"), Run("a"), Run("b"), Store("v", "cv"), Run("c"), Run("epilogue")]
    assert split_head(FULL, ["prologue", "a"]) == (FULL[:2], FULL[2:])
    assert FULL == before


def test_per_segment_rewrites_the_runs_it_knows_in_every_variant():
    def rewrite(op):
        if op.segment != "b":
            return None
        return {"full": [op, Store("b_out", "cache_b")], "reuse": [Load("cache_b", "b_out")]}

    got = per_segment(FULL, ["full", "reuse"], rewrite)
    assert got["full"] == [Run("prologue"), Run("a"), Run("b"), Store("b_out", "cache_b"), Run("c"), Run("epilogue")]
    assert got["reuse"] == [Run("prologue"), Run("a"), Load("cache_b", "b_out"), Run("c"), Run("epilogue")]


class _Toy(Method):
    name = "toy"
    variants = ("full", "reuse")

    def __init__(self, plan):
        super().__init__(Method.Params())
        self._plan = plan

    def plan(self, planner):
        return self._plan


def _planner() -> Planner:
    planner = object.__new__(Planner)  # the checks read only the capture's class name
    planner.captured = SimpleNamespace(model_class="ToyModel")
    return planner


def _plan(variants) -> Plan:
    return Plan(variants=variants, base={}, order=[], examples=ChainMap({}, {}))


def test_a_plan_that_is_not_a_plan_is_named_as_a_bug_of_the_method():
    with pytest.raises(ModelError, match=r"toy: its plan returned NoneType, not a Plan \(a bug in the method\)"):
        _planner().plan_of(_Toy(None))


def test_a_plan_without_the_variants_its_controller_runs_is_refused():
    with pytest.raises(ModelError, match="toy: its plan built no 'reuse' variant"):
        _planner().plan_of(_Toy(_plan({"full": FULL})))


def test_a_plan_whose_cached_variant_loads_nothing_is_refused():
    with pytest.raises(PolicyError, match="toy: its plan for ToyModel reuses nothing"):
        _planner().plan_of(_Toy(_plan({"full": FULL, "reuse": FULL})))
    plan = _plan({"full": FULL, "reuse": [Load("c", "v")]})
    assert _planner().plan_of(_Toy(plan)) is plan
