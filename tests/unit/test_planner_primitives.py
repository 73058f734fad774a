"""The planner's primitives on hand-built programs, against hand-computed expectations (no export):
the weightless segment factories (Δ-cache write/apply, commits, forecast mixes, probes), the
per-variant pruning of glue (``specialize_segments``), the merging of always-adjacent segments
(``coalesce``) and the "a plan must reuse something" check.

The programs are cut from the toy denoiser of ``toy_graphs.py`` (two blocks, one attention each);
its FORA-like plan stores each attention's output on full steps and loads it on cached ones.
"""

import pytest
import torch
from toy_graphs import ORDER, inputs, run_variant, segmented, toy_denoiser

from cachec.errors import PolicyError
from cachec.planner.coalesce import coalesce
from cachec.planner.reuse_check import check_plan_reuses, reuses_something
from cachec.planner.segments import StreamPair, copy_values, delta_apply, delta_write, linear_mix, rel_l1_probe
from cachec.planner.specialize import specialize_segments
from cachec.planner.split import split
from cachec.program import Load, Program, Run, Store, per_item


# -- segment factories ----------------------------------------------------------------------------
def test_delta_write_and_apply_cache_a_residual_and_a_raw_value():
    """``c_y = y − x`` is applied to the *current* ``x``; ``s`` has no residual partner and is cached raw."""
    x, y, s, x_now = (torch.randn(2, 3) for _ in range(4))
    pairs = [StreamPair("y", "x", "c_y"), StreamPair("s", None, "c_s")]
    write = delta_write(pairs, {"x": x, "y": y, "s": s})
    assert (write.meta["cachec_output_names"], [n.name for n in write.graph.nodes if n.op == "placeholder"]) == \
        (["c_y", "c_s"], ["y", "x", "s"])
    c_y, c_s = write(y, x, s)
    torch.testing.assert_close(c_y, y - x)
    torch.testing.assert_close(c_s, s)
    assert c_s is not s  # a cache is a copy: the next step may overwrite s in place
    apply = delta_apply(pairs, {"x": x, "c_y": c_y, "c_s": c_s})
    assert apply.meta["cachec_output_names"] == ["y", "s"]
    y_now, s_now = apply(x_now, c_y, c_s)
    torch.testing.assert_close(y_now, x_now + y - x)
    torch.testing.assert_close(s_now, s)


def test_copy_values_commits_each_source_under_its_cache_name():
    a, b = torch.randn(2), torch.randn(3)
    commit = copy_values({"a": "cache_a", "b": "cache_b"}, {"a": a, "b": b})
    assert commit.meta["cachec_output_names"] == ["cache_a", "cache_b"]
    got = commit(a, b)
    assert all(torch.equal(g, w) and g is not w for g, w in zip(got, (a, b), strict=True))


def test_linear_mix_takes_the_group_s_corner_of_a_larger_coefficient_matrix():
    """Three inputs, two outputs, a 4×4 ``C`` (one matrix for groups of several sizes): ``out_j =
    Σ_i C[j, i] · in_i`` in one product (``unit/test_forecast.py`` checks a ``C`` of the group's size)."""
    ins = [torch.randn(2, 3, 4) for _ in range(3)]
    c = torch.randn(4, 4)
    meta = {"d0": ins[0], "d1": ins[1], "d2": ins[2], "C": c}
    mix = linear_mix([(["d0", "d1", "d2"], ["f0", "f1"])], "C", meta)
    assert mix.meta["cachec_output_names"] == ["f0", "f1"]
    assert sum(n.target is torch.ops.aten.mm.default for n in mix.graph.nodes) == 1
    f0, f1 = mix(*ins, c)
    for j, got in enumerate((f0, f1)):
        torch.testing.assert_close(got, sum(c[j, i] * ins[i] for i in range(3)))


def test_rel_l1_probe_is_the_mean_distance_over_the_mean_reference_per_batch_and_per_item():
    """FBCache's probe on block 0's residual: ``x = current − residual_of``; the signal is
    ``mean|x − ref| / mean|ref|``, over the batch and for each item (``per_item``)."""
    cur, base, ref = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    probe = rel_l1_probe("h1", "c_r", "signal", {"h1": cur, "h0": base, "c_r": ref},
                         residual_of="h0", emit_current_as="r1", batch_dim=0)
    assert probe.meta["cachec_output_names"] == ["signal", per_item("signal"), "r1"]
    signal, items, r1 = probe(cur, base, ref)
    x = cur - base
    torch.testing.assert_close(signal, (x - ref).abs().mean() / ref.abs().mean())
    torch.testing.assert_close(items, (x - ref).abs().mean(1) / ref.abs().mean(1))
    torch.testing.assert_close(r1, x)


# -- programs -------------------------------------------------------------------------------------
def fora_like_program() -> Program:
    """The toy denoiser split into segments; ``full`` runs everything and stores each attention's
    output, ``reuse`` loads them instead of running the attentions (and their norms)."""
    gm, order = segmented(toy_denoiser())
    assert order == ORDER
    full = [Run("prologue"), Run("b0_g0"), Run("b0_attn"), Store("a0", "cache_a0"), Run("b0_g1"),
            Run("b1_g0"), Run("b1_attn"), Store("a1", "cache_a1"), Run("b1_g1"), Run("epilogue")]
    reuse = [Run("prologue"), Run("b0_g0"), Load("cache_a0", "a0"), Run("b0_g1"),
             Run("b1_g0"), Load("cache_a1", "a1"), Run("b1_g1"), Run("epilogue")]
    return Program(split(gm, order, "out"), {"full": full, "reuse": reuse}, ["x", "t"], "out", {})


