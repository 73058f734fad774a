"""``cachec bench``: several policies against ``none``, one table, measured in one run.

Why a separate command from ``cachec run``: a single policy/seed comparison says little about a
method. The bench runs every policy on the same backend, with the same seeds, step count and
batch, in the *same process and time window* as the uncached reference, so that

* **NFE** (the efficiency figure the seeds argue for) comes from the FLOPs the runtime records
  per step, not from a nominal "steps / full steps";
* **speedup** is ``latency(none) / latency(policy)`` with both measured here, interleaved
  round-robin over ``repeats`` so that drift on a shared machine hits every policy alike; the
  median is the figure, min/max the spread;
* **measured ÷ ideal** (speedup over the NFE-ideal speedup ``NFE(none) / NFE``) shows what the
  cache machinery and the parts that always run (prologue, glue, epilogue, the sampler) cost;
* **fidelity** is PSNR/SSIM of the final images against ``none`` with the same seed, averaged
  over seeds, plus the relative L2 of the latent after every step (the error curve).

Plots are drawn with Pillow (already a dependency) so the bench needs nothing extra.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

import torch

from cachec.backends import with_mode

from .atomic_write import write_text
from .errors import CachecError
from .figures import write_plots
from .policy import POLICIES, parse_policy
from .program import cache_bytes
from .progress import stage
from .session import open_model


class BenchError(CachecError, ValueError):
    """Bad arguments to ``cachec bench`` (policy list, seeds, repeats, batch)."""


# --------------------------------------------------------------------------------------------
# arguments


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_policies(text: str | list[str]) -> list[str]:
    """Split ``"fora:2,delta:2,blocks=1-4,fbcache:0.05"`` into policy specs.

    Why not a plain ``split(",")``: policy arguments are comma-separated too. A piece whose part
    before the first ``:`` contains ``=`` (``blocks=1-4``, ``N=4``) continues the previous spec;
    anything else starts a new one. Each spec is parsed (bad ones raise :class:`PolicyError`) and
    normalised; duplicates are dropped and ``none`` — the reference — always comes first. A bare
    number (``toca:3,0.9``: the second positional value) also continues the previous spec.
    """
    texts = [text] if isinstance(text, str) else list(text)
    specs: list[str] = []
    for t in texts:
        for piece in (p.strip() for p in t.split(",")):
            if not piece:
                raise BenchError(f"empty entry in --policies {t!r}; give specs separated by commas, e.g. fora:2,fbcache:0.05")
            if specs and ("=" in piece.split(":", 1)[0] or _is_number(piece)):
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    if not specs:
        raise BenchError(f"--policies needs at least one policy; known: {', '.join(POLICIES)}")
    normal = [parse_policy(s).spec for s in specs]
    return list(dict.fromkeys(["none", *normal]))


def relative_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖x − ref‖₂ / ‖ref‖₂`` over the whole batch (0 when identical)."""
    x, ref = x.double(), ref.double()
    den = torch.linalg.vector_norm(ref).item()
    return torch.linalg.vector_norm(x - ref).item() / (den if den else 1.0)


# --------------------------------------------------------------------------------------------
# result


@dataclass
class PolicyRun:
    """Everything measured for one policy: per seed (stats, samples, latents) and per repeat (latency)."""

    policy: str
    cache_bytes: int = 0
    runtime: object = None  # the CacheRuntime (its cache buffers, its history of trajectories)
    stats: dict[int, object] = field(default_factory=dict)  # seed -> TrajectoryStats (first repeat)
    samples: dict[int, torch.Tensor] = field(default_factory=dict)  # seed -> final sample
    latents: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # seed -> latent after each step
    seconds: list[float] = field(default_factory=list)  # one entry per (repeat, seed) trajectory
    seconds_by_seed: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class BenchResult:
    model: str
    backend: str
    steps: int
    seeds: list[int]
    batch: int
    repeats: int
    pixel_space: bool
    threads: int
    runs: dict[str, PolicyRun]
    rows: list[dict] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "backend": self.backend,
            "steps": self.steps,
            "seeds": self.seeds,
            "batch": self.batch,
            "repeats": self.repeats,
            "torch_threads": self.threads,
            "latency": "seconds per trajectory (batch); median, min, max over repeats x seeds, interleaved round-robin",
            "fidelity": "vs none with the same seed, mean over seeds",
            "policies": self.rows,
            "plots": self.plots,
        }


# --------------------------------------------------------------------------------------------
# measurement


