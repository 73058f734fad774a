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
flat when planning is linear.
"""

from __future__ import annotations

import argparse
import cProfile
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


def table(model: str, depths, policies) -> list[dict]:
    rows = []
    print(f"{'depth':>5} {'nodes':>6} {'export s':>9} {'cpu s':>7} "
          + " ".join(f"{'plan ' + p + ' s':>14} {'cpu s':>7} {'cpu ms/block':>12}" for p in policies), flush=True)
    for depth in depths:
        m = build(model, depth)
        captured, export_s, export_cpu = timed(capture, m, example_inputs(m, batch=2))
        row = {"depth": depth, "nodes": len(captured.graph_module.graph.nodes), "export_s": export_s,
               "export_cpu_s": export_cpu}
        for p in policies:
            _, row[p], row[p + " cpu"] = timed(plan, captured, p)
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
    args = ap.parse_args()
    if args.profile:
        profile(args.model, args.profile, args.policies[0], args.top)
    else:
        table(args.model, args.depths, args.policies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
