"""Matched-NFE tables of DeepCache, T-GATE, PAB and FasterCache (PSNR/SSIM vs ``none``).

    python tools/bench_attention_skip.py [--models dit,unet] [--steps 50] [--out DIR]

* ``dit`` — ``cachec bench`` on the bundled, trained tiny DiT (pixel space: PSNR/SSIM on images).
* ``unet`` — the seeded small ``UNet2DConditionModel`` of the tests (DeepCache needs a U-Net;
  cachec bundles no trained one). A random-weight U-Net under DDIM is chaotic (every policy,
  ``budget:33`` included, lands near 9 dB), so this part drives the tests' trajectory rule
  instead (``tests/trajectories.py``: ``x ← x − out/T``, timesteps 999 → 0) and compares the
  final latents, mapped to [0, 1] with the reference's range as ``cachec bench`` maps latents.

Policies come in groups of about equal NFE; each group has a step-level schedule of the same NFE
(``budget:K,base=step``: K evenly spaced full steps, the block stack's residual reused between).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DIT = ["pab:2,1,1,lo=0,hi=1000", "tgate:51,sa=2", "fastercache:2,lo=-1,hi=1000", "budget:41,base=step",
       "pab:3,1,1,lo=0,hi=1000", "tgate:51,sa=3", "fastercache:3,lo=-1,hi=1000", "budget:38,base=step"]
UNET = ["deepcache:5", "budget:20,base=step",
        "deepcache:3", "deepcache:3,schedule=pow", "budget:25,base=step",
        "deepcache:2", "fora:3", "budget:31,base=step",
        "deepcache:3,branch=1", "pab:2,1,3,lo=0,hi=1000", "budget:39,base=step",
        "tgate:20,sa=2", "fastercache:2,lo=-1,hi=1000", "budget:46,base=step"]


def unet_table(steps: int, batch: int) -> str:
    from trajectories import Driver

    import cachec
    from cachec.metrics import psnr, ssim, to_unit

    driver = Driver(steps, batch)
    model, kw = driver.model_and_inputs("unet")
    ref, _ = driver.plain("unet")
    lines = ["| policy | full steps | NFE | PSNR (dB) | SSIM |", "| --- | ---: | ---: | ---: | ---: |"]
    for spec in UNET:
        rt = cachec.compile(model, kw, spec, num_steps=steps)
        x, _ = driver.run(rt, "unet")
        a, b = to_unit(x, False, ref), to_unit(ref, False, ref)
        lines.append(f"| `{spec}` | {rt.stats.schedule.count('F')} | {rt.stats.nfe:.2f} | {psnr(a, b):.2f} | "
                     f"{ssim(a, b):.4f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default="bench-attention-skip")
    ap.add_argument("--models", default="dit,unet")
    args = ap.parse_args()
    import torch

    from cachec.bench import format_table, run_bench, write_json

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        if name == "dit":
            result = run_bench("builtin:tiny-dit", DIT, steps=args.steps, seeds=args.seeds, batch=args.batch, repeats=1)
            print(format_table(result))
            write_json(result, str(out / "dit.json"))
        else:
            table = unet_table(args.steps, args.batch)
            print(table)
            (out / "unet.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
