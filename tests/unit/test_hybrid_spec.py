"""The hybrid spelling ``DECISION+FORECASTER``: parsing, refusals, ``cachec policies``, and the
forecast coefficients its controller adds at the decision's irregular full steps (no model)."""

import pytest

from cachec.errors import PolicyError
from cachec.forecast import PREDICT, UPDATE
from cachec.methods.base import StepContext
from cachec.policy import describe_policies, parse_policy
from cachec.program import ModelFacts, PlanFacts


@pytest.mark.parametrize("spec, canonical", [
    ("dbcache:F=1,B=0,t=0.08+taylorseer:O=1", "dbcache:1+taylorseer:O=1"),
    ("fbcache:0.1 + hicache:O=1,sigma=0.8", "fbcache:0.1+hicache:O=1,sigma=0.8"),
    ("static:FFRRFRF+foca", "static:FFRRFRF+foca"),
    ("teacache:0.3,warmup=2+taylorseer", "teacache:0.3,warmup=2+taylorseer"),
    ("easycache:0.1+taylorseer:O=1", "easycache:0.1+taylorseer:O=1"),
])
def test_spec_round_trips(spec, canonical):
    p = parse_policy(spec)
    assert p.spec == canonical
    assert parse_policy(p.spec).spec == canonical
    assert p.dynamic == parse_policy(spec.split("+")[0]).dynamic


@pytest.mark.parametrize("spec, message", [
    ("fora:3+taylorseer", "fora cannot lead a hybrid"),
    ("dbcache+fora:3", "'fora' after '+' is not a forecaster"),
    ("dbcache+taylorseer:3", "'3' does not apply"),
    ("dbcache+taylorseer:N=3", "'N=3' does not apply"),
    ("dbcache+taylorseer:warmup=3", "'warmup=3' does not apply"),
    ("dbcache+foca:O=1", "it takes no key"),
    ("dbcache+taylorseer:O=9", "out of range"),
    ("dbcache:per_sample=1+taylorseer", "per_sample=1 cannot be combined"),
    ("dbcache+", "two specs joined by one '+'"),
    ("static:FR+foca+taylorseer", "two specs joined by one '+'"),
])
def test_bad_hybrids_are_refused_with_one_message(spec, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace("+", r"\+")):
        parse_policy(spec)


def test_policies_table_shows_the_spelling():
    text = describe_policies()
    assert "DECISION+FORECASTER" in text
    assert "dbcache:F=1,B=0,t=0.08+taylorseer:O=1" in text


def test_plan_key_tells_the_hybrid_from_its_decision():
    d, h = parse_policy("dbcache:t=0.1"), parse_policy("dbcache:t=0.1+taylorseer:O=1")
    assert h.plan_key(8) != d.plan_key(8)
    assert parse_policy("dbcache:t=0.3+taylorseer:O=1").plan_key(8) == h.plan_key(8)  # t is a run-time value


def test_forecast_coefficients_follow_the_real_gaps():
    """static:FFRFRRF+taylorseer:O=1: the update at step 3 divides by 2, at step 6 by 3; the forecast
    at step 4 is D0 + 1·D1, at step 5 D0 + 2·D1."""
    policy = parse_policy("static:FFRFRRF+taylorseer:O=1")
    ctrl = policy.controller(7)
    ctx = StepContext(planned=PlanFacts(), model=ModelFacts(), caches={}, batch=1, device="cpu")
    seen = []
    for step in range(7):
        (action,) = list(ctrl.actions(step, ctx))
        seen.append((action.variant, action.letter, action.inputs))
    assert [v for v, _, _ in seen] == ["full", "full", "reuse", "full", "reuse", "reuse", "full"]
    assert seen[3][2][UPDATE][1] == [0.5, -0.5, 0.0]  # D1 <- (F - D0) / 2
    assert seen[6][2][UPDATE][1] == [1 / 3, -1 / 3, 0.0]
    assert seen[4][2][PREDICT] == [[1.0, 1.0]] and seen[5][2][PREDICT] == [[1.0, 2.0]]
