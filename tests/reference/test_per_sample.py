"""Per-sample decisions (``per_sample=1``): each batch item's result is that item run alone.

The reference of an item is the same compiled program run on that item alone, with the policy's
ordinary one-decision-per-batch controller (``per_sample=0``): at batch 1 there is nothing to
disagree with, so that is what the item does without neighbours. Compared, over whole
trajectories on batches whose items have different classes / prompts and latents:

* each item's schedule (``TrajectoryStats.item_schedules``) against its schedule alone;
* each item's output at every step, bit for bit (``torch.equal``), in fp32;
* the batch's NFE against the mean of the items' NFEs (FLOPs are counted per item run).

Bit for bit needs kernels whose result for a row does not depend on the other rows, which the
CPU's are not (MKL's one-row GEMV against GEMM, oneDNN's per-batch convolution algorithms, the
scalar tail of vectorised loops: the *uncached* models differ by ~2e-7 between batch 4 and
batch 1). The comparisons therefore run under :class:`batch_invariant.BatchInvariant`, which
computes products row by row and pads pointwise ops, so any difference left would be the cache
machinery's (gathers, scatters, per-item probes, per-item controllers).

Thresholds are found per model and policy, by running the items alone over a grid, as the first
one at which the items' schedules differ, so that every test exercises a mixed step (``M``).
"""

from __future__ import annotations

import statistics

import pytest
import torch
from batch_invariant import BatchInvariant
from small_models import TEXT_TOKENS, make

import cachec
import cachec.runtime
from cachec.errors import PolicyError
from cachec.models import example_inputs, resolve
from cachec.program import per_item

pytestmark = pytest.mark.usefixtures("one_thread")

T = 8
BATCH = 3
# candidate thresholds (main value), searched in this order for one where the items disagree
GRID = [round(0.02 * 1.08 ** k, 4) for k in range(64)]  # 0.02 .. 2.5
EXTRA = {"dbcache": ",W=0", "easycache": ",warmup=1", "teacache": "", "fbcache": ""}


def spec_of(kind: str, t: float) -> str:
    return f"{kind}:{'t=' if kind == 'dbcache' else ''}{t}{EXTRA[kind]}"

_MODELS: dict[str, tuple] = {}


def model_and_inputs(short: str):
    """A model and a batch of ``BATCH`` items with different classes (DiT) or prompts (text models)."""
    if short not in _MODELS:
        model = resolve("builtin:tiny-dit").model if short == "tiny-dit" else make(short)
        kw = example_inputs(model, BATCH, 0, text_tokens=TEXT_TOKENS)
        if "class_labels" in kw:
            kw["class_labels"] = torch.arange(BATCH) * 3 % model.config.num_embeds_ada_norm
        _MODELS[short] = (model, kw)
    return _MODELS[short]


def item(kw: dict, i: int) -> dict:
    """Item ``i`` of a batch of inputs (tensors without a batch dimension are shared)."""
    return {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == BATCH and k != "img_ids"
            and k != "txt_ids" else v for k, v in kw.items()}


def trajectory(rt, short: str, kw: dict) -> list[torch.Tensor]:
    """``T`` steps, decreasing timesteps, the latent updated by ``x <- x - out / T``."""
    vals = torch.linspace(1.0, 0.05, T) if short == "flux" else torch.linspace(999, 0, T).round()
    x, outs = kw["hidden_states"].clone(), []
    rt.reset(T)
    for t in vals:
        out = rt(**dict(kw, hidden_states=x, timestep=torch.full_like(kw["timestep"], float(t))))[0]
        outs.append(out.clone())
        x = x - out / T
    return outs


_PROGRAMS: dict[tuple, object] = {}


def program(short: str, kind: str):
    if (short, kind) not in _PROGRAMS:
        model, kw = model_and_inputs(short)
        _PROGRAMS[(short, kind)] = cachec.compile(model, kw, spec_of(kind, 0.1), num_steps=T).program
    return _PROGRAMS[(short, kind)]


def disagreeing_spec(short: str, kind: str) -> str:
    """The first threshold of ``GRID`` at which the items, run alone, take different schedules."""
    _, kw = model_and_inputs(short)
    for t in GRID:
        spec = spec_of(kind, t)
        schedules = set()
        for i in range(BATCH):
            rt = cachec.CacheRuntime(program(short, kind), spec, num_steps=T)
            trajectory(rt, short, item(kw, i))
            schedules.add(rt.stats.schedule)
        if len(schedules) > 1:
            return spec
    raise AssertionError(f"{short}/{kind}: the items agree at every threshold of the grid; widen it")


CASES = [("tiny-dit", "fbcache"), ("dit", "teacache"), ("dit", "easycache"), ("pixart", "fbcache"),
         ("pixart", "dbcache"), ("flux", "teacache"), ("flux", "fbcache")]


