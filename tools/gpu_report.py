"""The GPU report: one command, side by side, on DiT-XL/2 and FLUX.1-dev with random weights.

    python tools/gpu_report.py --out gpu-report.json --markdown gpu-report.md

For each model (DiT-XL/2 at 256², fp16, batch 2 as with CFG; FLUX.1-dev at 1024², bf16, batch 1,
512 text tokens) it times, in one process and in this order of priority:

1. eager: the plain diffusers model; diffusers' own FirstBlockCache and TaylorSeer hooks; cachec
   ``none``, ``fora:3``, ``fbcache``, ``teacache`` and ``taylorseer`` on the eager backend;
2. Inductor: plain ``torch.compile`` and cachec ``none`` / ``fora:3`` / ``fbcache`` on the
   Inductor backend (``reduce-overhead``: CUDA graphs);
3. deployable artifacts (``--deploy``): cachec ``none`` / ``fora:3`` compiled into an artifact for
   AOTInductor, ONNX Runtime (CUDA execution provider) and TensorRT, loaded with ``cachec.load``
   and timed the same way, with the artifact's size over the weights; a backend that cannot run
   here (no onnxruntime-gpu, TensorRT-RTX on Hopper) is listed as skipped with the reason.

Every method runs the same trajectory (same inputs, same timesteps, a fixed Euler-like update of
the latent) after a warm-up trajectory (which is where Inductor compiles), and is timed with CUDA
events around every step — no host sync inside the trajectory beyond what the method itself
makes — and a wall clock around the whole trajectory. Reported per method: schedule, full steps,
median full-step and cached-step time, trajectory time, speedup over the plain model and over
cachec ``none`` on the same backend, the NFE-ideal speedup (steps / NFE), measured ÷ ideal, and
the final latent's relative error against the plain model's.

First-Block-Cache runs at a threshold read from the model (:func:`first_block_threshold`): with
random weights the published ones never cache, so no cached step would be timed.

Sections run in priority order against a time budget (``--budget-s``); a section that would not
fit is reported as skipped, never silently dropped. ``--tiny`` swaps in tiny configs (same
classes) so that the whole flow can be checked on a CPU in a minute.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

import cachec
from cachec.models import ARCH_CONFIGS, resolve
from cachec.policy import parse_policy
from cachec.session import open_bundle

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    """One model at one shape: what the report measures on it."""

    name: str
    arch: str
    dtype: str
    batch: int
    resolution: int  # latent side (DiT: 32 → 256²; FLUX: 128 → 1024²)
    text_tokens: int
    fbcache: str  # used when the first block's signals cannot be read (see first_block_threshold)
    teacache: str
    probe: tuple[str, str]  # (block list, module in a block): runs only when that attention is computed
    taylorseer_ids: list[str]
    tiny_config: dict = field(default_factory=dict)


CASES = {
    "dit-xl-2": Case("DiT-XL/2 256² fp16 batch 2", "dit-xl-2", "fp16", 2, 32, 0, "fbcache:0.08", "teacache:0.25",
                     ("transformer_blocks", "attn1.to_q"), [r"transformer_blocks\.\d+\.(attn1|ff)"],
                     dict(num_attention_heads=2, attention_head_dim=16, num_layers=4)),
    "flux.1-dev": Case("FLUX.1-dev 1024² bf16 batch 1", "flux.1-dev", "bf16", 1, 128, 512, "fbcache:0.12",
                       "teacache:0.4,coeffs=flux.1-dev", ("single_transformer_blocks", "attn.to_q"),
                       [r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                        r"single_transformer_blocks\.\d+\.(attn|proj_mlp)"],
                       dict(num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
                            joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))),
}


def log(msg: str) -> None:
    print(f"[gpu-report {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Clock:
    """Per-step CUDA events (read once at the end) and a wall clock around the trajectory."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def event(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    @staticmethod
    def between(a, b) -> float:
        return a.elapsed_time(b) if not isinstance(a, float) else 1e3 * (b - a)


