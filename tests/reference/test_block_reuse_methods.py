"""The per-block / per-module reuse methods of issue 24 (FEB-Cache, BlockDance, AdaCache) against
independent hook references, and their degenerate settings.

Each reference (``tests/reference_<name>.py``) runs the original diffusers model with forward
hooks written from the definition in docs/methods.md and shares no code with cachec. Set-up as in
``test_forecast_methods.py``: the bundled trained model ``builtin:tiny-dit`` (6 blocks), 12-step
trajectories, batch 2 (two classes), fp32, CPU, ``x <- x - out / T``; per case the schedule, every
step's output and the final latent agree.

CI time: one capture of the model for the module (policies plan on copies of it) and a program per
plan kind.
"""

from __future__ import annotations

import pytest
import torch
from reference_adacache import AdaCacheReference
from reference_blockcache import BlockCacheReference
from reference_blockdance import BlockDanceReference
from reference_febcache import FEBCacheReference
from trajectories import TinyDitDriver

import cachec
from cachec.errors import PolicyError
from cachec.methods.blockcache import _mean_square_change

T = 12
RTOL = ATOL = 1e-4
SHORT = "tiny-dit"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DRIVER = TinyDitDriver(T, 2)


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


_PROGRAMS: dict = {}


def run_cachec(spec: str):
    model, kw = DRIVER.model_and_inputs(SHORT)
    key = cachec.parse_policy(spec).plan_key(6)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    rt = cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)
    x, outs = DRIVER.run(rt, SHORT)
    return x, outs, rt


def run_reference(cls, spec: str):
    model, _ = DRIVER.model_and_inputs(SHORT)
    with cls(model, spec, T) as ref:
        x, outs = DRIVER.trajectory(ref, SHORT)
    return x, outs, ref


def assert_same(got, want, ctx: str, tol: float = ATOL) -> None:
    (x, outs), (x_ref, outs_ref) = got, want
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=tol, atol=tol, msg=lambda m: f"final latent ({ctx}): {m}")


def assert_reused_something(x) -> None:
    x_plain, _ = DRIVER.plain(SHORT)
    assert (x - x_plain).abs().max() > 10 * ATOL  # something was reused: the comparison can fail


# ------------------------------------------------------------------------------------------------
# FEB-Cache


@pytest.mark.parametrize("spec", ["febcache:3,2", "febcache:2,4,attn_from=0.25,mlp_until=0.75,final=1"])
def test_febcache_matches_the_hook_reference(spec):
    x, outs, rt = run_cachec(spec)
    x_ref, outs_ref, ref = run_reference(FEBCacheReference, spec)
    assert rt.branches["default"].controller.group_schedules == ref.schedules
    assert "P" in rt.stats.schedule  # a step reused one type and computed the other
    assert_same((x, outs), (x_ref, outs_ref), spec)
    assert_reused_something(x)


def test_febcache_degenerate_settings():
    """A = M = 1 is ``none``; both types reusable everywhere on one interval is ``fora:N``."""
    x_plain, outs_plain = DRIVER.plain(SHORT)
    x, outs, rt = run_cachec("febcache:1,1")
    assert rt.stats.schedule == "F" * T
    assert_same((x, outs), (x_plain, outs_plain), "febcache:1,1 vs none", tol=1e-5)
    x_f, outs_f, rt_f = run_cachec("fora:3")
    x, outs, rt = run_cachec("febcache:3,3,attn_from=0,mlp_until=1")
    assert rt.stats.schedule == rt_f.stats.schedule
    assert rt.stats.nfe == pytest.approx(rt_f.stats.nfe)
    assert_same((x, outs), (x_f, outs_f), "febcache vs fora", tol=0)


@pytest.mark.parametrize(("spec", "words"), [
    ("febcache:0", "A"), ("febcache:3,M=-1", "M"), ("febcache:3,attn_from=1.5", "attn_from"),
    ("febcache:3,mlp_until=-0.1", "mlp_until"), ("febcache:3,per_sample=1", "per_sample")])
def test_febcache_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


# ------------------------------------------------------------------------------------------------
# BlockDance


