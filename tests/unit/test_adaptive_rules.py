"""The decision rules of per-block caching and per-sample decisions, driven by given signals (no model).

``blockcache``: hand-computed block schedules from given changes (the rate, the threshold, the
refresh bound, warm-up thresholds). Per-sample decisions: which variant runs on which items, and
that each item's controller sees only its own signal.
"""

from __future__ import annotations

import cachec
from cachec.methods.base import StepContext
from cachec.program import ModelFacts, PlanFacts


def drive_blocks(spec: str, rates: list[list[float]], steps: int):
    """Run a blockcache controller over ``steps`` steps; block i changes by ``rates[s][i]`` per step
    around step s, so the change it reports after running at step s is that rate times the steps
    since its previous run. Returns (block schedules, variants per step)."""
    controller = cachec.parse_policy(spec).controller(steps)
    ctx = StepContext(PlanFacts(blocks=["b0", "b1"]), ModelFacts(), {}, 1, "cpu")
    ran, last = [], [0, 0]
    for s in range(steps):
        gen = controller.actions(s, ctx)
        names, action = [], next(gen)
        while True:
            names.append(action.variant)
            if action.read:
                values = {"blockcache__signals": [rates[s][i] * max(s - last[i], 1) for i in range(2)]}
                last = [s if f"blk{i}_full" in names else last[i] for i in range(2)]
            else:
                values = {}
            try:
                action = gen.send(values)
            except StopIteration:
                break
        ran.append(names)
    return controller.block_schedules, ran


def test_blockcache_reuses_a_block_while_its_predicted_change_stays_below_t():
    # block 0 changes 0.1 per step, block 1 0.5: with t=0.35, block 0 is reused while k*0.1 < 0.35
    # (k = 1, 2, 3 steps since its run), block 1 never (0.5 >= 0.35)
    schedules, ran = drive_blocks("blockcache:0.35,N=10", [[0.1, 0.5]] * 10, 10)
    assert schedules == ["FFRRRFRRRF", "FFFFFFFFFF"]
    assert ran[2] == ["blocks_prologue", "blk0_reuse", "blk1_full", "blocks_epilogue"]
    # the rate is the change over the steps since the previous run: at step 5 block 0 reports 0.4
    # over 4 steps, the same rate 0.1, so it is reused 3 steps again


def test_blockcache_refreshes_every_n_steps_and_reads_nothing_when_all_blocks_are_reused():
    schedules, _ = drive_blocks("blockcache:100,N=3", [[0.01, 0.01]] * 8, 8)
    assert schedules == ["FFRRFRRF", "FFRRFRRF"]


def test_blockcache_warmup_scale_gives_each_block_its_own_threshold():
    # warm-up rates (steps 1, 2): block 0 0.1, block 1 0.4, so tau_0 = 2 * 0.1 = 0.2, tau_1 = 0.8.
    # Step 3 decides on the last measured rates: 1 * 0.1 < 0.2 and 1 * 0.4 < 0.8, both reused.
    # Step 4: 2 * 0.1 < 0.2 and 2 * 0.4 < 0.8 fail, both run and now measure 0.2 per step; from
    # then on block 0 runs every step (1 * 0.2 < 0.2 fails), block 1 is reused while k * 0.2 < 0.8
    rates = [[1.0, 1.0], [0.1, 0.4], [0.1, 0.4]] + [[0.2, 0.2]] * 7
    schedules, _ = drive_blocks("blockcache:2,scale=warmup,warmup=3", rates, 10)
    assert schedules == ["FFFRFFFFFF", "FFFRFRRRFR"]


def test_per_sample_runs_each_tail_on_its_items():
    policy = cachec.parse_policy("fbcache:0.5,per_sample=1")
    controller = policy.controller(5)
    ctx = StepContext(PlanFacts(signal="sig"), ModelFacts(), {}, 3, "cpu")
    seen = []
    for s, item_signals in enumerate([[9, 9, 9], [0.1, 0.9, 0.2], [0.1, 0.1, 0.1]]):
        gen = controller.actions(s, ctx)
        head = next(gen)
        assert head.variant == "head" and head.read == ("sig__items",)
        step = []
        try:
            action = gen.send({"sig__items": item_signals})
            while True:
                step.append((action.variant, action.items))
                action = gen.send({})
        except StopIteration:
            pass
        seen.append(step)
    assert seen[0] == [("tail_full", None)]  # step 0: every item full, on the whole batch
    assert seen[1] == [("tail_full", (1,)), ("tail_reuse", (0, 2))]
    # item 1 recomputed at step 1, so its reference moved; all three reuse at step 2
    assert seen[2] == [("tail_reuse", None)]
