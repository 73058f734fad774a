"""cachec against independent hook-based reference implementations, over whole trajectories.

Every test drives a 20-step trajectory (batch 2, fp32, CPU) on a small random-weight model of
each supported diffusers class (``tests/small_models.py``): decreasing timesteps (999 -> 0 ints
or floats; FLUX sigma-like floats 1 -> 0.05), the latent updated after every call by the fixed
rule ``x <- x - out / T``, all other inputs fixed. The same driver runs the plain model, the
reference (``tests/reference_hooks.py``: the original model with forward hooks, written from the
policy definitions and sharing no code with cachec) and the cachec runtime.

Per policy the tests compare the final latent and every step's output (``torch.testing.
assert_close`` with ``RTOL``/``ATOL``, the latent being O(1)), the full-step list, and for the
dynamic policies the probe signal of every step. Thresholds of the dynamic policies are chosen
per model so that the schedule is non-trivial (some steps reused, some full besides step 0 and
the final one) and no probe value lies within ``MARGIN`` (relative) of the threshold, so the
decisions are robust to float noise; each cached result must differ from ``none`` by more than
``10 * ATOL`` so the comparison can fail.

Programs are compiled once per (model, policy kind) and shared; other parameters of the same
kind (intervals, thresholds, schedules, warmup/final) run as runtimes over the same program,
as ``cachec.load(..., policy=...)`` allows.
"""

from __future__ import annotations

import pytest
import torch
from reference_hooks import HookedReference
from small_models import SHORT
from trajectories import Driver

import cachec

T = 20
BATCH = 2
RTOL = ATOL = 1e-4  # latents are O(1) (mean |x| ~ 0.8-0.95 for every model)
MARGIN = 0.005  # minimum relative distance of any probe value from a dynamic threshold
MODELS = list(SHORT)  # dit, pixart, flux, sd3, wan, unet

# thresholds giving non-trivial schedules on these seeded models (see the module docstring)
FBCACHE_T = {"dit": 1.0, "pixart": 0.2, "flux": 0.5, "sd3": 0.4, "wan": 0.025, "unet": 0.07}
TEACACHE_T = {"dit": 0.15, "pixart": 0.2, "flux": 0.15, "sd3": 0.15, "wan": 0.1, "unet": 0.05}
# Δ-DiT block ranges: DiT inner+last, PixArt last, FLUX double 1 .. single 0 (both streams),
# SD3 block 0 (both streams), Wan the whole stack, U-Net the mid block (its only range whose
# output has its input's shape and no skip feature leaves it)
DELTA = {"dit": "delta:2,blocks=1-2", "pixart": "delta:2,blocks=1-1", "flux": "delta:2,blocks=1-2",
         "sd3": "delta:3,blocks=0-0", "wan": "delta:2,blocks=0-1", "unet": "delta:2,blocks=2-2"}
STATIC = "static:FRRFRFRRRFFRRFRRFRRF"


pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.slow]  # whole trajectories of every policy on several models (tests/README.md)


# ------------------------------------------------------------------------------------------------
# shared pieces: models, inputs, trajectory driver, compiled programs


DRIVER = Driver(T, BATCH)  # tests/trajectories.py
model_and_inputs, trajectory, plain, timesteps = DRIVER.model_and_inputs, DRIVER.trajectory, DRIVER.plain, DRIVER.timesteps


def reference(short: str, spec: str) -> tuple[torch.Tensor, list[torch.Tensor], HookedReference]:
    model, _ = model_and_inputs(short)
    with HookedReference(model, spec, T) as ref:
        x, outs = trajectory(ref, short)
    return x, outs, ref


_PROGRAMS: dict[tuple[str, str], object] = {}


def runtime(short: str, spec: str, compile_spec: str | None = None) -> cachec.CacheRuntime:
    """A runtime for ``spec`` over the program compiled (once) for ``compile_spec`` (default ``spec``)."""
    compile_spec = compile_spec or spec
    key = (short, compile_spec)
    if key not in _PROGRAMS:
        model, kw = model_and_inputs(short)
        rt = cachec.compile(model, kw, compile_spec, num_steps=T)
        _PROGRAMS[key] = rt.program
        if spec == compile_spec:
            return rt
    return cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)


run_cachec = DRIVER.run


def compile_spec_for(short: str, spec: str) -> str:
    """The spec a policy kind is compiled with for a model (all specs of that kind share its program)."""
    kind = spec.split(":")[0]
    return {"fora": "fora:2", "delta": DELTA[short], "static": STATIC, "fbcache": f"fbcache:{FBCACHE_T[short]}",
            "teacache": f"teacache:{TEACACHE_T[short]}", "none": "none"}[kind]


def threshold_margin(ref: HookedReference) -> float:
    """Smallest relative distance between the threshold and the value each dynamic decision compared."""
    t, vals, acc = ref.p["t"], [], 0.0
    for s, sig in enumerate(ref.signals):
        if ref.forced(s):
            acc = 0.0
            continue
        if ref.name == "fbcache":
            vals.append(sig)
        else:
            acc += sig
            vals.append(acc)
            if ref.schedule[s] == "F":
                acc = 0.0
    return min(abs(v - t) / t for v in vals)