@pytest.mark.parametrize("spec", ["blockdance:2", "blockdance:3,start=0.25,depth=0.5,final=1",
                                  "blockdance:3,start=0.25,depth=0.5,reuse=delta"])
def test_blockdance_matches_the_hook_reference(spec):
    x, outs, rt = run_cachec(spec)
    x_ref, outs_ref, ref = run_reference(BlockDanceReference, spec)
    assert rt.stats.schedule == ref.schedule
    assert_same((x, outs), (x_ref, outs_ref), spec)
    assert_reused_something(x)


def test_blockdance_degenerate_settings():
    """N=1 is ``none``; ``reuse=delta,start=0`` is Δ-DiT on the same front blocks."""
    x_plain, outs_plain = DRIVER.plain(SHORT)
    x, outs, rt = run_cachec("blockdance:1")
    assert rt.stats.schedule == "F" * T
    assert_same((x, outs), (x_plain, outs_plain), "blockdance:1 vs none", tol=1e-5)
    x_d, outs_d, rt_d = run_cachec("delta:3,blocks=0-2")
    x, outs, rt = run_cachec("blockdance:3,start=0,depth=0.5,reuse=delta")
    assert rt.stats.schedule == rt_d.stats.schedule
    assert rt.stats.nfe == pytest.approx(rt_d.stats.nfe)
    assert_same((x, outs), (x_d, outs_d), "blockdance vs delta", tol=0)


@pytest.mark.parametrize(("spec", "words"), [
    ("blockdance:0", "N"), ("blockdance:2,start=1", "start"), ("blockdance:2,start=-0.5", "start"),
    ("blockdance:2,depth=1.5", "depth"), ("blockdance:2,reuse=copy", "reuse")])
def test_blockdance_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


@pytest.mark.parametrize("depth", ["0.1", "1"])
def test_blockdance_depth_outside_the_model_is_a_policy_error(depth):
    model, kw = DRIVER.model_and_inputs(SHORT)
    with pytest.raises(PolicyError, match=r"depth=.*at least 1 and leave the last"):
        cachec.build_program(model, kw, f"blockdance:2,depth={depth}")


# ------------------------------------------------------------------------------------------------
# AdaCache


@pytest.mark.parametrize("spec", ["adacache", "adacache:codebook=0.1:4/0.2:3/0.5:2,block=1,final=1"])
def test_adacache_matches_the_hook_reference(spec):
    x, outs, rt = run_cachec(spec)
    x_ref, outs_ref, ref = run_reference(AdaCacheReference, spec)
    assert rt.stats.schedule == ref.schedule
    rates = rt.branches["default"].controller.rates
    assert rates == pytest.approx(ref.rates, rel=1e-4)
    full = [s for s, c in enumerate(ref.schedule) if c == "F"]
    assert len({b - a for a, b in zip(full, full[1:], strict=False)}) > 1, f"one interval only: {ref.schedule}"  # the codebook chose
    assert_same((x, outs), (x_ref, outs_ref), spec)
    assert_reused_something(x)


def test_adacache_degenerate_settings():
    """One codebook entry above every rate is ``fora:N,warmup=2``; an interval of 1 is ``none``."""
    x_plain, outs_plain = DRIVER.plain(SHORT)
    x, outs, rt = run_cachec("adacache:codebook=100:1")
    assert rt.stats.schedule == "F" * T
    assert_same((x, outs), (x_plain, outs_plain), "adacache:codebook=100:1 vs none", tol=1e-5)
    x_f, outs_f, rt_f = run_cachec("fora:3,warmup=2")
    x, outs, rt = run_cachec("adacache:codebook=100:3")
    assert rt.stats.schedule == rt_f.stats.schedule
    assert_same((x, outs), (x_f, outs_f), "adacache vs fora", tol=0)


@pytest.mark.parametrize(("spec", "words"), [
    ("adacache:codebook=0.1", "not t:n"), ("adacache:codebook=0.2:3/0.1:2", "out of order"),
    ("adacache:codebook=0.1:0", "not t:n"), ("adacache:codebook=-1:2", "not t:n"),
    ("adacache:codebook=inf:2", "not t:n"), ("adacache:block=-2", "block")])
