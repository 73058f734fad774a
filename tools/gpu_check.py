"""GPU check: cached-path correctness and step latencies of full vs cached steps, per backend.

For an architecture with random weights (``arch:dit-xl-2`` at 256², ``arch:flux.1-dev`` at
1024² in bf16, …) this compiles the same policy for the eager and the inductor backends, runs
one trajectory with each, and reports

* the relative difference of the final latents (inductor vs eager cachec),
* the median latency of full steps and of cached steps (CUDA-synchronised wall clock),
* the plain diffusers model's step latency on the same inputs, for reference.

    python tools/gpu_check.py arch:dit-xl-2 --resolution 32 --dtype bf16 --policy fora:3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import cachec
from cachec.models import resolve


def timed_trajectory(fn, kw, latent_name, steps, flow):
    x = kw[latent_name].clone()
    times = []
    for i in range(steps):
        t = (1.0 - i / steps) if flow else 999 - i * (1000 // steps)
        tt = torch.full_like(kw["timestep"], t) if kw["timestep"].dim() else torch.tensor(t).to(kw["timestep"])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(**{**kw, latent_name: x, "timestep": tt}, return_dict=False)[0]
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        x = x - out[:, : x.shape[1]] / steps if out.shape != x.shape else x - out / steps
    return x, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--resolution", type=int, default=None, help="latent side (DiT: 32 for 256², FLUX: 128 for 1024²)")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--policy", default="fora:3")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--backends", default="eager,inductor")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    bundle = resolve(args.model, dtype=dtype)
    bundle.text_tokens = args.text_tokens
    model = bundle.model.cuda()
    kw = {k: v.cuda() if isinstance(v, torch.Tensor) else v
          for k, v in bundle.example_inputs(batch=args.batch, resolution=args.resolution).items()}
    flow = bundle.class_name == "FluxTransformer2DModel"
    report = {"model": args.model, "dtype": args.dtype, "policy": args.policy, "steps": args.steps,
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "inputs": {k: list(v.shape) for k, v in kw.items() if isinstance(v, torch.Tensor)}}
    with torch.no_grad():
        timed_trajectory(model, kw, bundle.latent_input, 2, flow)
        _, plain = timed_trajectory(model, kw, bundle.latent_input, 4, flow)
        report["diffusers_eager_step_ms"] = 1e3 * statistics.median(plain)
        finals = {}
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            rt = cachec.compile(model, kw, args.policy, backend=backend, num_steps=args.steps)
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            timed_trajectory(rt, kw, bundle.latent_input, args.steps, flow)  # warm-up: Inductor compiles here
            warm_s = time.perf_counter() - t0
            final, times = timed_trajectory(rt, kw, bundle.latent_input, args.steps, flow)
            sched = rt.stats.schedule
            full = [t for t, c in zip(times, sched, strict=True) if c == "F"]
            cached = [t for t, c in zip(times, sched, strict=True) if c == "R"]
            finals[backend] = final.float()
            report[backend] = {
                "schedule": sched, "nfe": round(rt.stats.nfe, 3), "compile_s": round(compile_s, 1),
                "first_trajectory_s": round(warm_s, 1), "trajectory_ms": round(1e3 * sum(times), 2),
                "full_step_ms": round(1e3 * statistics.median(full), 3),
                "cached_step_ms": round(1e3 * statistics.median(cached), 3) if cached else None,
            }
            print(json.dumps({backend: report[backend]}), flush=True)
            del rt
            torch.cuda.empty_cache()
        if "eager" in finals:
            for b, f in finals.items():
                if b != "eager":
                    rel = ((f - finals["eager"]).norm() / finals["eager"].norm()).item()
                    report[b]["rel_diff_vs_eager_cachec"] = rel
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