# ------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("short", MODELS)
def test_none_is_the_plain_model_at_every_step(short):
    """``none`` (compiled for ``none``) returns the plain diffusers output at every step."""
    x_plain, outs_plain = plain(short)
    rt = runtime(short, "none")
    x, outs = run_cachec(rt, short)
    assert rt.stats.full_steps == list(range(T))
    for s, (a, b) in enumerate(zip(outs, outs_plain, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("short", MODELS)
@pytest.mark.parametrize("spec", ["fora:1", "teacache:0", "fbcache:0"])
def test_degenerate_settings_reproduce_none(short, spec):
    """fora:1 / teacache:0 / fbcache:0 compute every step fully: the cached program's full path is exact."""
    x_plain, _ = plain(short)
    rt = runtime(short, spec, compile_spec_for(short, spec))
    x, _ = run_cachec(rt, short)
    assert rt.stats.full_steps == list(range(T)), rt.stats.schedule
    torch.testing.assert_close(x, x_plain, rtol=0, atol=1e-5)
    # the reference agrees that nothing is reused
    x_ref, _, ref = reference(short, spec)
    assert ref.full_steps == list(range(T))
    torch.testing.assert_close(x_ref, x_plain, rtol=0, atol=1e-5)


def _cases():
    cases = []
    for short in MODELS:
        cases += [(short, "fora:2"), (short, "fora:3"), (short, DELTA[short]), (short, STATIC),
                  (short, f"fbcache:{FBCACHE_T[short]}"), (short, f"teacache:{TEACACHE_T[short]}")]
    # warmup / final on top of the schedules
    cases += [("flux", "fora:3,warmup=4,final=3"), ("dit", "delta:3,blocks=1-2,warmup=2,final=2"),
              ("sd3", STATIC + ",warmup=2,final=2"), ("pixart", f"fbcache:{FBCACHE_T['pixart']},warmup=3"),
              ("wan", f"teacache:{TEACACHE_T['wan']},final=3")]
    return cases


@pytest.mark.parametrize(("short", "spec"), _cases(), ids=[f"{s}-{p}" for s, p in _cases()])
def test_policy_matches_the_hook_reference(short, spec):
    """cachec and the hook reference agree on the schedule, every step's output and the final latent."""
    x_ref, outs_ref, ref = reference(short, spec)
    rt = runtime(short, spec, compile_spec_for(short, spec))
    if ref.name in ("fbcache", "teacache"):
        # the test's own preconditions: a non-trivial, float-noise-robust schedule
        assert "R" in ref.schedule and any(s not in (0, T - 1) for s in ref.full_steps), ref.schedule
        assert threshold_margin(ref) > MARGIN, "threshold too close to a probe value: pick another"

    x, outs = run_cachec(rt, short)

    ctx = f"cachec {rt.stats.schedule} vs reference {ref.schedule}"
    if ref.name in ("fbcache", "teacache"):
        ctx += f"\ncachec signals {rt.stats.signals}\nreference signals {ref.signals}"
    assert rt.stats.full_steps == ref.full_steps, ctx
    if ref.name in ("fbcache", "teacache"):
        # the probe itself (step 0 has no reference value; cachec reports inf or nan there)
        torch.testing.assert_close(torch.tensor(rt.stats.signals[1:], dtype=torch.float64),
                                   torch.tensor(ref.signals[1:], dtype=torch.float64), rtol=1e-4, atol=1e-6)
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s} ({ctx}): {m}")
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL)
    # caching changed the result by much more than the tolerance: the comparison can fail
    assert "R" in rt.stats.schedule
    assert float((x - plain(short)[0]).abs().max()) > 10 * ATOL


@pytest.mark.parametrize(("short", "spec"), [("pixart", f"fbcache:{FBCACHE_T['pixart']}"),
                                             ("flux", f"teacache:{TEACACHE_T['flux']}")])
def test_back_to_back_trajectories_do_not_share_state(short, spec):
    """Without reset(), a second trajectory (timestep jumps back up) repeats the first exactly."""
    rt = runtime(short, spec, compile_spec_for(short, spec))
    first, _ = run_cachec(rt, short)  # resets explicitly
    schedule = rt.stats.schedule
    second, _ = trajectory(lambda **kw: rt(**kw)[0], short)  # the new trajectory is detected
    assert rt.stats.schedule == schedule and rt.history[-2].schedule == schedule
    torch.testing.assert_close(second, first, rtol=0, atol=1e-6)


def test_runtime_delta_range_override_is_honoured_or_rejected():
    """delta:2,blocks=0-2 over a program compiled for blocks=1-1 must raise or compute blocks 0-2."""
    short, spec = "dit", "delta:2,blocks=0-2"
    try:
        rt = runtime(short, spec, "delta:2,blocks=1-1")
    except cachec.PolicyError:
        return
    x, _ = run_cachec(rt, short)
    x_ref, _, _ = reference(short, spec)
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL)