def test_adacache_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


def test_adacache_block_outside_the_model_is_a_policy_error():
    model, kw = DRIVER.model_and_inputs(SHORT)
    with pytest.raises(PolicyError, match="block=6 is outside the model's blocks 0-5"):
        cachec.build_program(model, kw, "adacache:block=6")


# ------------------------------------------------------------------------------------------------
# Foresight (blockcache with metric=mse, scale=foresight)


def block_schedules(rt) -> list[str]:
    return rt.branches["default"].controller.block_schedules


@pytest.mark.parametrize("spec", ["foresight:1", "foresight:2,N=3,warmup=5,final=1"])
def test_foresight_matches_the_hook_reference(spec):
    x, outs, rt = run_cachec(spec)
    x_ref, outs_ref, ref = run_reference(BlockCacheReference, spec)
    assert block_schedules(rt) == ref.block_schedules
    assert "P" in rt.stats.schedule, f"no step where blocks disagreed: {ref.block_schedules}"
    assert_same((x, outs), (x_ref, outs_ref), spec)
    assert_reused_something(x)


def test_foresight_is_blockcache_with_mse_and_foresight_thresholds():
    """The special case, stated: the same schedules and outputs; and gamma=0 or N=1 is ``none``."""
    x, outs, rt = run_cachec("foresight:1.5,N=5")
    x_b, outs_b, rt_b = run_cachec("blockcache:1.5,N=5,warmup=4,metric=mse,scale=foresight")
    assert block_schedules(rt) == block_schedules(rt_b)
    assert_same((x, outs), (x_b, outs_b), "foresight vs blockcache", tol=0)
    x_plain, outs_plain = DRIVER.plain(SHORT)
    for spec in ("foresight:0", "foresight:5,N=1"):
        x, outs, rt = run_cachec(spec)
        assert rt.stats.schedule == "F" * T, spec
        assert_same((x, outs), (x_plain, outs_plain), f"{spec} vs none", tol=1e-5)


@pytest.mark.parametrize(("spec", "words"), [
    ("foresight:-1", "t"), ("foresight:1,N=0", "N"), ("foresight:1,warmup=3", "warmup >= 4"),
    ("foresight:1,scale=warmup", "unknown key 'scale'"), ("blockcache:1,metric=l2", "metric"),
    ("blockcache:1,scale=foresight,warmup=3", "warmup >= 4")])
def test_foresight_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)


def test_mean_square_change_of_several_streams():
    """The MSE graph on a two-stream block (FLUX's text and image; tiny-dit has one stream): the mean
    of the streams' MSEs of their residuals, written here with torch directly."""
    g = torch.Generator().manual_seed(0)
    shapes = {"img": (2, 16, 8), "txt": (2, 4, 8)}
    vals = {f"{w}_{k}": torch.randn(s, generator=g) for k, s in shapes.items() for w in ("old", "out", "in")}
    module = _mean_square_change([(f"old_{k}", f"out_{k}", f"in_{k}") for k in shapes], "c", dict(vals, c=torch.empty(())))
    order = [n.target for n in module.graph.nodes if n.op == "placeholder"]
    assert sorted(order) == sorted(vals)
    got = module(*(vals[n] for n in order))
    got = got[0] if isinstance(got, (tuple, list)) else got
    want = sum(((vals[f"old_{k}"] - (vals[f"out_{k}"] - vals[f"in_{k}"])) ** 2).mean() for k in shapes) / 2
    torch.testing.assert_close(got, want)


def test_a_blockcache_program_refuses_another_metric():
    """The metric is compiled into the program: running mse on an l1rel program is refused, not silently wrong."""
    model, kw = DRIVER.model_and_inputs(SHORT)
    program = cachec.build_program(model, kw, "blockcache")
    with pytest.raises(PolicyError, match="compiled for 'blockcache:0.2'"):
        cachec.CacheRuntime(program, "blockcache:0.2,metric=mse", num_steps=T)
