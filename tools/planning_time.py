"""Export and planning time against depth: planning must grow linearly with the number of blocks.

For each depth it builds a tiny-width diffusers denoiser with that many blocks (DiT: all
``transformer_blocks``; FLUX: a third double-stream blocks, the rest single-stream, as FLUX.1-dev's
19 + 38 = 57), captures it once (``torch.export``, timed as cachec's ``exporting`` line times it)
and plans each policy on its own copy of the capture (timed as cachec's ``planning`` line: copy +
passes + policy). Widths are tiny, so the times are dominated by per-node work, which is what the
planner's complexity is about.

    python tools/planning_time.py                       # DiT, depths 4 8 16 28 57, none and fora:3
    python tools/planning_time.py --model flux --depths 4 8 16
    python tools/planning_time.py --profile 28          # cProfile of planning `none` at depth 28

Times are wall-clock seconds (what cachec prints) and this process's CPU seconds, which a
loaded machine disturbs far less; the per-block column (planning CPU milliseconds / depth) stays
flat when planning is linear. Planning counts the fastest of ``--repeats`` runs, each after a
garbage collection.

Measured (issue 23, item 10) on the 2-core CPU machine, load average 6-9 (other jobs running),
before (commit 7ef2c63) and after making segment modules generate their code lazily and the dead-
code elimination ask only unread nodes (7018d8c), both trees run side by side; planning CPU
seconds (CPU ms per block), ``none`` / ``fora:3``; export CPU seconds are the mean of the two runs:

    model depth nodes  export cpu s   before none    after none     before fora:3   after fora:3
    DiT      4    417     3.5         0.21 (52)      0.09 (24)      0.21 (54)       0.10 (24)
    DiT      8    777     4.0         0.40 (50)      0.19 (23)      0.41 (51)       0.19 (24)
    DiT     16   1497     6.7         0.78 (49)      0.38 (24)      0.76 (48)       0.39 (24)
    DiT     28   2577    10.2         1.25 (45)      0.57 (20)      1.37 (49)       0.60 (22)
    DiT     57   5187    23.7         2.86 (50)      1.39 (24)      3.07 (54)       1.38 (24)
    FLUX     4    633     4.8         0.30 (76)      0.12 (29)      0.27 (68)       0.12 (29)
    FLUX     8   1110     5.0         0.54 (67)      0.23 (29)      0.51 (64)       0.23 (29)
    FLUX    16   2141     8.7         0.93 (58)      0.46 (29)      0.81 (51)       0.44 (28)
    FLUX    28   3649    12.5         1.64 (59)      0.64 (23)      1.65 (59)       0.57 (20)
    FLUX    57   7319    27.7         3.30 (58)      1.59 (28)      3.19 (56)       1.49 (26)

Full-size FLUX.1-dev (``arch:flux.1-dev`` on the meta device, what ``cachec inspect
black-forest-labs/FLUX.1-dev --device meta`` plans; export and plans in one process, through
``Session`` as ``cachec inspect`` does), the same load (about 14), both trees side by side:

    tree     exporting (cachec's line, CPU)   planning none (line, CPU)   planning fora:3 (line, CPU)
    before   349.0 s, 40.2 s                  51.6 s, 4.24 s  (0.148, 0.105)   73.7 s, 4.05 s  (0.211, 0.101)
    after    339.1 s, 39.5 s                  23.4 s, 2.19 s  (0.069, 0.055)   26.5 s, 2.36 s  (0.078, 0.060)

(in brackets: planning/export, as cachec prints them and in CPU seconds). And the command itself,
``cachec inspect arch:flux.1-dev --device meta --policy fora:3``, both trees side by side at load
4-7: before exporting 131.8 s, planning 18.7 s (0.142); after 125.1 s, 10.8 s (0.086), with the same
624 lines of output. So planning/export is 0.07-0.09 as cachec prints it against the target of
0.1; before it was 0.14-0.21. Wall-clock
ratios move with the load; the CPU ratios are what an idle machine would print. What planning
still spends, profiled on FLUX.1-dev: the structural passes (with dead-code elimination and lint
after each), cutting ~250 segments (node copies), the copy of the capture and fusing the chains.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time

import diffusers
import torch

from cachec.capture import capture
from cachec.models import example_inputs
from cachec.planner import compile_program
from cachec.policy import parse_policy

DEPTHS = (4, 8, 16, 28, 57)
POLICIES = ("none", "fora:3")


def build(model: str, depth: int) -> torch.nn.Module:
    """A tiny-width denoiser with ``depth`` blocks (random weights: only the graph matters here)."""
    torch.manual_seed(0)
    if model == "dit":
        return diffusers.DiTTransformer2DModel(
            sample_size=8, in_channels=4, out_channels=4, num_layers=depth, num_attention_heads=2,
            attention_head_dim=8, num_embeds_ada_norm=10).eval()
    if model == "flux":
        double = max(1, depth // 3)
        return diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=8, num_layers=double, num_single_layers=depth - double,
            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=6,
            guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    raise SystemExit(f"--model {model!r}: choose dit or flux")


def plan(captured, policy: str):
    """What cachec's ``planning`` line times: a copy of the capture, then the planner."""
    return compile_program(captured.copy(), parse_policy(policy))


def timed(fn, *args):
    """``fn(*args)``, its wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def best_of(repeats: int, fn, *args):
    """:func:`timed`, the fastest of ``repeats`` runs (by CPU seconds), each after a garbage
    collection: the collector would otherwise charge one depth's planning for earlier garbage."""
    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(timed(fn, *args))
    return min(runs, key=lambda run: run[2])


def table(model: str, depths, policies, repeats: int = 2) -> list[dict]:
    rows = []
    print(f"{'depth':>5} {'nodes':>6} {'export s':>9} {'cpu s':>7} "
          + " ".join(f"{'plan ' + p + ' s':>14} {'cpu s':>7} {'cpu ms/block':>12}" for p in policies), flush=True)
    for depth in depths:
        m = build(model, depth)
        captured, export_s, export_cpu = timed(capture, m, example_inputs(m, batch=2))
        row = {"depth": depth, "nodes": len(captured.graph_module.graph.nodes), "export_s": export_s,
               "export_cpu_s": export_cpu}
        for p in policies:
            _, row[p], row[p + " cpu"] = best_of(repeats, plan, captured, p)
        rows.append(row)
        print(f"{depth:>5} {row['nodes']:>6} {export_s:>9.2f} {export_cpu:>7.2f} "
              + " ".join(f"{row[p]:>14.2f} {row[p + ' cpu']:>7.2f} {1000 * row[p + ' cpu'] / depth:>12.1f}"
                         for p in policies), flush=True)
    return rows


def profile(model: str, depth: int, policy: str, top: int) -> None:
    m = build(model, depth)
    captured = capture(m, example_inputs(m, batch=2))
    prof = cProfile.Profile()
    prof.enable()
    plan(captured, policy)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dit", choices=("dit", "flux"))
    ap.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    ap.add_argument("--profile", type=int, metavar="DEPTH", help="print a cProfile of planning at this depth instead")
    ap.add_argument("--top", type=int, default=30, help="rows of the profile")
    ap.add_argument("--repeats", type=int, default=2, help="plan each policy this many times; the fastest counts")
    args = ap.parse_args()
    if args.profile:
        profile(args.model, args.profile, args.policies[0], args.top)
    else:
        table(args.model, args.depths, args.policies, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
