"""NFE and fidelity of per-sample decisions against one decision per batch, on a mixed batch.

A dynamic policy (fbcache, teacache, easycache, dbcache) decides once per step for the whole
batch by default, on a signal averaged over the batch; with ``per_sample=1`` each item decides on
its own signal. On a batch whose items differ (here: every class of the bundled model, each with
its own starting noise) the two spend their full steps differently. For each policy and each
threshold of a sweep this tool samples the batch with the real scheduler (``cachec.sampling``)
and reports, for both modes, the NFE (per item, FLOPs-counted by the runtime) and the PSNR/SSIM
of the final samples against ``none`` of the same seed; then, per policy, the NFE each mode
needs to reach a fidelity (the lowest NFE of a sweep point at or above a PSNR), which is the
comparison that matters: at the same threshold the two modes spend differently, and either may
spend more.

    python tools/per_sample_nfe.py --steps 20 --batch 10 --policies fbcache,teacache --out per_sample.json

Runs on the CPU in a few minutes (tiny model); prints a table and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import cachec
from cachec.metrics import psnr, ssim, to_unit
from cachec.models import resolve
from cachec.sampling import denoise, initial_inputs

SWEEPS = {
    "fbcache": [0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4],
    "teacache": [0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6],
    "easycache": [0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2],
}


def run(bundle, spec: str, steps: int, batch: int, seed: int, program):
    kw = initial_inputs(bundle, batch, seed)
    x = kw.pop(bundle.latent_input)
    rt = cachec.CacheRuntime(program, spec, num_steps=steps)
    out = denoise(rt, bundle, x, kw, steps).sample
    return out, rt.stats


def fidelity(sample, ref) -> tuple[float, float, float]:
    """PSNR over the batch, PSNR of the worst item, SSIM over the batch."""
    a, b = to_unit(sample, True), to_unit(ref, True)
    return psnr(a, b), min(psnr(a[i:i + 1], b[i:i + 1]) for i in range(a.shape[0])), ssim(a, b)


def matched_fidelity(rows: list[dict], metric: str) -> list[dict]:
    """For each fidelity one decision per batch reached, the least NFE each mode needs to reach it."""
    out = []
    for target in sorted({r["batch"][metric] for r in rows}):
        need = {m: min((r[m]["nfe"] for r in rows if r[m][metric] >= target), default=math.inf)
                for m in ("batch", "sample")}
        out.append({"at_least": target, "nfe_batch": need["batch"], "nfe_sample": need["sample"],
                    "saved": round(need["batch"] - need["sample"], 3)})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:tiny-dit")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=10, help="items; class labels cycle through the model's classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default="fbcache,teacache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    bundle = resolve(args.model)
    kw = initial_inputs(bundle, args.batch, args.seed)
    ref, _ = run(bundle, "none", args.steps, args.batch, args.seed,
                 cachec.compile(bundle.model, kw, "none", num_steps=args.steps).program)
    result = {"model": args.model, "steps": args.steps, "batch": args.batch, "seed": args.seed, "policies": {}}
    for kind in args.policies.split(","):
        program = cachec.compile(bundle.model, kw, f"{kind}:{SWEEPS[kind][0]}", num_steps=args.steps).program
        rows = []
        for t in SWEEPS[kind]:
            row = {"t": t}
            for mode, extra in (("batch", ""), ("sample", ",per_sample=1")):
                sample, stats = run(bundle, f"{kind}:{t}{extra}", args.steps, args.batch, args.seed, program)
                p, worst, s = fidelity(sample, ref)
                row[mode] = {"nfe": round(stats.nfe, 3), "psnr": round(p, 2), "worst_psnr": round(worst, 2),
                             "ssim": round(s, 4),
                             "schedule": stats.schedule}
            rows.append(row)
            b, p = row["batch"], row["sample"]
            print(f"{kind}:{t:<5} one decision per batch: NFE {b['nfe']:6.2f} PSNR {b['psnr']:6.2f} (worst {b['worst_psnr']:6.2f})"
                  f"  | per sample: NFE {p['nfe']:6.2f} PSNR {p['psnr']:6.2f} (worst {p['worst_psnr']:6.2f})"
                  f"  ({row['sample']['schedule']})", flush=True)
        matched = {metric: matched_fidelity(rows, metric) for metric in ("psnr", "worst_psnr")}
        for metric, entries in matched.items():
            for m in entries:
                print(f"  {metric} >= {m['at_least']:6.2f}: NFE {m['nfe_batch']:6.2f} (one decision per batch) vs "
                      f"{m['nfe_sample']:6.2f} (per sample), saved {m['saved']:+.2f}")
        at_same_t = [r["batch"]["nfe"] - r["sample"]["nfe"] for r in rows]
        print(f"  same threshold: NFE saved per item, mean {sum(at_same_t) / len(at_same_t):+.3f}, "
              f"range {min(at_same_t):+.2f} .. {max(at_same_t):+.2f}")
        result["policies"][kind] = {"sweep": rows, "matched_fidelity": matched}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
