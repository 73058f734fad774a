"""``blockcache`` (per-block adaptive caching) against its hook reference, over whole trajectories.

The reference (``tests/reference_blockcache.py``) runs the original diffusers model with forward
hooks written from the definition and shares no code with cachec. Per model and spec the tests
compare every block's schedule, every step's output and the final latent (``RTOL``/``ATOL`` as the
other policy references); each spec is chosen so that blocks disagree within a step. At the
degenerate settings (``t=0``, ``N=1``) every block runs at every step and the result is the plain
model's. FLOPs are checked per block against ``torch.utils.flop_counter`` on the plain model (one
count per block, by hooks): a step costs the uncached step minus the blocks it reused.
"""

from __future__ import annotations

import pytest
import torch
from reference_blockcache import BlockCacheReference
from reference_hooks import block_list
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from trajectories import Driver

import cachec
import cachec.runtime
from cachec.errors import PolicyError

pytestmark = pytest.mark.usefixtures("one_thread")

T = 12
RTOL = ATOL = 1e-4
DRIVER = Driver(T, 2)
_PROGRAMS: dict[str, object] = {}


def runtime(short: str, spec: str) -> cachec.CacheRuntime:
    if short not in _PROGRAMS:
        model, kw = DRIVER.model_and_inputs(short)
        _PROGRAMS[short] = cachec.compile(model, kw, "blockcache", num_steps=T).program
    return cachec.CacheRuntime(_PROGRAMS[short], spec, num_steps=T)


def block_schedules(rt) -> list[str]:
    return rt.branches["default"].controller.block_schedules


CASES = [("dit", "blockcache:2"), ("dit", "blockcache:1,scale=warmup,warmup=3"), ("pixart", "blockcache:1,scale=warmup,warmup=3,N=4"),
         ("flux", "blockcache:0.3"), ("sd3", "blockcache:2,final=2")]


@pytest.mark.slow  # five models' trajectories twice (tests/README.md)
@pytest.mark.parametrize(("short", "spec"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_blockcache_matches_the_hook_reference(short, spec):
    model, _ = DRIVER.model_and_inputs(short)
    with BlockCacheReference(model, spec, T) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, short)
    rt = runtime(short, spec)
    x, outs = DRIVER.run(rt, short)
    assert block_schedules(rt) == ref.block_schedules
    assert "P" in rt.stats.schedule, f"no step where blocks disagreed: {ref.block_schedules}"
    for s, (o, r) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(o, r, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL)
    x_plain, _ = DRIVER.plain(short)
    assert (x - x_plain).abs().max() > 10 * ATOL  # something was reused: the comparison can fail


@pytest.mark.parametrize("spec", ["blockcache:0", "blockcache:5,N=1"])
def test_degenerate_settings_reproduce_none(spec):
    x_plain, outs_plain = DRIVER.plain("dit")
    rt = runtime("dit", spec)
    x, outs = DRIVER.run(rt, "dit")
    assert block_schedules(rt) == ["F" * T] * len(block_schedules(rt))
    assert rt.stats.nfe == pytest.approx(T)
    for o, p in zip(outs, outs_plain, strict=True):
        torch.testing.assert_close(o, p, rtol=0, atol=1e-5)
    with BlockCacheReference(DRIVER.model_and_inputs("dit")[0], spec, T) as ref:
        DRIVER.trajectory(ref, "dit")
    assert ref.block_schedules == block_schedules(rt)


def _plain_block_flops(short: str) -> tuple[float, list[float]]:
    """FLOPs of one plain forward and of each block in it, per sample (torch's flop counter)."""
    model, kw = DRIVER.model_and_inputs(short)
    counter, marks = FlopCounterMode(display=False), []

    def mark(*_):
        marks.append(counter.get_total_flops())

    blocks = block_list(model)
    handles = [h for b in blocks for h in (b.register_forward_pre_hook(mark), b.register_forward_hook(mark))]
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:  # attention as matmuls the counter sees
        model(**kw, return_dict=False)
    for h in handles:
        h.remove()
    batch = kw["hidden_states"].shape[0]
    return counter.get_total_flops() / batch, [(marks[2 * i + 1] - marks[2 * i]) / batch for i in range(len(blocks))]


def test_flops_are_counted_per_block():
    """Each step saves, against the uncached step, exactly the FLOPs of the blocks it reused (torch's
    counter on the plain model, per block), so NFE reflects exactly which blocks ran: a reused block
    does not even compute its conditioning (its cross-attention keys and values of the prompt).

    PixArt, not DiT: DiT's output layer calls block 0's timestep embedding a second time, which
    the plain model computes twice and cachec once, so block 0's saving is smaller there."""
    _, per_block = _plain_block_flops("pixart")
    rt = runtime("pixart", "blockcache:1,scale=warmup,warmup=3,N=4")
    DRIVER.run(rt, "pixart")
    full = rt.stats.full_flops  # the uncached step, whole batch
    for s, step_flops in enumerate(rt.stats.step_flops):
        reused = [i for i, sched in enumerate(block_schedules(rt)) if sched[s] == "R"]
        saved = (full - step_flops) / 2  # per sample (batch 2)
        assert saved == pytest.approx(sum(per_block[i] for i in reused), rel=1e-6), f"step {s}, reused {reused}"
    assert "P" in rt.stats.schedule


def test_at_most_one_host_read_per_step(monkeypatch):
    reads = []
    real = cachec.runtime._host_value
    monkeypatch.setattr(cachec.runtime, "_host_value", lambda t: reads.append(tuple(t.shape)) or real(t))
    rt = runtime("dit", "blockcache:4,N=8")
    DRIVER.run(rt, "dit")
    ran = sum(1 for s in range(T) if any(b[s] == "F" for b in block_schedules(rt)))
    assert reads == [(len(block_schedules(rt)),)] * ran
    assert ran < T  # some step reused every block and read nothing


@pytest.mark.parametrize(("spec", "words"), [
    ("blockcache:-1", "t"), ("blockcache:0.2,N=0", "N"), ("blockcache:0.2,scale=relative", "scale"),
    ("blockcache:0.2,scale=warmup", "warmup >= 3"), ("blockcache:0.2,per_sample=1", "per_sample")])
def test_bad_parameters_are_policy_errors(spec, words):
    with pytest.raises(PolicyError, match=words):
        cachec.parse_policy(spec)