@pytest.mark.slow  # a threshold search and four trajectories under row-by-row kernels (tests/README.md)
@pytest.mark.parametrize("short,kind", CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_each_item_equals_itself_run_alone_bit_for_bit(short, kind):
    _, kw = model_and_inputs(short)
    spec = disagreeing_spec(short, kind)
    prog = program(short, kind)
    with BatchInvariant():
        batched = cachec.CacheRuntime(prog, spec + ",per_sample=1", num_steps=T)
        outs = trajectory(batched, short, kw)
        alone = []
        for i in range(BATCH):
            rt = cachec.CacheRuntime(prog, spec, num_steps=T)
            alone.append((trajectory(rt, short, item(kw, i)), rt.stats))
    stats = batched.stats
    assert "M" in stats.schedule, f"{spec}: the items never disagreed ({stats.item_schedules})"
    for i, (outs_i, stats_i) in enumerate(alone):
        assert stats.item_schedules[i] == stats_i.schedule, f"item {i}"
        for s, (o, ref) in enumerate(zip(outs, outs_i, strict=True)):
            assert torch.equal(o[i:i + 1], ref), f"item {i}, step {s} ({stats.item_schedules[i][s]}): " \
                                                 f"max diff {(o[i:i + 1] - ref).abs().max():.3g}"
    assert stats.nfe == pytest.approx(statistics.fmean(s.nfe for _, s in alone), rel=1e-9)


@pytest.mark.slow
def test_batched_cfg_halves_decide_like_the_branches_of_sequential_cfg():
    """A batched CFG call ``[cond, uncond]`` with per-sample decisions equals the two branches of
    sequential CFG (each its own caches and decisions), bit for bit."""
    model, kw = model_and_inputs("dit")
    x, cond = kw["hidden_states"][:1], kw["class_labels"][:1]
    null = torch.tensor([model.config.num_embeds_ada_norm])
    pair = dict(hidden_states=torch.cat([x, x]), class_labels=torch.cat([cond, null]), timestep=kw["timestep"][:2])
    prog = program("dit", "fbcache")
    spec = disagreeing_spec("dit", "fbcache") + ",per_sample=1"
    vals = torch.linspace(999, 0, T).round()
    batched = cachec.CacheRuntime(prog, spec, num_steps=T)
    sequential = cachec.CacheRuntime(prog, spec, num_steps=T)
    with BatchInvariant():
        xb, xs = pair["hidden_states"].clone(), x.clone()
        for step, t in enumerate(vals):
            ts = torch.full((2,), int(t))
            ob = batched(**dict(pair, hidden_states=xb, timestep=ts))[0]
            parts = []
            for name, labels in (("cond", cond), ("uncond", null)):
                with sequential.cache_context(name, step_index=step, num_inference_steps=T):
                    parts.append(sequential(hidden_states=xs, timestep=ts[:1], class_labels=labels)[0])
            assert torch.equal(ob, torch.cat(parts)), f"step {step}"
            guided_b = ob[1:] + 4.0 * (ob[:1] - ob[1:])
            guided_s = parts[1] + 4.0 * (parts[0] - parts[1])
            xb, xs = torch.cat([xb[:1] - guided_b / T] * 2), xs - guided_s / T
    assert batched.stats.item_schedules == [sequential.branch_stats("cond").schedule,
                                            sequential.branch_stats("uncond").schedule]


def test_a_per_sample_step_reads_the_host_once(monkeypatch):
    """Per-sample decisions cost the host reads of one decision per batch: one vector instead of
    one scalar per step (the item index goes to the device without a sync)."""
    _, kw = model_and_inputs("dit")
    reads = []
    real = cachec.runtime._host_value
    monkeypatch.setattr(cachec.runtime, "_host_value", lambda t: reads.append(tuple(t.shape)) or real(t))
    spec = disagreeing_spec("dit", "teacache")
    reads.clear()
    rt = cachec.CacheRuntime(program("dit", "teacache"), spec + ",per_sample=1", num_steps=T)
    trajectory(rt, "dit", kw)
    assert reads == [(BATCH,)] * T
    assert "M" in rt.stats.schedule


def test_bad_per_sample_settings_are_policy_errors():
    with pytest.raises(PolicyError, match="per_sample"):
        cachec.parse_policy("fbcache:0.1,per_sample=2")
    with pytest.raises(PolicyError, match="per_sample"):
        cachec.parse_policy("fora:2,per_sample=1")  # no probe: nothing to decide per item
    prog = program("dit", "fbcache")
    signal = per_item(prog.planned.signal)
    spec = prog.values.pop(signal)
    try:  # a program from before per-item probes (or with a fixed batch) has no per-item signal
        with pytest.raises(PolicyError, match="per-item probe signal"):
            cachec.CacheRuntime(prog, "fbcache:0.1,per_sample=1")
    finally:
        prog.values[signal] = spec
