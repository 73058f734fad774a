"""HyCa (``hyca:N,solvers=...,calib=FILE``) and ClusCa (``clusca:N,O,K,gamma``) against independent
references, their degenerate settings (TaylorSeer), and their refusals. One module for both: they
share one capture of the model and the TaylorSeer programs they reduce to.

HyCa:
The reference (``HyCaReference`` in ``tests/reference_hyca.py``) is TaylorSeer by hooks with each
channel's forecast truncated at its own order; it shares no code with cachec. The calibration file
is written by the test: every stream's channels in three clusters ``c mod 3`` whose errors make
cluster j pick order j, so the run-time path (orders chosen from the file, handed to the graph per
channel) is checked against the same orders computed by the reference. The calibration maths that
choose clusters on a real trajectory are in tests/unit/test_channel_clusters.py.

ClusCa: the reference (``ClusCaReference`` in ``tests/reference_clusca.py``) runs the whole model
every step, clusters the last block's output with its own float64 K-means and reads the fresh
tokens' exact rows from the feed-forward's full output, where cachec clusters in the graph in fp32
and computes only those rows (the token variant); the seeded draw is the one shared input.

Set-up as in test_forecast_methods.py: ``builtin:tiny-dit``, 12 steps, batch 2 (two classes), fp32,
CPU, one capture for the module.
"""

from __future__ import annotations

import pytest
import torch
from calibration_files import TINY_DIT_CHANNELS, TINY_DIT_STREAMS, calibration_file, hyca_section
from reference_clusca import ClusCaReference
from reference_hyca import HyCaReference
from trajectories import TinyDitDriver

import cachec
from cachec.errors import PolicyError

T = 12
TOL = 1e-4
CHANNELS, STREAMS = TINY_DIT_CHANNELS, TINY_DIT_STREAMS

pytestmark = pytest.mark.usefixtures("one_thread")


