"""NFE counts what a forecast costs: TaylorSeer's state update (full steps) and forecast (cached
steps) are one ``C @ X`` product per stream, ``2 · outputs · inputs`` FLOPs per stream element,
the matmul convention of :mod:`cachec.flops`. Hand-counted on the tiny DiT against the program's
segments and the runtime's NFE.
"""

from __future__ import annotations

import pytest
from trajectories import Driver

import cachec

T = 10
DRIVER = Driver(T, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_taylorseer_nfe_counts_its_update_and_forecast_products():
    model, kw = DRIVER.model_and_inputs("dit")
    order = 2
    rt = cachec.compile(model, kw, f"taylorseer:4,O={order}", num_steps=T)
    DRIVER.run(rt, "dit")
    cfg = model.config
    elements = (cfg.sample_size // cfg.patch_size) ** 2 * cfg.num_attention_heads * cfg.attention_head_dim
    state = order + 1  # the stream and its finite differences up to the order
    update = 2 * state * (state + 1) * elements  # [A, state] -> state
    forecast = 2 * 1 * state * elements  # state -> the stream
    streams = 2 * cfg.num_layers  # each block's attention and feed-forward outputs
    segs = rt.program.segments
    assert sorted(s.flops for n, s in segs.items() if n.endswith("_fc_update")) == [update] * streams
    assert sorted(s.flops for n, s in segs.items() if n.endswith("_fc_predict")) == [forecast] * streams
    none = rt.program.planned.none_flops
    assert rt.program.variant_flops("full") == pytest.approx(none + streams * update)
    schedule = rt.stats.schedule
    assert schedule == "FFRRRFRRRF"
    full, cached = schedule.count("F"), schedule.count("R")
    expected = (full * (none + streams * update) + cached * rt.program.variant_flops("reuse")) / none
    assert rt.stats.nfe == pytest.approx(expected)