def _trajectory(program: Program, steps: list[dict]) -> list[torch.Tensor]:
    """Run ``full`` on the first step, ``reuse`` on the others, sharing the caches."""
    caches: dict = {}
    return [run_variant(program.segments, program.variants["full" if i == 0 else "reuse"], kw, caches)["out"]
            for i, kw in enumerate(steps)]


def test_the_hand_built_plan_computes_the_model_and_reuses_the_attention_outputs():
    torch.manual_seed(1)
    steps = [inputs(), inputs()]
    want_full = toy_denoiser()(**steps[0])[0]
    got = _trajectory(fora_like_program(), steps)
    torch.testing.assert_close(got[0], want_full)
    # the cached step: h_{i+1} = h_i + a_i with the current h_i and the first step's a_i
    x = steps[1]["x"]
    gm = toy_denoiser()
    h0 = x + 1
    a0 = ((steps[0]["x"] + 1) * (steps[0]["t"] * 2)) @ gm.w0
    h_prev = steps[0]["x"] + 1 + a0
    a1 = (h_prev * (steps[0]["t"] * 2)) @ gm.w1
    torch.testing.assert_close(got[1], (h0 + a0 + a1) * 0.5)


def test_specialize_drops_the_norms_a_cached_step_skips_and_prunes_the_prologue():
    """In ``reuse`` nothing reads ``n_i`` (the attentions are loaded) nor ``e`` (only the norms read
    it): the norm runs go, and the prologue is replaced by a copy that computes ``h0`` alone from ``x``."""
    torch.manual_seed(1)
    steps = [inputs(), inputs()]
    want = _trajectory(fora_like_program(), steps)
    program = specialize_segments(fora_like_program())
    assert program.variants["reuse"] == [Run("prologue~reuse"), Load("cache_a0", "a0"), Run("b0_g1"),
                                         Load("cache_a1", "a1"), Run("b1_g1"), Run("epilogue")]
    assert program.variants["full"] == fora_like_program().variants["full"]  # every value is read there
    pruned = program.segments["prologue~reuse"]
    assert (pruned.inputs, pruned.outputs) == (["x"], ["h0"])
    assert set(program.segments) == set(ORDER) | {"prologue~reuse"}
    for got, w in zip(_trajectory(program, steps), want, strict=True):
        torch.testing.assert_close(got, w)


def test_coalesce_merges_exactly_the_segments_that_always_run_back_to_back():
    """The prologue is always followed by block 0's norm, block 0's residual add by block 1's norm,
    block 1's residual add by the epilogue; an attention is not (a load replaces it in ``reuse``), nor
    is a residual add preceded by it (a store or a load comes between)."""
    torch.manual_seed(1)
    steps = [inputs(), inputs()]
    want = _trajectory(fora_like_program(), steps)
    program = coalesce(fora_like_program())
    assert program.variants == {
        "full": [Run("prologue-b0_g0"), Run("b0_attn"), Store("a0", "cache_a0"), Run("b0_g1-b1_g0"),
                 Run("b1_attn"), Store("a1", "cache_a1"), Run("b1_g1-epilogue")],
        "reuse": [Run("prologue-b0_g0"), Load("cache_a0", "a0"), Run("b0_g1-b1_g0"),
                  Load("cache_a1", "a1"), Run("b1_g1-epilogue")],
    }
    merged = program.segments
    assert set(merged) == {"prologue-b0_g0", "b0_attn", "b0_g1-b1_g0", "b1_attn", "b1_g1-epilogue"}
    # each merged segment returns what a segment outside it reads, and nothing it only uses itself
    assert set(merged["prologue-b0_g0"].outputs) == {"e", "h0", "n0"}
    assert set(merged["b0_g1-b1_g0"].inputs) == {"h0", "a0", "e"} and set(merged["b0_g1-b1_g0"].outputs) == {"h1", "n1"}
    assert merged["b1_g1-epilogue"].outputs == ["out"]
    for got, w in zip(_trajectory(program, steps), want, strict=True):
        torch.testing.assert_close(got, w)


def test_a_plan_whose_cached_variants_load_nothing_is_refused():
    full = [Run("a"), Store("y", "c")]
    assert reuses_something({"full": full})  # `none`: no cached variant to check
    assert reuses_something({"full": full, "reuse": [Load("c", "y")]})
    assert not reuses_something({"full": full, "reuse": [Run("a")]})
    with pytest.raises(PolicyError, match=r"fora:3: its plan for FlatUNet reuses nothing — .*`cachec inspect MODEL`"):
        check_plan_reuses({"full": full, "reuse": [Run("a")]}, "FlatUNet", "fora:3")
    check_plan_reuses({"full": full, "reuse": [Load("c", "y")]}, "FlatUNet", "fora:3")  # passes