def run_bench(model: str, policies: list[str], *, steps: int, seeds: int, batch: int = 4, repeats: int = 3,
              backend: str | None = None, progress=None, device=None, dtype=None, mode=None,
              inputs_file: str | None = None, trust_native: bool = False, verify_key=None) -> BenchResult:
    """Sample every policy (``none`` included) for every seed and repeat; compute the table rows.

    ``seeds`` is a count: seeds ``0 .. seeds-1``. Each (policy, seed) trajectory of the first
    repeat provides the statistics, the sample and the latent after each step; later repeats
    only add latencies (sampling is deterministic, so their samples are the same).
    """

    for name, value in (("--steps", steps), ("--seeds", seeds), ("--batch", batch), ("--repeats", repeats)):
        if not isinstance(value, int) or value < 1:
            raise BenchError(f"{name} must be a positive integer; got {value!r}")
    specs = split_policies(policies)
    say = progress or (lambda msg: None)

    session = open_model(model, batch, backend, device=device, dtype=dtype, inputs_file=inputs_file,
                         trust_native=trust_native, verify_key=verify_key)
    bundle = session.bundle
    backend = backend or session.backend or "eager"
    if mode is not None:
        session.options = with_mode(session.options, backend, mode)
    runs = warm_runtimes(session, specs, steps=steps, batch=batch, backend=backend, say=say)
    seed_list = list(range(seeds))
    measure_round_robin(runs, bundle, steps=steps, seeds=seed_list, batch=batch, repeats=repeats, say=say)

    result = BenchResult(model=bundle.name, backend=backend, steps=steps, seeds=seed_list, batch=batch,
                         repeats=repeats, pixel_space=bundle.name.startswith("builtin:"),
                         threads=torch.get_num_threads(), runs=runs)
    result.rows = [_row(result, pol) for pol in specs]
    return result


def warm_runtimes(session, specs: list[str], *, steps: int, batch: int, backend: str, say) -> dict[str, PolicyRun]:
    """A runtime per policy on the same backend, each warmed up by a short trajectory (allocations,
    first-call costs), so that no timed trajectory pays them."""
    from .runtime import CacheRuntime
    from .sampling import sample

    runs: dict[str, PolicyRun] = {}
    for pol in specs:
        say(f"compiling {pol}")
        program = session.program(pol)
        rt = CacheRuntime(program, pol, backend=backend, num_steps=steps, signature=session.signature,
                          backend_options=session.options, device=session.device)
        # warm-up (allocations, first-call costs): long enough for a step past the forced-full ones
        # (warmup=/final=), which a policy refuses to run without
        forced = rt.policy.params.warmup + rt.policy.params.final
        sample(rt, session.bundle, min(max(2, forced + 1), steps), 0, batch)
        runs[pol] = PolicyRun(pol, cache_bytes=cache_bytes(program, batch), runtime=rt)
    return runs


def measure_round_robin(runs: dict[str, PolicyRun], bundle, *, steps: int, seeds: list[int], batch: int, repeats: int,
                        say, keep_latents: bool = True) -> None:
    """Time every policy ``repeats`` times per seed, interleaved round-robin, into ``runs``.

    Why round-robin: on a shared or throttling machine, drift (another process, a clock change)
    then hits every policy alike instead of deciding which one looks faster. The first repeat
    also records each (policy, seed)'s statistics, final sample and (``keep_latents``) the
    latent after every step; later repeats only add latencies (sampling is deterministic).
    """
    from .progress import heartbeat, on_terminal
    from .sampling import sample

    for rep in range(repeats):
        for seed in seeds:
            for pol, run in runs.items():  # round-robin: every policy sees the same machine state
                rt = run.runtime
                rt.reset(steps)
                latents: list[torch.Tensor] = []
                keep = (lambda i, x, into=latents: into.append(x.clone())) if keep_latents and rep == 0 else None
                with heartbeat(f"sampling {pol} (repeat {rep + 1}/{repeats}, seed {seed})"):
                    traj = sample(rt, bundle, steps, seed, batch, progress=on_terminal(), callback=keep)  # a bar on a terminal only
                run.seconds.append(traj.seconds)
                run.seconds_by_seed.setdefault(seed, []).append(traj.seconds)
                if rep == 0:
                    run.stats[seed] = rt.stats
                    run.samples[seed] = traj.sample
                    run.latents[seed] = latents
                say(f"repeat {rep + 1}/{repeats} seed {seed} {pol}: {traj.seconds:.3f} s, NFE {rt.stats.nfe:.2f}")