class Probe:
    """Which steps computed the last block's attention (F) and which served it from a cache (R).

    A forward hook on a projection inside that attention fires only when the attention really
    runs; diffusers' cache hooks replace the attention's (or the block's) forward when they reuse.
    """

    def __init__(self, model, where: tuple[str, str]):
        blocks = model.get_submodule(where[0])
        self.module = blocks[len(blocks) - 1].get_submodule(where[1])
        self.hits = 0
        self.handle = None

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._hit)
        return self

    def __exit__(self, *exc):
        self.handle.remove()  # a Python counter in a hook would make torch.compile recompile every step

    def _hit(self, *_):
        self.hits += 1


def first_block_threshold(model, first_blocks: str, kw: dict, latent: str, ts: list[torch.Tensor],
                          quantile: float = 0.6) -> tuple[float, list[float]]:
    """A First-Block-Cache threshold at which these (random) weights do cache.

    FBCache reuses the rest of a step when block 0's residual changed by less than the threshold
    (relative L1) since the last computed step. With random weights it changes by more than the
    published thresholds on every step, so neither diffusers' hook nor cachec ever cached and no
    cached step was timed (first H200 report). Reading the relative change on an uncached
    trajectory, untimed, and taking its ``quantile`` gives a threshold both implementations then
    share; returns it and the per-step changes.
    """
    block = model.get_submodule(first_blocks)[0]
    residuals: list[torch.Tensor] = []

    def hook(_module, args, kwargs, output):
        x = kwargs.get("hidden_states", args[0] if args else None)
        outs = output if isinstance(output, (tuple, list)) else (output,)
        out = next(o for o in outs if isinstance(o, torch.Tensor) and o.shape == x.shape)
        residuals.append((out - x).float())

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            x = kw[latent].clone()
            for t in ts:
                out = model(**{**kw, latent: x, "timestep": t}, return_dict=False)[0]
                x = x - (1.0 / len(ts)) * (out[:, : x.shape[1]] if out.shape != x.shape else out)
    finally:
        handle.remove()
    changes = [float((b - a).abs().mean() / a.abs().mean().clamp_min(1e-12))
               for a, b in zip(residuals, residuals[1:], strict=False)]
    if len(changes) < 2:
        raise ValueError(f"{len(changes)} residual changes read; a threshold needs at least 2")
    percentile = statistics.quantiles(changes, n=100)[int(quantile * 100) - 1]
    return float(f"{percentile:.3g}"), changes