DRIVER = TinyDitDriver(T, 2)


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture per model, policies planned on copies (tests/conftest.py)."""


def cyclic(channels: int) -> list[int]:
    return [c % 3 for c in range(channels)]


section = hyca_section


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """Calibration files: three clusters c mod 3 (orders 0, 1, 2), and one cluster of order 1."""
    d = tmp_path_factory.mktemp("hyca")
    (d / "three").mkdir()
    (d / "one").mkdir()
    return {"three": calibration_file(d / "three", hyca=section(cyclic, 3)),
            "one": calibration_file(d / "one", hyca=section(lambda c: [1] * c, 2))}


_PROGRAMS: dict = {}


def program(spec: str):
    """The program of ``spec``, one per plan key (the others change only run-time parameters)."""
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    key = cachec.parse_policy(spec).plan_key(6)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    return _PROGRAMS[key]


def run(spec: str):
    rt = cachec.CacheRuntime(program(spec), spec, num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    return x, outs, rt


def assert_same(a, b, ctx, tol=TOL):
    for s, (p, q) in enumerate(zip(a[1], b[1], strict=True)):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol, msg=lambda m: f"final latent ({ctx}): {m}")


def max_diff(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("N, warmup", [(3, 2), (4, 1)])
def test_hyca_matches_the_reference(calib, N, warmup):
    spec = f"hyca:{N},warmup={warmup},calib={calib['three']}"
    model, _ = DRIVER.model_and_inputs("tiny-dit")
    with HyCaReference(model, N, 2, warmup, T, cyclic) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, "tiny-dit")
    x, outs, rt = run(spec)
    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    assert rt.stats.full_steps == ref.full_steps and "R" in ref.schedule, ctx
    assert_same((x, outs), (x_ref, outs_ref), ctx)
    # the per-channel orders matter: every channel at order 2 (taylorseer) gives other outputs
    _, outs_ts, _ = run(f"taylorseer:{N},O=2,warmup={warmup}")
    assert max_diff(outs, outs_ts) > 10 * TOL


@pytest.mark.parametrize("hyca, taylorseer", [("hyca:3,solvers=2,calib={three}", "taylorseer:3,O=2"),
                                              ("hyca:3,calib={one}", "taylorseer:3,O=1")])
def test_one_order_everywhere_is_taylorseer(calib, hyca, taylorseer):
    """solvers=O (every cluster forced to order O), or one cluster whose best order is O: TaylorSeer
    order O on the same schedule, exactly (the masks are all ones)."""
    a = run(hyca.format(**calib))
    b = run(taylorseer)
    assert a[2].stats.schedule == b[2].stats.schedule and "R" in a[2].stats.schedule
    assert_same(a[:2], b[:2], f"{hyca} vs {taylorseer}", tol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("hyca:3,solvers=3,calib=x", "solvers='3'; accepted: distinct digits 0..2"),
    ("hyca:3,solvers=001,calib=x", "solvers='001'"),
    ("hyca:3,solvers=a,calib=x", "solvers='a'"),
    ("hyca:3", "hyca needs calib=FILE"),
    ("hyca:0,calib=x", "N"),
])
def test_bad_parameters_are_refused(spec, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cachec.parse_policy(spec)


def test_calibrations_that_do_not_fit_are_refused(tmp_path, calib):
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    no_section = calibration_file(tmp_path)
    with pytest.raises(PolicyError, match="has no hyca section"):
        cachec.parse_policy(f"hyca:3,calib={no_section}").resolved()
    with pytest.raises(PolicyError, match="intervals up to 8; use N <= 8"):
        cachec.parse_policy(f"hyca:9,calib={calib['three']}").controller(T)
    (tmp_path / "w").mkdir()
    narrow = calibration_file(tmp_path / "w", hyca=section(cyclic, 3, channels=64))
    with pytest.raises(PolicyError, match="no clusters for 128 channels of stream b0_attn1__0: it was measured on another"):
        cachec.build_program(model, kw, f"hyca:3,calib={narrow}")
    # a program compiled with one file, run with another model's file: refused, not a shape error
    rt = cachec.CacheRuntime(program(f"hyca:3,calib={calib['three']}"), f"hyca:3,calib={narrow}", num_steps=T)
    with pytest.raises(PolicyError, match="names other streams or channel counts than the program was compiled with"):
        DRIVER.run(rt, "tiny-dit")
    (tmp_path / "x").mkdir()
    extra = calibration_file(tmp_path / "x", hyca=section(cyclic, 3, streams=[*STREAMS, "b9_ff__0"]))
    with pytest.raises(PolicyError, match="names stream b9_ff__0, which this model does not have"):
        cachec.build_program(model, kw, f"hyca:3,calib={extra}")


# ------------------------------------------------------------------------------------------------
# ClusCa


def test_clusca_matches_the_reference():
    model, _ = DRIVER.model_and_inputs("tiny-dit")
    with ClusCaReference(model, T, N=3, O=2, K=8, gamma=0.3, seed=4) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, "tiny-dit")
    x, outs, rt = run("clusca:3,O=2,K=8,gamma=0.3,seed=4")
    assert rt.stats.full_steps == ref.full_steps and "P" in rt.stats.schedule, rt.stats.schedule
    assert_same((x, outs), (x_ref, outs_ref), f"cachec {rt.stats.schedule}")
    # the clusters matter: without propagation (only the fresh tokens written into D0) the outputs differ
    _, outs_no_spread, _ = run("clusca:3,O=2,K=8,gamma=0,seed=4")
    assert max_diff(outs, outs_no_spread) > 10 * TOL
    # a partial step counts the MLPs at the K rows they computed: between the forecast and the full step
    assert 12 * 2 / 12 < rt.stats.nfe < 12


def test_clusca_without_fresh_tokens_or_propagation_is_taylorseer():
    a = run("clusca:3,O=2,K=8,gamma=0,fresh=0")
    b = run("taylorseer:3,O=2")
    assert a[2].stats.full_steps == b[2].stats.full_steps and "P" in a[2].stats.schedule
    assert_same(a[:2], b[:2], "clusca gamma=0,fresh=0 vs taylorseer", tol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("clusca:3,gamma=1.5", "gamma=1.5 is out of range"),
    ("clusca:3,fresh=2", "fresh=2 is out of range"),
    ("clusca:3,K=0", "K=0 is out of range"),
    ("clusca:3,O=5", "O=5 is out of range"),
    ("clusca:3,iters=0", "iters=0 is out of range"),
])
def test_clusca_bad_parameters_are_refused(spec, message):
    with pytest.raises(PolicyError, match=message.replace(".", r"\.")):
        cachec.parse_policy(spec)


def test_clusca_refusals_on_this_model():
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    with pytest.raises(PolicyError, match="K=65 clusters, but the last block has 64 tokens; use K <= 64"):
        cachec.build_program(model, kw, "clusca:3,K=65")
    with pytest.raises(PolicyError, match="one token per cluster .* which the onnxruntime backend does not lower yet"):
        cachec.CacheRuntime(program("clusca:3,O=2,K=8"), "clusca:3,O=2,K=8,gamma=0.3", backend="onnxruntime")