def pin_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op thread count (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise BenchError(f"--threads must be a positive integer; got {threads}")
    # on a small or shared CPU, torch's default thread pool can stall on oversubscription
    # (seen here: 20 ms vs 780 ms a step on 2 busy cores); the choice is printed with the results
    torch.set_num_threads(threads)


def images(result: BenchResult, policy: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy images, none images) in [0, 1] for the metrics, mapped as ``cachec run`` maps them."""
    from .metrics import to_unit

    ref = result.runs["none"].samples[seed]
    x = result.runs[policy].samples[seed]
    if result.pixel_space:
        return to_unit(x, True), to_unit(ref, True)
    return to_unit(x, False, ref=ref), to_unit(ref, False, ref=ref)


def _finite(v: float) -> float | None:
    return None if v is None or math.isinf(v) or math.isnan(v) else v


def _row(result: BenchResult, pol: str) -> dict:
    from .metrics import psnr, ssim

    run, ref = result.runs[pol], result.runs["none"]
    seeds = result.seeds
    nfe = statistics.fmean(run.stats[s].nfe for s in seeds)
    nfe_none = statistics.fmean(ref.stats[s].nfe for s in seeds)
    med = statistics.median(run.seconds)
    med_none = statistics.median(ref.seconds)
    psnrs, ssims = [], []
    for s in seeds:
        img, ref_img = images(result, pol, s)
        psnrs.append(psnr(img, ref_img))
        ssims.append(ssim(img, ref_img))
    curve = [statistics.fmean(relative_l2(run.latents[s][i], ref.latents[s][i]) for s in seeds)
             for i in range(result.steps)]
    speedup = med_none / med
    ideal = nfe_none / nfe if nfe else None
    mean_psnr = statistics.fmean(psnrs) if all(math.isfinite(p) for p in psnrs) else math.inf
    return {
        "policy": pol,
        "schedules": {str(s): run.stats[s].schedule for s in seeds},
        "full_steps": statistics.fmean(len(run.stats[s].full_steps) for s in seeds),
        "nfe": round(nfe, 4),
        "nfe_per_seed": {str(s): round(run.stats[s].nfe, 4) for s in seeds},
        "tflops_per_trajectory": statistics.fmean(run.stats[s].flops for s in seeds) / 1e12,
        "full_step_flops": run.stats[seeds[0]].full_flops,
        "step_flops": {str(s): list(run.stats[s].step_flops) for s in seeds},
        "latency_s": {"median": med, "min": min(run.seconds), "max": max(run.seconds), "all": run.seconds},
        "speedup_vs_none": speedup,
        "nfe_ideal_speedup": ideal,
        "measured_over_ideal": speedup / ideal if ideal else None,
        "psnr_vs_none": _finite(mean_psnr),
        "psnr_per_seed": {str(s): _finite(p) for s, p in zip(seeds, psnrs, strict=True)},
        "ssim_vs_none": statistics.fmean(ssims),
        "final_latent_rel_l2": curve[-1],
        "rel_l2_per_step": curve,
        "cache_bytes": run.cache_bytes,
    }


# --------------------------------------------------------------------------------------------
# output


def format_table(result: BenchResult) -> str:
    head = (f"model {result.model}  backend {result.backend}  steps {result.steps}  seeds {len(result.seeds)}  "
            f"batch {result.batch}  repeats {result.repeats}  threads {result.threads}")
    cols = ["policy", "full", "NFE", "TFLOPs/traj", "latency s: median [min-max]", "speedup", "meas/ideal",
            "PSNR dB", "SSIM", "cache MB"]
    lines = []
    for r in result.rows:
        lat = r["latency_s"]
        psnr_v = r["psnr_vs_none"]
        lines.append([
            r["policy"],
            f"{r['full_steps']:g}",
            f"{r['nfe']:.2f}",
            f"{r['tflops_per_trajectory']:.4f}",
            f"{lat['median']:.3f} [{lat['min']:.3f}-{lat['max']:.3f}]",
            f"{r['speedup_vs_none']:.2f}x",
            f"{r['measured_over_ideal']:.2f}" if r["measured_over_ideal"] is not None else "-",
            "inf" if psnr_v is None else f"{psnr_v:.2f}",
            f"{r['ssim_vs_none']:.4f}",
            f"{r['cache_bytes'] / 1e6:.3f}",
        ])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [head, fmt(cols), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
    out.append("speedup = median latency of none / of the policy, same backend, same run; meas/ideal = speedup / "
               "(NFE(none) / NFE); PSNR/SSIM vs none with the same seed, mean over seeds")
    out.append("meas/ideal above 1: the policy's steps cost less per FLOP than none's (NFE counts matmul/attention "
               "FLOPs only, so skipped element-wise work, kernel launches and host overhead are extra savings; "
               "on a small or shared CPU, also timing noise)")
    out.append("schedules (seed 0): " + "  ".join(f"{r['policy']}={r['schedules'][str(result.seeds[0])]}"
                                                  for r in result.rows))
    return "\n".join(out)


def write_json(result: BenchResult, path: str) -> None:
    text = json.dumps(result.to_json(), indent=1)
    if path == "-":
        print(text)
        return
    write_text(path, text + "\n")  # whole or not at all


def main(args) -> int:
    """``cachec bench`` entry (argparse namespace from :mod:`cachec.cli`)."""
    pin_threads(args.threads)
    result = run_bench(args.model, args.policies, steps=args.steps, seeds=args.seeds, batch=args.batch,
                       repeats=args.repeats, backend=args.backend, progress=stage, device=args.device,
                       dtype=args.dtype, mode=args.mode, inputs_file=args.inputs,
                       trust_native=args.trust_native, verify_key=args.verify_key)
    if args.plots:
        write_plots(result, args.plots)
    if args.json == "-":
        write_json(result, "-")
        return 0
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"json       {args.json}")
    if result.plots:
        print("plots      " + ", ".join(result.plots))
    return 0
