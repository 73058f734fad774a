"""ToCa / DuCa: gather/scatter token variants, selection rules, schedules, FLOPs and errors.

References here share no code with cachec's token modules: the scatter is checked against the
live diffusers sub-module run on all tokens (rows then picked by hand), the degenerate ratios
against the plain model (``R=0``) and the hook-based FORA reference (``R=1``), the schedules
against METHODS.md's rules written out again, the scores against key norms / attention maps
computed from the live attention module, and FLOPs against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import diffusers
import pytest
import torch
from reference_hooks import HookedReference
from torch.utils.flop_counter import FlopCounterMode
from trajectories import Driver

import cachec
from cachec.capture import capture, flatten_exported
from cachec.cli import main
from cachec.graph_keys import OUTPUTS_KEY
from cachec.methods.tokenwise import TokenController, n_eff
from cachec.models import example_inputs
from cachec.passes.gather_scatter import GatherScatter, TokenwiseError
from cachec.planner import Planner, compile_program

T = 12
BATCH = 2
EXACT = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


DRIVER = Driver(T, BATCH)  # tests/trajectories.py
model_and_inputs, trajectory, plain, timesteps = DRIVER.model_and_inputs, DRIVER.trajectory, DRIVER.plain, DRIVER.timesteps


@functools.cache
def captured(short: str):
    """One export per model; every program is planned on a fresh copy of its graph (export is the slow part)."""
    model, kw = model_and_inputs(short)
    return capture(model, kw)  # the latent and the streams are found from structure


def fresh_planner(short: str) -> Planner:
    cap = captured(short)
    return Planner(dataclasses.replace(cap, graph_module=flatten_exported(cap.exported, cap.input_names)))


@functools.cache
def program(short: str, plan_key: tuple, spec: str):
    cap = captured(short)
    return compile_program(dataclasses.replace(cap, graph_module=flatten_exported(cap.exported, cap.input_names)),
                           cachec.parse_policy(spec))


def runtime(short: str, spec: str) -> cachec.CacheRuntime:
    """A runtime for ``spec``; programs are planned once per plan key (policy name, attn, score rule)."""
    key = cachec.parse_policy(spec).plan_key(0)
    prog = program(short, key, spec) if (short, key) not in _FIRST else program(short, key, _FIRST[(short, key)])
    _FIRST.setdefault((short, key), spec)
    return cachec.CacheRuntime(prog, spec, num_steps=T)


_FIRST: dict = {}


def run(rt, short):
    rt.reset()
    return trajectory(lambda **kw: rt(**kw)[0], short)


@functools.cache
def planner(short: str) -> Planner:
    return fresh_planner(short)


# ------------------------------------------------------------------------------------------------
# the gather/scatter rewrite against the live module


@pytest.mark.parametrize(("short", "module"), [
    ("pixart", "transformer_blocks.1.ff"), ("pixart", "transformer_blocks.1.attn2"),
    ("pixart", "transformer_blocks.0.attn1"), ("dit", "transformer_blocks.2.attn1"),
])
def test_scatter_equals_module_on_all_tokens_then_selected_rows(short, module):
    """token_variant(x, idx, cache) == cache with rows idx replaced by live_module(x)[idx]."""
    pl = planner(short)
    region = next(r for r in pl.regions if r.name == module)
    seg = pl.segments[region.segment]
    out = seg.outputs[0]
    n = int(pl.meta[out].shape[1])
    gm = GatherScatter(n, "idx", {out: "cache"})(seg.module).graph_module
    g = torch.Generator().manual_seed(3)
    inputs = {name: torch.randn(3, *pl.meta[name].shape[1:], generator=g) for name in seg.inputs}
    hidden = next(v for v in inputs.values() if v.shape[1] == n)
    text = [v for v in inputs.values() if v.shape[1] != n]
    live = model_and_inputs(short)[0].get_submodule(module)
    with torch.no_grad():
        full = live(hidden, encoder_hidden_states=text[0]) if text else live(hidden)
    k = 5
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(3)])
    cache = torch.randn(full.shape, generator=g)
    with torch.no_grad():
        got = gm(*[inputs[name] for name in seg.inputs], idx, cache)[0]
    want = cache.clone()
    for b in range(3):
        want[b, idx[b]] = full[b, idx[b]]
    torch.testing.assert_close(got, want, rtol=0, atol=EXACT)
    assert not torch.equal(got, cache) and not torch.allclose(got, full)


# ------------------------------------------------------------------------------------------------
# degenerate ratios


@pytest.mark.parametrize("short", ["dit", "pixart"])
@pytest.mark.parametrize("spec", ["toca:3,0,attn=sdpa,factors=uniform",
                                  "duca:3,0,attn=sdpa,factors=uniform,cycle=conservative"])
def test_r0_computes_every_token_and_equals_full_compute(short, spec):
    x_plain, outs_plain = plain(short)
    rt = runtime(short, spec)
    x, outs = run(rt, short)
    assert "P" in rt.stats.schedule and "R" not in rt.stats.schedule, rt.stats.schedule
    for s, (a, b) in enumerate(zip(outs, outs_plain, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=EXACT, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_plain, rtol=0, atol=EXACT)


@pytest.mark.parametrize("short", ["dit", "pixart"])
@pytest.mark.parametrize("spec", ["toca:3,1,schedule=interval", "duca:3,1,schedule=interval"])
def test_r1_equals_fora_on_the_same_modules(short, spec):
    model, _ = model_and_inputs(short)
    with HookedReference(model, "fora:3", T) as ref:
        x_ref, outs_ref = trajectory(ref, short)
    rt = runtime(short, spec)
    x, outs = run(rt, short)
    assert rt.stats.schedule.replace("P", "R") == ref.schedule
    fora = runtime(short, "fora:3")
    run(fora, short)
    assert rt.stats.nfe == pytest.approx(fora.stats.nfe, rel=1e-9)  # R=1: nothing is computed on a cached step
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, s=s: f"step {s}: {m}")
    assert float((x - plain(short)[0]).abs().max()) > 1e-3  # reuse changed the result: the check can fail


# ------------------------------------------------------------------------------------------------
# selection


def test_random_selection_is_reproducible_by_seed_and_differs_across_seeds():
    spec = "duca:3,0.75,factors=uniform,cycle=conservative,seed={}"
    a, _ = run(runtime("pixart", spec.format(0)), "pixart")
    b, _ = run(runtime("pixart", spec.format(0)), "pixart")
    c, _ = run(runtime("pixart", spec.format(1)), "pixart")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float((a - c).abs().max()) > 1e-4
    # and a partial step really mixes fresh and cached tokens: neither full compute nor reuse
    assert float((a - plain("pixart")[0]).abs().max()) > 1e-4


def _step0_attn1_input(short: str) -> torch.Tensor:
    model, kw = model_and_inputs(short)
    seen = []
    h = model.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model(**dict(kw, timestep=torch.full_like(kw["timestep"], 999.0)), return_dict=False)
    h.remove()
    return seen[0]


@pytest.mark.parametrize("rule", ["knorm", "attn"])
def test_stored_scores_match_the_live_attention(rule):
    """knorm: head-mean of |k_token|; attn: L2-normalised column sums of the head-mean attention map."""
    short = "dit"
    model, kw = model_and_inputs(short)
    rt = runtime(short, f"toca:3,0.5,select={rule}")
    rt.reset()
    rt(**dict(kw, timestep=torch.full_like(kw["timestep"], 999.0)))
    score = rt.caches["cache__score__b0_attn1"]
    attn = model.transformer_blocks[0].attn1
    x = _step0_attn1_input(short)
    heads = attn.heads
    with torch.no_grad():
        q, k = attn.to_q(x), attn.to_k(x)
    B, N, C = k.shape
    k = k.view(B, N, heads, C // heads).transpose(1, 2)
    if rule == "knorm":
        want = k.norm(dim=-1).mean(1)
    else:
        q = q.view(B, N, heads, C // heads).transpose(1, 2)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
        want = p.mean(1).sum(1)
        want = want / want.norm(dim=-1, keepdim=True)
        # the materialised map replaced SDPA in that attention (no flash attention there)
        seg = rt.program.segments[next(s for s in rt.program.segments if "b0_attn1" in s)]
        assert not any("scaled_dot_product" in str(n.target) for n in seg.module.graph.nodes)
    torch.testing.assert_close(score, want, rtol=1e-4, atol=1e-5)


def test_score_rules_pick_the_top_tokens_and_age_the_rest():
    """knorm with no staleness weight picks exactly the top-k key norms of the last full step."""
    short = "dit"
    _, kw = model_and_inputs(short)
    rt = runtime(short, "toca:3,0.75,select=knorm,stale=0,factors=uniform,schedule=interval")
    rt.reset()
    seen = []
    for i, t in enumerate((999.0, 900.0)):
        rt(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))
        if i == 0:
            seen.append(rt.caches["cache__score__b0_attn1"].clone())
    ctl = rt.branches["default"].controller
    chosen = ctl.tokens.stale["tokens__b0_ff"]
    assert rt.stats.schedule == "FP"
    k = 16 // 4
    top = seen[0].topk(k, dim=1).indices
    fresh = chosen == 0
    assert fresh.sum(1).tolist() == [k] * BATCH
    assert all(set(top[b].tolist()) == set(fresh[b].nonzero().flatten().tolist()) for b in range(BATCH))


# ------------------------------------------------------------------------------------------------
# schedules


def _methods_schedule(N: int, T: int, duca: bool) -> str:
    """METHODS.md, written out again: s = T-1-step; full iff s % N_eff == 0 or step 0; DuCa: odd -> P, even -> R."""
    out = ""
    for step in range(T):
        s = T - 1 - step
        ne = 2 if 0.2 * T <= s < 0.4 * T else round(N / (1 + 0.4 - 0.8 * s / T))
        pos = s % ne
        if step == 0 or pos == 0:
            out += "F"
        else:
            out += ("P" if pos % 2 else "R") if duca else "P"
    return out


@pytest.mark.parametrize(("name", "N", "T"), [("toca", 3, 50), ("duca", 3, 50), ("duca", 5, 50), ("toca", 4, 250)])
def test_toca_and_duca_schedules_follow_methods(name, N, T):
    ctl = TokenController(cachec.parse_policy(f"{name}:{N}"), T)
    assert "".join(ctl.action(s) for s in range(T)) == _methods_schedule(N, T, name == "duca")
    assert n_eff(3, 15, 50) == 2


def test_duca_ablation_cycles():
    for cycle, letters in (("conservative", {"F", "P"}), ("aggressive", {"F", "R"})):
        ctl = TokenController(cachec.parse_policy(f"duca:3,cycle={cycle}"), 50)
        assert set("".join(ctl.action(s) for s in range(50))) == letters


# ------------------------------------------------------------------------------------------------
# FLOPs


def test_partial_step_flops_match_the_token_share():
    """Measured (torch's FLOP counter) and reported FLOPs of a partial step agree, and the MLPs'
    part of it is k/N of their full cost."""
    short = "dit"
    _, kw = model_and_inputs(short)
    rt = runtime(short, "toca:3,0.75,select=random,factors=uniform,schedule=interval")
    rt.reset()
    measured = []
    for t in (999.0, 900.0):
        with FlopCounterMode(display=False) as fc:
            rt(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))
        measured.append(fc.get_total_flops())
    assert rt.stats.schedule == "FP"
    # the partial step runs no attention (reused), so torch's counter sees all its FLOPs (on CPU it
    # does not count scaled_dot_product_attention, which only the full step runs)
    assert rt.stats.step_flops[1] == pytest.approx(measured[1], rel=0.03)
    reuse = runtime(short, "fora:3").program.variant_flops("reuse") * BATCH
    mlp = sum(r["flops_per_sample"] for r in rt.program.planned.regions if r["kind"] == "mlp") * BATCH
    # the partial step reads no attention shift/scale, so its adaLN projections skip those rows
    # (passes/narrow_chunked_linears.py); FORA's reuse figure is the segments', which compute them
    narrowed = (rt.program.variant_flops("partial") - rt.variants["partial"].fused.flops) * BATCH
    share = (measured[1] + narrowed - reuse) / mlp
    assert share == pytest.approx(4 / 16, rel=0.03)


# ------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(("spec", "message"), [
    ("toca:3,1.5", "R=1.5 is out of range"),
    ("duca:3,R=-0.1", "out of range"),
    ("toca:3,0.9,select=best", "unknown select='best'; accepted: random, knorm, vnorm, attn"),
    ("duca:3,0.9,attn=full", "unknown attn='full'"),
    ("duca:3,cycle=sometimes", "unknown cycle"),
    ("toca:3,0.9,0.5", "needs the form KEY=VALUE"),
])
def test_bad_specs_are_policy_errors(spec, message):
    with pytest.raises(cachec.PolicyError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        cachec.parse_policy(spec)


def test_backend_without_token_variants_is_refused():
    with pytest.raises(cachec.PolicyError, match="materialised attention map"):
        cachec.CacheRuntime(runtime("dit", "toca:3,0.5,select=attn").program, "toca:3,select=attn",
                            backend="onnxruntime")
    with pytest.raises(cachec.PolicyError, match="does not lower yet"):
        cachec.CacheRuntime(runtime("dit", "duca:3").program, "duca:3", backend="tensorrt")


@pytest.mark.parametrize(("argv", "message"), [
    (["compile", "MODEL", "--policy", "toca:3,2", "--out", "OUT"], "R=2 is out of range"),
    (["compile", "MODEL", "--policy", "duca:3,select=nope", "--out", "OUT"], "unknown select"),
    (["compile", "MODEL", "--policy", "toca:3,select=attn", "--backend", "onnxruntime", "--out", "OUT"],
     "materialised attention map"),
])
def test_cli_bad_token_policy_exits_2(argv, message, model_dir, tmp_path, capsys):
    argv = [str(model_dir) if a == "MODEL" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("fn", "message"), [
    (lambda x, w: (x - x.mean(dim=1, keepdim=True)) @ w, "works along the token axis"),
    (lambda x, w: torch.cat([x[:, :1], x], dim=1)[:, 1:] @ w, "along the token axis"),
    (lambda x, w: (x.reshape(2, 4, 32) @ w.repeat(4, 4)).reshape(2, 16, 8), "merges or splits the token axis"),
])
def test_ops_that_mix_tokens_are_refused_by_name(fn, message):
    """A region whose rows depend on other rows cannot run on a subset: a TokenwiseError, not a wrong result."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda x, w: (fn(x, w),), tracing_mode="fake")(torch.randn(2, 16, 8), torch.randn(8, 8))
    gm.meta[OUTPUTS_KEY] = ["out"]
    with pytest.raises(TokenwiseError, match=message):
        GatherScatter(16, "idx", {"out": "cache"})(gm)


def test_region_that_is_not_token_wise_is_named_by_the_planner(monkeypatch):
    """The planner turns the pass's refusal into a ModelError naming the region and the way out."""
    import cachec.methods.tokenwise as tp

    def refuse(*args, **kwargs):
        raise TokenwiseError("cat_7: aten.cat.default works along the token axis")

    monkeypatch.setattr(tp.GatherScatter, "call", refuse)
    with pytest.raises(cachec.ModelError, match=r"transformer_blocks\.0\.attn1 \(attn\) cannot be computed on a subset"
                                                r".*try attn=reuse"):
        fresh_planner("dit").plan(cachec.parse_policy("toca:3,attn=sdpa"))


def test_eager_artifact_round_trip(model_dir, tmp_path):
    """`cachec compile --policy duca:...` writes an artifact that cachec.load runs with partial steps."""
    out = tmp_path / "duca"
    assert main(["compile", str(model_dir), "--policy", "duca:3,0.75,factors=uniform,schedule=interval",
                 "--out", str(out)]) == 0
    rt = cachec.load(out, num_steps=6)
    model = diffusers.DiTTransformer2DModel.from_pretrained(model_dir).eval()
    kw = example_inputs(model, 2, 0)
    x, ref = kw["hidden_states"].clone(), kw["hidden_states"].clone()
    for t in torch.linspace(999, 0, 6).round():
        step = dict(kw, timestep=torch.full_like(kw["timestep"], float(t)))
        x = x - rt(**dict(step, hidden_states=x))[0] / 6
        with torch.no_grad():
            ref = ref - model(**dict(step, hidden_states=ref), return_dict=False)[0] / 6
    assert rt.stats.schedule == "FPRFPR"
    assert 0 < float((x - ref).abs().max()) < 0.5 * float(ref.abs().max())


@pytest.mark.parametrize("short", ["dit", "pixart"])
def test_r0_with_reused_self_attention_equals_reusing_only_self_attention(short):
    """attn=reuse, R=0: cached steps recompute MLP (and cross-attention) on every token and reuse the
    self-attention output of the last full step — checked against forward hooks on the live model."""
    model, _ = model_and_inputs(short)
    attns = [b.attn1 for b in model.transformer_blocks]
    state = {"step": 0, "cache": {}}

    def hook(module, args, out):
        if state["step"] % 3 == 0:
            state["cache"][module] = out.clone()
            return None
        return state["cache"][module]

    handles = [a.register_forward_hook(hook) for a in attns]

    def call(**kw):
        with torch.no_grad():
            out = model(**kw, return_dict=False)[0]
        state["step"] += 1
        return out

    try:
        x_ref, outs_ref = trajectory(call, short)
    finally:
        for h in handles:
            h.remove()
    rt = runtime(short, "toca:3,0,factors=uniform,schedule=interval")
    x, outs = run(rt, short)
    assert rt.stats.schedule == "FPPFPPFPPFPP"
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, s=s: f"step {s}: {m}")


