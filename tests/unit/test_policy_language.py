"""The policy grammar: every spec parses to the documented values or raises PolicyError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachec.errors import PolicyError
from cachec.methods import METHODS
from cachec.methods.teacache import teacache_coefficients
from cachec.policy import describe_policies, parse_policy


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


def test_taylorseer_places_full_steps_as_cachec_or_as_diffusers_hook():
    import torch
    from diffusers.hooks.taylorseer_cache import TaylorSeerCacheHook, TaylorSeerState

    T = 12

    def full_steps(spec):
        ctl = parse_policy(spec).controller(T)
        return [s for s in range(T) if ctl.decide(s)]

    def diffusers_full_steps(N, W):
        class OneState:  # diffusers' StateManager, without the cache context it would need
            state = TaylorSeerState()

            def get_state(self):
                return self.state

        hook = TaylorSeerCacheHook(N, W, torch.float32, OneState())
        return [s for s in range(T) if hook._measure_should_compute()[0]]

    # cachec: N counted from the last warm-up step; diffusers: (step - W - 1) % N == 0 after W warm-up steps
    assert full_steps("taylorseer:4") == [0, 1, 5, 9]
    assert full_steps("taylorseer:4,placement=diffusers") == diffusers_full_steps(4, 2) == [0, 1, 3, 7, 11]
    assert full_steps("taylorseer:5,warmup=3,placement=diffusers") == diffusers_full_steps(5, 3)  # its defaults
    with pytest.raises(PolicyError, match="accepted: cachec, diffusers"):
        parse_policy("taylorseer:4,placement=peer")


def test_describe_lists_every_policy_and_parameter():
    text = describe_policies()
    for cls in METHODS.values():
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
    assert p.name in METHODS
    assert parse_policy(p.spec).params == p.params


def _value():
    """Values a user might type: in and out of range, of the wrong kind, special floats, ranges."""
    return st.one_of(
        st.integers(-5, 2000).map(str),
        st.integers(0, 12).map(str),
        st.floats(0, 1).map(lambda x: f"{x:.3f}"),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["", " ", "nan", "inf", "-inf", "1e308", "1e-400", "0x10", "1_000", "٣", "1-2", "3-1",
                         "0-0", "a-b", "FRRF", "RF", "FFRRX", "flux.1-dev", "nosuch", "=", ",", ":"]),
        st.sampled_from(sorted(teacache_coefficients())),
        st.text(max_size=6),
    )


@st.composite
def _structured_spec(draw):
    """A spec generated from the grammar: a known name (or a near miss), a bare main value or
    none, then KEY=VALUE items with known keys, near-miss keys and repeats, odd whitespace."""
    name = draw(st.sampled_from(sorted(METHODS) * 4 + ["FORA", " fora ", "fora2", "tea-cache", ""]))
    keys = [p.name for p in METHODS[name.strip().lower()].all_params()] if name.strip().lower() in METHODS else []
    items = []
    if draw(st.booleans()):
        items.append(draw(_value()))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(keys * 4 + ["N", "t", "bogus", "", " warmup"]) if keys else st.text(max_size=5))
        items.append(f"{key}={draw(_value())}" if draw(st.integers(0, 9)) else key)  # sometimes no '='
    sep = draw(st.sampled_from([",", ", ", " ,"]))
    return name + ((draw(st.sampled_from([":", ": "])) + sep.join(items)) if items or draw(st.booleans()) else "")


@settings(max_examples=600, deadline=None)
@given(_structured_spec())
def test_grammar_generated_specs_parse_to_valid_policies_or_raise_policy_error(spec):
    try:
        p = parse_policy(spec)
    except PolicyError:
        return
    assert p.name in METHODS
    params = {q.name: q for q in type(p).all_params()}
    assert set(p.params) == set(params)
    for key, value in p.params.items():  # every accepted value has its declared kind and range
        q = params[key]
        assert type(value) is q.kind, (spec, key, value)
        if q.lo is not None:
            assert value >= q.lo, (spec, key, value)
        if q.hi is not None:
            assert value <= q.hi, (spec, key, value)
    assert parse_policy(p.spec).params == p.params  # the canonical spec round-trips
    if p.name == "delta":  # blocks= is checked against the model when planned: PolicyError there too
        try:
            a, b = p.block_range(4)
            assert 0 <= a <= b < 4
        except PolicyError:
            pass
    steps = len(p.params["schedule"]) if p.name == "static" else 8  # a schedule fixes the length
    try:
        ctl = p.controller(steps)  # and drives a trajectory
    except PolicyError:
        # parameters checked against the trajectory or a file: a budget above the step count,
        # ratios= naming no published key and no calibration file, warmup + final forcing every step
        assert p.name in ("budget", "magcache", "hyca", "omnicache") or p.params["warmup"] + p.params["final"] >= steps, spec
        return
    assert ctl.decide(0, 0.0) is True
