"""The policy grammar: every spec parses to the documented values or raises PolicyError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachec.errors import PolicyError
from cachec.policy import POLICIES, describe_policies, parse_policy, teacache_coefficients


def test_main_value_and_keys():
    assert parse_policy("fora:4").params["N"] == 4
    assert parse_policy("fora:N=4").params == parse_policy("fora:4").params
    p = parse_policy("delta:3,blocks=2-5,warmup=2,final=1")
    assert (p.params["N"], p.params["blocks"], p.params["warmup"], p.params["final"]) == (3, "2-5", 2, 1)
    assert parse_policy("teacache:0.3,coeffs=flux.1-dev").params["coeffs"] == "flux.1-dev"
    assert parse_policy("teacache").params["final"] == 1  # TeaCache forces the last step full
    assert parse_policy("none").spec == "none"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("foo:3", "unknown policy 'foo'"),
        ("fora:x", "not an int"),
        ("fora:0", "out of range"),
        ("fora:N=3,bogus=1", "unknown key 'bogus'"),
        ("fbcache:t=-1", "out of range"),
        ("teacache:0.2,coeffs=nope", "unknown coeffs"),
        ("static:FRX", "letters F"),
        ("static:RF", "starting with F"),
        ("fora:3,4", "KEY=VALUE"),
        ("", "non-empty"),
    ],
)
def test_errors_say_what_is_accepted(spec, fragment):
    with pytest.raises(PolicyError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(spec)


def test_teacache_polynomial_matches_numpy_poly1d_order():
    coeffs = teacache_coefficients()["flux.1-dev"]
    poly = parse_policy("teacache:0.25,coeffs=flux.1-dev").polynomial()
    x = 0.037
    expected = sum(c * x ** (len(coeffs) - 1 - i) for i, c in enumerate(coeffs))
    assert poly(x) == pytest.approx(expected, rel=1e-12)
    assert parse_policy("teacache:0.25").polynomial()(x) == x


def test_schedules_follow_the_rules():
    def run(spec, T, signals=None):
        ctl = parse_policy(spec).controller(T)
        return "".join("F" if ctl.decide(s, None if signals is None else signals[s]) else "R" for s in range(T))

    assert run("none", 5) == "FFFFF"
    assert run("fora:3", 10) == "FRRFRRFRRF"
    assert run("fora:3,warmup=3", 10) == "FFFRRFRRFR"
    assert run("fora:3,final=2", 10) == "FRRFRRFRFF"
    assert run("static:FRRFR", 5) == "FRRFR"
    # fbcache: reuse when the probe is below t
    assert run("fbcache:0.1", 5, [9, 0.05, 0.2, 0.01, 0.01]) == "FRFRR"
    # teacache: accumulate; full (and reset) when the sum reaches t; last step forced
    assert run("teacache:0.1", 6, [9, 0.04, 0.04, 0.04, 0.01, 0.5]) == "FRRFRF"


def test_describe_lists_every_policy_and_parameter():
    text = describe_policies()
    for cls in POLICIES.values():
        assert cls.name in text
        for p in cls.all_params():
            assert f"{p.name}=" in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_string_parses_or_raises_policy_error(text):
    try:
        p = parse_policy(text)
    except PolicyError:
        return
    assert p.name in POLICIES
    assert parse_policy(p.spec).params == p.params