def test_grid_bonus_and_staleness_in_the_score():
    """ToCa's s3/s4 terms, against a loop: the top token of each g×g cell gets bonus·max, and a
    large staleness weight makes the least recently computed tokens win."""
    from cachec.methods.tokenwise import TokenState, grid_bonus, select

    g = torch.Generator().manual_seed(0)
    score = torch.rand(2, 16, generator=g)
    want = torch.zeros_like(score)
    for b in range(2):
        grid = score[b].view(4, 4)
        for i in range(0, 4, 2):
            for j in range(0, 4, 2):
                cell = grid[i:i + 2, j:j + 2]
                r, c = divmod(int(cell.argmax()), 2)
                want[b, (i + r) * 4 + (j + c)] = 0.6 * float(score[b].max())
    torch.testing.assert_close(grid_bonus(score, 2, 0.6), want)
    with pytest.raises(cachec.PolicyError, match="square token grid"):
        grid_bonus(torch.rand(1, 12), 2, 0.6)

    state = TokenState(0)
    region = {"tokens": 16, "index": "i", "score": "s", "region": "r"}
    state.stale["i"] = torch.arange(16.0).repeat(2, 1)  # token 15 is the stalest
    p = {"select": "knorm", "stale": 100.0, "grid": 0, "bonus": 0.6}
    idx = select(p, state, region, 3, {"s": score}, 2, "cpu")
    assert idx.tolist() == [[13, 14, 15]] * 2
    assert state.stale["i"][0, 13:].tolist() == [0, 0, 0] and state.stale["i"][0, 0] == 1