def timesteps(case: Case, steps: int, device) -> list[torch.Tensor]:
    """DDIM-like integer timesteps for DiT, flow-matching sigmas (t/1000) for FLUX."""
    if case.arch == "flux.1-dev":
        vals = [1.0 - i / steps for i in range(steps)]
        return [torch.full((case.batch,), v, dtype=DTYPES[case.dtype], device=device) for v in vals]
    vals = [999 - i * (1000 // steps) for i in range(steps)]
    return [torch.full((case.batch,), v, dtype=torch.long, device=device) for v in vals]


def trajectory(fn, kw: dict, latent: str, ts: list[torch.Tensor], clock: Clock, probe: Probe | None = None):
    """Run one trajectory; returns (final latent, per-step ms, wall ms, schedule seen by ``probe``)."""
    x = kw[latent].clone()
    events, schedule = [], ""
    clock.sync()
    wall0 = time.perf_counter()
    events.append(clock.event())
    for t in ts:
        before = probe.hits if probe else 0
        out = fn(**{**kw, latent: x, "timestep": t})
        out = out[0] if isinstance(out, (tuple, list)) else out.sample
        out = out[:, : x.shape[1]] if out.shape != x.shape else out
        x = x - (1.0 / len(ts)) * out
        events.append(clock.event())
        if probe:
            schedule += "F" if probe.hits > before else "R"
    clock.sync()
    wall = 1e3 * (time.perf_counter() - wall0)
    step_ms = [Clock.between(a, b) for a, b in zip(events, events[1:], strict=False)]
    return x.float(), step_ms, wall, schedule


def summarise(name, backend, schedule, step_ms, wall_ms, nfe=None, extra=None) -> dict:
    full = [ms for ms, c in zip(step_ms, schedule, strict=True) if c == "F"]
    cached = [ms for ms, c in zip(step_ms, schedule, strict=True) if c != "F"]
    row = {"method": name, "backend": backend, "schedule": schedule, "full_steps": len(full),
           "nfe": round(nfe if nfe is not None else len(full), 3),
           "full_step_ms": round(statistics.median(full), 3) if full else None,
           "cached_step_ms": round(statistics.median(cached), 3) if cached else None,
           "trajectory_ms": round(wall_ms, 2), "sum_of_steps_ms": round(sum(step_ms), 2)}
    row.update(extra or {})
    return row


class Report:
    def __init__(self, budget_s: float, device):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.device = torch.device(device)
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self.notes: list[str] = []
        self.on_change = None  # called after every method: partial results survive a killed run
        self.match: str | None = None  # a regex on "case method": run only those

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def attempt(self, case: str, label: str, need_s: float, fn):
        if self.match is not None and not re.search(self.match, f"{case} {label}"):
            return None
        if self.left() < need_s:
            self.skipped.append({"case": case, "method": label, "why": f"time budget ({self.left():.0f} s left, "
                                                                         f"needs about {need_s:.0f} s)"})
            log(f"skip {label}: {self.left():.0f} s left")
            return None
        t0 = time.perf_counter()
        try:
            row = fn()
        except Exception as exc:  # noqa: BLE001 - a method that fails is a result of the report
            self.failed.append({"case": case, "method": label, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                "traceback": traceback.format_exc()[-3000:]})
            log(f"FAILED {label}: {type(exc).__name__}: {str(exc)[:300]}")
            return None
        if row is not None:
            row["case"] = case
            row["wall_s_including_compile"] = round(time.perf_counter() - t0, 1)
            self.rows.append(row)
            log(json.dumps(row))
        if self.on_change:
            self.on_change()
        return row


def deploy_unavailable(backend: str, device: torch.device) -> str | None:
    """Why a deployable backend cannot run here, or None."""
    from cachec.errors import BackendError

    try:
        cachec.backends.get_backend(backend)
    except BackendError as exc:
        return str(exc)
    if backend == "onnxruntime" and device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDA execution provider here (needs onnxruntime-gpu)"
    if backend == "tensorrt":
        if device.type != "cuda":
            return "TensorRT engines run on a CUDA GPU"
        from cachec.backends.tensorrt import trt

        if "rtx" in trt().__name__ and torch.cuda.get_device_capability() == (9, 0):
            return "TensorRT-RTX does not run on Hopper (compute capability 9.0); needs TensorRT proper"
    return None


def run_case(report: Report, case: Case, steps: int, tiny: bool, inductor: bool, deploy: tuple[str, ...] = ()) -> None:
    device = report.device
    dtype = DTYPES[case.dtype]
    clock = Clock(device)
    t0 = time.perf_counter()
    if tiny:
        cls_name, cfg = ARCH_CONFIGS[case.arch]
        ARCH_CONFIGS[case.arch] = (cls_name, {**cfg, **case.tiny_config})
    bundle = resolve(f"arch:{case.arch}", dtype=dtype, device=device)
    if tiny:
        ARCH_CONFIGS[case.arch] = (cls_name, cfg)
    bundle.text_tokens = case.text_tokens or bundle.text_tokens
    model = bundle.model
    resolution = case.resolution if not tiny else 8
    kw = bundle.example_inputs(batch=case.batch, resolution=resolution)
    latent = bundle.latent_input
    ts = timesteps(case, steps, device)
    log(f"{case.name}: built in {time.perf_counter() - t0:.1f} s; inputs "
        f"{ {k: tuple(v.shape) for k, v in kw.items() if isinstance(v, torch.Tensor)} }")
    params = sum(p.numel() for p in model.parameters())
    report.notes.append(f"{case.name}: {params / 1e9:.3f} B parameters, inputs "
                        f"{ {k: list(v.shape) for k, v in kw.items() if isinstance(v, torch.Tensor)} }")
    finals: dict[tuple[str, str], torch.Tensor] = {}
    warm_steps = max(3, steps // 10)
    probe = Probe(model, case.probe)

    def plain_rows(label, fn, backend):
        def go():
            with torch.no_grad():
                trajectory(fn, kw, latent, ts[:warm_steps] if backend == "eager" else ts, clock)
                x, step_ms, wall, _ = trajectory(fn, kw, latent, ts, clock)
                sched = "F" * len(ts)
            finals[(label, backend)] = x
            return summarise(label, backend, sched, step_ms, wall)
        return go

    def plain(**k):
        return model(**k, return_dict=False)

    # -- 1. eager ---------------------------------------------------------------------------
    report.attempt(case.name, "plain diffusers (eager)", 20, plain_rows("plain", plain, "eager"))

    def diffusers_hook(label, apply, config):
        from diffusers.hooks import HookRegistry
        from diffusers.models.cache_utils import CacheMixin

        def go():
            apply(model, config)

            def call(**k):
                with CacheMixin.cache_context(model, "cond"):
                    return model(**k, return_dict=False)

            try:
                registry = HookRegistry.check_if_exists_or_initialize(model)
                with torch.no_grad(), probe:
                    registry.reset_stateful_hooks()
                    trajectory(call, kw, latent, ts[:warm_steps], clock)  # warm-up (hooks are reset after it)
                    registry.reset_stateful_hooks()
                    x, step_ms, wall, sched = trajectory(call, kw, latent, ts, clock, probe)
                finals[(label, "eager")] = x
                return summarise(label, "eager", sched, step_ms, wall)
            finally:  # the next method gets the bare model (registries cache their children: drop them all)
                for sub in model.modules():
                    reg = getattr(sub, "_diffusers_hook", None)
                    if reg is not None:
                        for name in list(reg.hooks):
                            reg.remove_hook(name, recurse=False)
                        del sub._diffusers_hook
        return go

    from diffusers.hooks import (
        FirstBlockCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_taylorseer_cache,
    )

    fbcache = case.fbcache
    fb_t = float(fbcache.split(":")[1])
    try:
        fb_t, changes = first_block_threshold(model, "transformer_blocks", kw, latent, ts)
        fbcache = f"fbcache:{fb_t}"
        report.notes.append(f"{case.name}: First-Block-Cache threshold {fb_t} (60th percentile of block 0's relative "
                            f"residual change per step, uncached: {min(changes):.3g}–{max(changes):.3g}), "
                            "shared by diffusers' hook and cachec")
    except Exception as exc:  # noqa: BLE001 - the published threshold then stands
        report.notes.append(f"{case.name}: block 0's residual change not read ({type(exc).__name__}: {exc}); "
                            f"First-Block-Cache at {fb_t}")
    report.attempt(case.name, f"diffusers FirstBlockCache t={fb_t}", 40, diffusers_hook(
        f"diffusers FirstBlockCache t={fb_t}", apply_first_block_cache, FirstBlockCacheConfig(threshold=fb_t)))
    report.attempt(case.name, "diffusers TaylorSeer N=4 O=2", 40, diffusers_hook(
        "diffusers TaylorSeer N=4 O=2", apply_taylorseer_cache, TaylorSeerCacheConfig(
            cache_interval=4, max_order=2, disable_cache_before_step=2, taylor_factors_dtype=torch.float32,
            cache_identifiers=case.taylorseer_ids)))

    sessions = {}  # the one capture of the model (cachec.session), made on first use

    def session_once():
        if "s" not in sessions:
            t = time.perf_counter()
            sessions["s"] = open_bundle(bundle, kw, latent_input=latent, label=case.name)
            log(f"{case.name}: torch.export in {time.perf_counter() - t:.1f} s")
        return sessions["s"]

    def cachec_rows(policy, backend, mode=None):
        def go():
            t = time.perf_counter()
            session, method = session_once(), parse_policy(policy)
            program, _ = session.plan(method)  # a fresh plan per row, so plan_s times planning each time
            plan_s = time.perf_counter() - t
            rt = session.runtime(method, backend=backend, steps=steps, options={"mode": mode} if mode else {},
                                 program=program)
            with torch.no_grad():
                t = time.perf_counter()
                # warm-up: Inductor compiles each variant on its first use, anywhere in a trajectory
                trajectory(rt, kw, latent, ts if backend == "inductor" else ts[:warm_steps], clock)
                warm_s = time.perf_counter() - t
                rt.reset(steps)
                x, step_ms, wall, _ = trajectory(rt, kw, latent, ts, clock)
            label, where = f"cachec {policy}", backend + (f" {mode}" if mode else "")
            finals[(label, where)] = x
            return summarise(label, where, rt.stats.schedule, step_ms, wall,
                             nfe=rt.stats.nfe, extra={"plan_s": round(plan_s, 1), "warm_trajectory_s": round(warm_s, 1)})
        return go

    policies = ["none", "fora:3", fbcache, case.teacache, "taylorseer:4"]
    for pol in policies:
        report.attempt(case.name, f"cachec {pol} (eager)", 30, cachec_rows(pol, "eager"))

    # -- 2. Inductor ------------------------------------------------------------------------
    if inductor:
        mode = "reduce-overhead" if device.type == "cuda" else None
        compiled = torch.compile(model, mode=mode)
        report.attempt(case.name, f"plain torch.compile ({mode or 'default'})", 60 if case.arch == "dit-xl-2" else 120,
                       plain_rows("plain torch.compile", compiled, "inductor" + (f" {mode}" if mode else "")))
        for pol in ("none", "fora:3", fbcache):
            need = 60 if case.arch == "dit-xl-2" else 150
            report.attempt(case.name, f"cachec {pol} (inductor)", need, cachec_rows(pol, "inductor", mode))

    # -- 3. deployable artifacts (written with `cachec compile`'s code, loaded with cachec.load) --
    def artifact_rows(policy, backend):
        def go():
            import tempfile
            from pathlib import Path

            from cachec import artifact

            session = session_once()
            program, cap = session.plan(parse_policy(policy))
            with tempfile.TemporaryDirectory(prefix="gpu-report-") as tmp:
                t = time.perf_counter()
                out = artifact.save(Path(tmp) / "art", program, cap, f"arch:{case.arch}", session.signature,
                                    backend=backend)
                build_s = time.perf_counter() - t
                manifest = json.loads((out / "manifest.json").read_text())
                rt = cachec.load(out, num_steps=steps)
                with torch.no_grad():
                    trajectory(rt, kw, latent, ts[:warm_steps], clock)
                    rt.reset(steps)
                    x, step_ms, wall, _ = trajectory(rt, kw, latent, ts, clock)
            label = f"cachec {policy}"
            finals[(label, backend)] = x
            return summarise(label, backend, rt.stats.schedule, step_ms, wall, nfe=rt.stats.nfe,
                             extra={"build_s": round(build_s, 1),
                                    "artifact_over_weights": round(manifest["artifact_bytes"] / manifest["weight_bytes"], 3)})
        return go

    for backend in deploy:
        why = deploy_unavailable(backend, device)
        if why is not None:
            report.skipped.append({"case": case.name, "method": f"cachec ({backend})", "why": why})
            log(f"skip {backend}: {why}")
            continue
        for pol in ("none", "fora:3"):
            need = 120 if case.arch == "dit-xl-2" else 400
            report.attempt(case.name, f"cachec {pol} ({backend})", need, artifact_rows(pol, backend))

    # -- fidelity and ratios ------------------------------------------------------------------
    ref = finals.get(("plain", "eager"))
    base = {r["backend"]: r for r in report.rows if r["case"] == case.name and r["method"] == "cachec none"}
    plain_row = next((r for r in report.rows if r["case"] == case.name and r["method"] == "plain"), None)
    for r in report.rows:
        if r["case"] != case.name:
            continue
        final = finals.get((r["method"], r["backend"]))
        if ref is not None and final is not None:
            r["rel_err_vs_plain"] = float((final - ref).norm() / ref.norm().clamp_min(1e-12))
        if plain_row is not None:
            r["speedup_vs_plain_eager"] = round(plain_row["trajectory_ms"] / r["trajectory_ms"], 3)
        same = base.get(r["backend"])
        if same is not None and r["method"].startswith("cachec"):
            r["speedup_vs_none"] = round(same["trajectory_ms"] / r["trajectory_ms"], 3)
            r["ideal_speedup"] = round(len(r["schedule"]) / r["nfe"], 3) if r["nfe"] else None
            if r["ideal_speedup"]:
                r["measured_over_ideal"] = round(r["speedup_vs_none"] / r["ideal_speedup"], 3)
    sessions.clear()  # the exported graph holds the weights alive
    if device.type == "cuda":
        torch.cuda.empty_cache()


def markdown(report: Report, meta: dict) -> str:
    lines = [f"GPU: {meta['gpu']}; torch {meta['torch']}; {meta['date']}; {meta['steps']} steps; "
             f"report wall time {meta['wall_s']:.0f} s.", ""]
    head = ("| case | method | backend | full steps | NFE | full step ms | cached step ms | trajectory ms | "
            "× plain | × none | ideal | meas/ideal | rel. err vs plain |")
    lines += [head, "|" + "---|" * 13]
    for r in report.rows:
        def f(k, fmt="{}", r=r):
            v = r.get(k)
            return "–" if v is None else fmt.format(v)
        lines.append(f"| {r['case']} | {r['method']} | {r['backend']} | {r['full_steps']} | {f('nfe')} | "
                     f"{f('full_step_ms', '{:.2f}')} | {f('cached_step_ms', '{:.2f}')} | "
                     f"{f('trajectory_ms', '{:.1f}')} | {f('speedup_vs_plain_eager', '{:.2f}')} | "
                     f"{f('speedup_vs_none', '{:.2f}')} | {f('ideal_speedup', '{:.2f}')} | "
                     f"{f('measured_over_ideal', '{:.2f}')} | {f('rel_err_vs_plain', '{:.2e}')} |")
    for s in report.skipped:
        lines.append(f"\nskipped: {s['case']} {s['method']} ({s['why']})")
    for s in report.failed:
        lines.append(f"\nfailed: {s['case']} {s['method']}: {s['error'][:300]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dit-xl-2,flux.1-dev", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=50, help="denoising steps per trajectory (default 50)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting sections after this (default 480)")
    ap.add_argument("--no-inductor", action="store_true", help="eager sections only")
    ap.add_argument("--tiny", action="store_true", help="tiny configs of the same classes (a CPU check of the flow)")
    ap.add_argument("--match", default=None, metavar="REGEX",
                    help='run only the methods whose "case method" label matches, e.g. "inductor|DiT.*eager"')
    ap.add_argument("--deploy", default="aotinductor,onnxruntime,tensorrt",
                    help="deployable backends to compile, load and time (after the rest; '' for none); "
                         "each is skipped with its reason where it cannot run")
    ap.add_argument("--out", default="gpu-report.json")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    report = Report(args.budget_s, args.device)
    report.on_change = lambda: _write(report, args)
    report.match = args.match
    for name in args.models.split(","):
        if name not in CASES:
            ap.error(f"unknown model {name!r}; known: {', '.join(CASES)}")
        try:
            run_case(report, CASES[name], args.steps, args.tiny, not args.no_inductor,
                     tuple(b for b in args.deploy.split(",") if b))
        except Exception as exc:  # noqa: BLE001 - the other case still runs
            report.failed.append({"case": name, "method": "(setup)", "error": f"{type(exc).__name__}: {exc}"[:2000],
                                  "traceback": traceback.format_exc()[-3000:]})
            log(f"FAILED {name}: {exc}")
        finally:
            _write(report, args)
    _write(report, args)
    return 0


def _write(report: Report, args) -> None:
    dev = report.device
    meta = {"gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (cpu)", "torch": torch.__version__,
            "cachec": cachec.__version__, "date": datetime.date.today().isoformat(), "steps": args.steps,
            "tiny": args.tiny, "wall_s": time.perf_counter() - report.t0}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": report.rows, "skipped": report.skipped, "failed": report.failed,
                   "notes": report.notes}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report, meta))


if __name__ == "__main__":
    sys.exit(main())
