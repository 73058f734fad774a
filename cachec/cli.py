"""The ``cachec`` command line: compile, run, inspect, bench, calibrate, serve, policies.

Every user error (bad policy, model, shape, artifact, missing backend) is a
:class:`~cachec.errors.CachecError`: printed as one message, exit code 2. Ctrl-C and SIGTERM
print one line and exit 130 and 143, after removing what was half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from cachec.backends import with_mode

from .arch_configs import ARCH_CONFIGS
from .atomic_write import check_file_target, write_text
from .errors import CachecError, ModelError
from .interrupts import Terminated, terminate_raises
from .progress import stage
from .serve_limits import DEFAULT_MAX_QUEUED
from .session import open_model

# Nothing imported above may import torch or diffusers: `cachec --help` must not wait for them.
DTYPE_NAMES = ("fp32", "bf16", "fp16")  # cachec.devices.DTYPES' keys (tests check they agree)

log = logging.getLogger("cachec")


class _DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _check_writable(out: Path) -> None:
    """Refuse an output place that cannot be written before any minute is spent exporting.

    The output's own folder may be missing (it is created, as the artifact writer always did),
    but not a whole missing path above it, which is far more likely a typo than a wish.
    """
    parent = out.resolve().parent
    existing = parent
    if not parent.is_dir():
        if parent.exists():
            raise CachecError(f"cannot write {out}: {parent} is not a folder")
        if not parent.parent.is_dir():
            raise CachecError(f"cannot write {out}: its folder {parent} does not exist")
        existing = parent.parent
    if not os.access(existing, os.W_OK):
        raise CachecError(f"cannot write {out}: its folder {existing} is not writable")
    if out.exists() and not out.is_dir():
        raise CachecError(f"cannot write {out}: it exists and is not a folder")
    if parent.is_dir() and not out.exists():  # e.g. /proc/x: the tests above cannot tell; creating it can
        try:
            out.mkdir()
            out.rmdir()
        except OSError as exc:
            raise CachecError(f"cannot write {out}: {exc.strerror or exc}") from None


def _check_outputs(args) -> None:
    """Every output place a command will write, and a device it cannot run on, checked before any work."""
    if args.command in ("run", "bench", "calibrate") and str(getattr(args, "device", "")).startswith("meta"):
        raise CachecError(f"--device {args.device} holds no data to run on; {args.command} takes cpu, cuda or cuda:N "
                          "(meta serves inspect)")
    if args.command == "compile":
        from .output_dir import check_replaceable

        _check_writable(Path(args.out))
        check_replaceable(args.out, args.force, protected=[p for p in (args.model, args.inputs)
                                                           if p is not None and Path(p).exists()])
    elif args.command == "run":
        _check_writable(Path(args.out))
    elif args.command == "calibrate" and not args.threshold_map:
        check_file_target(args.out, "calibration file")  # an existing file is replaced (a rerun)
    elif args.command == "bench":
        if args.json not in (None, "-"):
            check_file_target(args.json, "JSON file")
        if args.plots is not None:
            _check_writable(Path(args.plots))


def cmd_compile(args) -> int:
    """One compile per --out at a time (:class:`~cachec.output_dir.OutputLock`); what a killed
    compile left next to it is removed first."""
    from .output_dir import OutputLock, clean_stale

    with OutputLock(args.out):
        clean_stale(args.out)
        return _compile(args)


def _compile(args) -> int:
    from cachec.backends import get_backend

    from . import artifact
    from .policy import parse_policy
    from .signing import read_key

    lowering = get_backend(args.backend)  # an unknown or uninstalled backend fails before any work
    _say_where_it_runs(lowering)
    method = parse_policy(args.policy)
    sign_key = read_key(args.sign_key, "--sign-key") if args.sign_key else None  # a bad key fails before the export
    session = open_model(args.model, args.batch, device=args.device, dtype=args.dtype, inputs_file=args.inputs,
                         loras=args.lora, subfolder=args.subfolder, revision=args.revision)
    if session.is_artifact:
        raise ModelError(f"{args.model} is already a compiled artifact; compile a model spec or directory")
    program = session.program(method)
    stage(f"writing artifact to {args.out}")
    try:
        out = artifact.save(args.out, program, session.captured(method), args.model, session.signature,
                            force=args.force, backend=args.backend, max_batch=args.max_batch,
                            keep_inputs=session.bundle.inputs_file is not None or session.bundle.recorded is not None,
                            sign_key=sign_key)
    except OSError as exc:  # a full disk, say: the temporary folder is gone, the old --out untouched
        raise CachecError(f"cannot write the artifact {args.out}: {exc.strerror or exc}; nothing was written") from exc
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"compiled {args.model} with policy {method.spec} for {args.backend}: {len(program.segments)} segments, "
          f"variants {', '.join(program.variants)} -> {out}")
    ratio = manifest["artifact_bytes"] / max(manifest["weight_bytes"], 1)
    print(f"artifact {manifest['artifact_bytes'] / 1e6:.2f} MB = {ratio:.3f} x model weights "
          f"({manifest['weight_bytes'] / 1e6:.2f} MB)")
    return 0


def _say_where_it_runs(lowering) -> None:
    """A backend whose artifacts cannot run on this machine (TensorRT without a GPU) still compiles,
    for another machine; say so before the minutes of building, not when `cachec run` refuses it."""
    import torch

    here = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if not set(lowering.devices) & set(here):
        stage(f"note: {lowering.name} artifacts run on {' or '.join(lowering.devices)} only and this machine has "
              f"no {' or '.join(lowering.devices)} device: the engines built now will not run here (copy the "
              "artifact to a machine that has one)")


def cmd_run(args) -> int:
    from .bench import pin_threads
    from .policy import parse_policy
    from .run_timing import busy_machine_note, compare_with_none

    pin_threads(args.threads)
    if args.prompt is not None:
        from .prompt_run import run_prompt

        return run_prompt(args)
    method = parse_policy(args.policy) if args.policy else None  # a typo is reported before the export
    session = open_model(args.model, args.batch, args.backend, args.allow_version_mismatch, args.device, args.dtype,
                         inputs_file=args.inputs, trust_native=args.trust_native, verify_key=args.verify_key)
    bundle = session.bundle
    method = method or session.artifact_method or parse_policy("none")
    backend = args.backend or session.backend or "eager"
    session.options = with_mode(session.options, backend, args.mode)
    busy = busy_machine_note()
    if busy:
        stage(f"note: {busy}")
    runs, timing = compare_with_none(session, method, steps=args.steps, seed=args.seed, batch=args.batch,
                                     repeats=args.repeats, backend=backend, say=stage)
    _report_run(args, bundle, method.spec, backend, runs, timing, busy)
    return 0


def sample_file_stem(spec: str) -> str:
    """A file-name stem for a policy spec: only letters, digits and ``_ + . -`` (a spec may carry a
    calibration file's path, ``calib=../x.json``, which must not become folders or leave ``--out``),
    at most 120 characters (the spec's start; file names have a length limit)."""
    stem = re.sub(r"[^A-Za-z0-9_+.-]+", "_", spec.replace("=", "")).strip("._") or "policy"
    return stem[:120]


def _report_run(args, bundle, policy, backend, runs, timing, busy: str | None) -> None:
    """Write the sample grids of a ``cachec run`` and print its report (text or --json)."""
    import torch

    from .metrics import psnr, ssim, to_unit
    from .sample_grids import grid

    pixel = bundle.name.startswith("builtin:")
    ref_sample, sample, stats = runs["none"].samples[args.seed], runs[policy].samples[args.seed], \
        runs[policy].stats[args.seed]
    ref_img = to_unit(ref_sample, pixel)
    img = to_unit(sample, pixel, ref=None if pixel else ref_sample)
    if not pixel:
        ref_img = to_unit(ref_sample, pixel, ref=ref_sample)
    out_dir = Path(args.out)
    grid(img, out_dir / f"samples_{sample_file_stem(policy)}.png",
          f"{bundle.name}  {policy}  ({backend}, {args.steps} steps, seed {args.seed})\n"
          f"NFE {stats.nfe:.2f}  PSNR {psnr(img, ref_img):.2f} dB  SSIM {ssim(img, ref_img):.4f} vs none")
    grid(ref_img, out_dir / "samples_none.png",
          f"{bundle.name}  none  ({backend}, {args.steps} steps, seed {args.seed})\nthe uncached reference")
    report = {
        "model": bundle.name,
        "policy": policy,
        "backend": backend,
        "steps": args.steps,
        "seed": args.seed,
        "batch": args.batch,
        **stats.to_json(),
        **timing.to_json(),
        "torch_threads": torch.get_num_threads(),
        "timing": timing.verdict(),
        "busy_machine": busy,
        "nfe_ideal_speedup": round(args.steps / stats.nfe, 3) if stats.nfe else None,
        "psnr_vs_none": round(psnr(img, ref_img), 3),
        "ssim_vs_none": round(ssim(img, ref_img), 4),
        "samples": str(out_dir),
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"model {report['model']}  policy {policy}  backend {backend}  steps {args.steps}  seed {args.seed}")
        print(f"schedule   {report['schedule']}")
        print(f"NFE        {report['nfe']:.2f} of {args.steps} (ideal speedup {report['nfe_ideal_speedup']}x)")
        print(f"latency    {report['latency_s']:.3f} s  (none: {report['latency_none_s']:.3f} s; medians of "
              f"{report['repeats']} interleaved trajectories each, same backend, {report['torch_threads']} threads)")
        print(f"speedup    {report['speedup_vs_none']}x  ({report['timing']})")
        if busy:
            print(f"note       {busy}")
        print(f"fidelity   PSNR {report['psnr_vs_none']} dB, SSIM {report['ssim_vs_none']} vs none (same seed)")
        print(f"samples    {out_dir}/")


def cmd_inspect(args) -> int:
    from .policy import parse_policy
    from .program import Load, Run, Store, cache_bytes

    method = parse_policy(args.policy)
    policy = method.spec

    session = open_model(args.model, args.batch, allow_version_mismatch=args.allow_version_mismatch,
                         device=args.device, dtype=args.dtype, image_size=args.image_size,
                         text_tokens=args.text_tokens, inputs_file=args.inputs, trust_native=args.trust_native,
                         verify_key=args.verify_key)
    bundle = session.bundle
    program = session.program(method)
    planned = program.planned

    # a forecast policy's memory depends on its stream choice: show what each would hold
    choices = {}
    if "streams" in method.params and not session.is_artifact:
        for streams in ("module", "step"):
            alt = session.program(method.with_params(streams=streams))
            choices[streams] = {"buffers": len(alt.caches()), "bytes_per_item": cache_bytes(alt, 1)}
    from .variant_costs import variant_costs

    costs = variant_costs(program, batch=1)
    none_flops = planned.none_flops or program.variant_flops("full")
    trajectory = {"steps": args.steps, "none_tflops_per_sample": none_flops * args.steps / 1e12}
    if args.json:
        print(json.dumps({"model": bundle.name, "inputs": {k: list(v.shape) for k, v in _example_shapes(bundle, args.batch)},
                          "regions": planned.regions, "segments": {
            n: {"role": s.role, "flops_per_sample": s.flops, "inputs": s.inputs, "outputs": s.outputs}
            for n, s in program.segments.items()}, "variants": program.describe()["variants"],
            "variant_costs": costs, "trajectory": trajectory,
            "cache_buffers": len(program.caches()), "cache_bytes_per_item": cache_bytes(program, 1),
            "stream_choices": choices}, indent=1, default=str))
        return 0
    print(f"{program.model.model_class}: {len(planned.blocks)} blocks, policy {policy}")
    print("\nregions (kind, name, share of FLOPs):")
    for r in planned.regions:
        print(f"  {r['kind']:<10} {r['name']:<60} {100 * r['share']:5.1f}%")
    print("\nsegments (role, GFLOPs/sample, parameters):")
    for n, s in program.segments.items():
        params = sum(t.numel() for t in s.parameters().values())
        print(f"  {n:<40} {s.role:<9} {s.flops / 1e9:9.4f}  {params:>10}")
    print("\nvariants (segments run; cache nodes inserted):")
    for name, ops in program.variants.items():
        runs = sum(isinstance(op, Run) for op in ops)
        loads = [op.cache for op in ops if isinstance(op, Load)]
        stores = [op.cache for op in ops if isinstance(op, Store)]
        print(f"  {name:<11} {runs} segments, {program.variant_flops(name) / 1e9:.4f} GFLOPs/sample, "
              f"{len(loads)} cache_read, {len(stores)} cache_write")
        for c in dict.fromkeys(loads + stores):
            kinds = ("read" if c in loads else "") + ("/write" if c in stores else "")
            print(f"      {kinds.strip('/'):<10} {c}")
    print("\nvariant costs per step (batch 1; the fused variant eager and Inductor run, chunked linears narrowed to "
          "the chunks it reads; ops: dispatched ATen ops, views excluded, ~ eager GPU kernel launches):")
    for name, c in costs.items():
        ops = f"{c['dispatched_ops']} ops" if c["dispatched_ops"] is not None else c.get("note", "-")
        print(f"  {name:<11} {c['flops_per_sample'] / 1e9:14.3f} GFLOPs  {ops}")
    print(f"  uncached trajectory of {args.steps} steps: {trajectory['none_tflops_per_sample']:.4g} TFLOPs per sample")
    print(f"\ncache buffers: {len(program.caches())}, {cache_bytes(program, 1) / 1e6:.3f} MB per batch item")
    for streams, c in choices.items():
        print(f"  streams={streams:<7} {c['buffers']:>4} buffers, {c['bytes_per_item'] / 1e6:.3f} MB per batch item")
    return 0


def _example_shapes(bundle, batch: int):
    if bundle.model is None and bundle.config is None:
        return []
    import torch

    return [(k, v) for k, v in bundle.example_inputs(batch=batch).items() if isinstance(v, torch.Tensor)]


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args)


def cmd_calibrate(args) -> int:
    """Measure reuse errors and magnitude ratios (--out FILE), choose a budget schedule (--budget K),
    or map thresholds of a dynamic policy to the NFE they produce (--threshold-map SPEC)."""
    from . import calibration as cal
    from . import schedules

    if args.samples < 1:
        raise CachecError(f"--samples must be at least 1; got {args.samples}")
    # what the arguments alone decide fails before the model is loaded and exported
    if args.threshold_map:
        cal.parse_threshold_map(args.threshold_map)
    if args.budget is not None:
        schedules.check_budget(args.steps, args.budget, schedules.forced_steps(args.steps, 0, 0))
    session = open_model(args.model, max(args.samples, 2), device=args.device, dtype=args.dtype)
    if session.is_artifact:
        raise ModelError(f"{args.model} is a compiled artifact; calibrate the model it was compiled from")
    if args.threshold_map:
        rows = cal.threshold_map(session, args.threshold_map, steps=args.steps, samples=args.samples,
                                 extra=args.params or "", progress=stage)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(f"{'policy':<34} {'full steps min/median/max':>26} {'NFE min/median/max':>24}   ({args.samples} seeds, "
              f"{args.steps} steps)")
        for r in rows:
            full = f"{r['full_min']}/{r['full_median']:g}/{r['full_max']}"
            nfe = f"{r['nfe_min']:.2f}/{r['nfe_median']:.2f}/{r['nfe_max']:.2f}"
            print(f"{r['policy']:<34} {full:>26} {nfe:>24}")
        return 0
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    if args.budget is not None:
        if args.base not in bases:
            bases.append(args.base)
    data = cal.calibrate(session, steps=args.steps, samples=args.samples, seed=args.seed, bases=bases,
                         progress=stage)
    out = Path(args.out)
    write_text(out, json.dumps(data))  # never a half-written calibration file
    print(f"wrote {out}: reuse errors for {', '.join(data['errors'])}, {args.steps} steps x {args.samples} samples")
    if args.budget is not None:
        schedule, predicted = schedules.budget_schedule(data, args.budget, args.base)
        even = schedules.even_schedule(args.steps, args.budget)
        print(f"budget nfe={args.budget}, base={args.base}: {schedule}")
        print(f"  predicted final error {predicted:.4g} (evenly spaced {even}: "
              f"{schedules.predicted_error(data, even, args.base):.4g})")
        print(f"  use: --policy budget:{args.budget},base={args.base},calib={out}")
    return 0


def cmd_serve(args) -> int:
    try:
        from . import serve
    except ImportError as exc:
        raise CachecError(f"cachec serve needs Ray Serve ({exc}); install it with: pip install 'cachec[serve]'") from None
    from .quiet import is_ray_shutdown_noise, output_without

    with output_without(is_ray_shutdown_noise):  # Ray's harmless shutdown line (cachec/quiet.py)
        return serve.main(args)


def cmd_example_pipeline(args) -> int:
    from .example_pipeline import write

    stage(f"building a small {args.kind} pipeline (random weights) in {args.out}")
    out = write(args.kind, args.out, force=args.force)
    print(f"wrote a {args.kind} pipeline with random weights to {out}; try: "
          f"cachec run {out} --prompt \"a red cat\" --policy fora:2 --steps 8 --image-size 64")
    print("its weights are random, so its images are noise and the PSNR/SSIM a policy gets on it say nothing "
          "about image quality: they only show that the cache follows the pipeline's schedule")
    return 0


def cmd_policies(args) -> int:
    from .policy import describe_policies

    print(describe_policies())
    return 0


def _trust_options(parser) -> None:
    """Options of the commands that load an artifact (see cachec.signing and docs/serving.md)."""
    parser.add_argument("--trust-native", action="store_true",
                        help="load an unsigned AOTInductor/TensorRT artifact: its native code runs with your "
                             "privileges, so only for an artifact from a source you trust")
    parser.add_argument("--verify-key", default=None, metavar="FILE",
                        help="require the artifact's signature (cachec compile --sign-key) under the key in FILE "
                             "(default: the file named by $CACHEC_VERIFY_KEY, if set)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cachec", description="Diffusion feature caching as a compiler pass.",
                                formatter_class=_DefaultsShown)
    debug_help = "show the full traceback of an error (default: one message, exit code 2)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    # accepted after the subcommand too; SUPPRESS keeps a subparser from resetting `cachec --debug CMD`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    # where the model runs: every command that builds or runs one takes these
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda when this machine has a GPU, else cpu); "
                             "meta builds an arch: model without weights, for `inspect` of its FLOPs")
    target.add_argument("--dtype", default=None, choices=list(DTYPE_NAMES),
                        help="weights and activations: fp32, bf16, fp16 (default: fp32; an artifact keeps its own)")
    sub = p.add_subparsers(dest="command", required=True)
    model_help = (f"builtin:tiny-dit, arch:NAME (published config, random weights: {', '.join(ARCH_CONFIGS)}), "
                  "a local diffusers model dir of any denoiser class, or a Hugging Face Hub repo id (owner/name)")
    inputs_help = ("safetensors file of example tensors named as the forward's arguments (a__b for a nested a={'b': ...}); "
                   "default: built from the forward signature and config")

    c = sub.add_parser("compile", formatter_class=_DefaultsShown, parents=[common, target], help="compile MODEL with a policy into an artifact directory")
    c.add_argument("model", help=model_help)
    c.add_argument("--policy", default="none", help="policy spec, e.g. fora:3 (see `cachec policies`)")
    c.add_argument("--backend", default="eager",
                   help="lowering target: eager, onnxruntime, tensorrt, aotinductor (ahead-of-time packages for --device)")
    c.add_argument("--out", required=True, help="artifact directory to write")
    c.add_argument("--batch", type=int, default=2, help="example batch for export (the batch stays dynamic)")
    c.add_argument("--max-batch", type=int, default=None,
                   help="largest batch the artifact accepts (default: 16 for tensorrt, whose engines reserve "
                        "activation memory for it; 1024 otherwise)")
    c.add_argument("--force", action="store_true",
                   help="replace --out if it is a cachec artifact or an empty folder (anything else is refused)")
    c.add_argument("--inputs", default=None, metavar="FILE", help=inputs_help)
    c.add_argument("--sign-key", default=None, metavar="FILE",
                   help="sign the artifact (manifest.sig, HMAC-SHA256) with the key in FILE; load it with --verify-key")
    c.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help="a LoRA safetensors file (diffusers/PEFT format) fused into the weights before export; repeatable")
    c.add_argument("--subfolder", default=None, help="the denoiser's folder in MODEL (default: found: transformer/ or unet/)")
    c.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repo id (default: main)")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", formatter_class=_DefaultsShown, parents=[common, target], help="sample with a policy and compare with `none` (NFE, latency, PSNR/SSIM)")
    r.add_argument("model", help=model_help + ", or an artifact directory")
    r.add_argument("--policy", default=None, help="policy spec (default: the artifact's, or none)")
    r.add_argument("--steps", type=int, default=50, help="denoising steps of each trajectory")
    r.add_argument("--seed", type=int, default=0, help="seed of the starting noise and conditioning")
    r.add_argument("--batch", type=int, default=8, help="images per trajectory (1 works: single-image generation)")
    r.add_argument("--backend", default=None,
                   help="eager, inductor, onnxruntime, tensorrt, aotinductor (default: the artifact's, or eager)")
    r.add_argument("--mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                   help="inductor only: reduce-overhead replays each variant as a CUDA graph on a GPU")
    r.add_argument("--out", default="cachec-run", help="directory for the sample PNGs")
    r.add_argument("--prompt", default=None,
                   help="MODEL is a local diffusers pipeline dir: generate this prompt plain and with cachec, side by side")
    r.add_argument("--image-size", type=int, default=None, help="--prompt runs: image height and width in pixels")
    r.add_argument("--repeats", type=int, default=5,
                   help="timed trajectories of the policy and of none, interleaved; the speedup is the ratio of "
                        "the medians, and a spread that includes 1x is reported as within the noise")
    r.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--allow-version-mismatch", action="store_true",
                    help="try an artifact written by a newer cachec or (eager) another torch version")
    r.add_argument("--inputs", default=None, metavar="FILE", help=inputs_help)
    _trust_options(r)
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", formatter_class=_DefaultsShown, parents=[common, target], help="regions, segments and the cache nodes of each variant")
    i.add_argument("model", help=model_help + ", or an artifact directory")
    i.add_argument("--policy", default="fora:3",
                   help="policy whose cache nodes and variants to show (default: fora:3, unlike compile's none: "
                        "inspect is for seeing what a policy inserts; --policy none shows the plain program)")
    i.add_argument("--batch", type=int, default=2, help="example batch (FLOPs are reported per sample)")
    i.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels, e.g. 1024 (default: the config's sample size, or a small one)")
    i.add_argument("--text-tokens", type=int, default=None, help="prompt tokens of a text-conditioned model, e.g. 512")
    i.add_argument("--steps", type=int, default=50, help="trajectory length for the per-trajectory FLOPs")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("--allow-version-mismatch", action="store_true",
                    help="try an artifact written by a newer cachec or (eager) another torch version")
    i.add_argument("--inputs", default=None, metavar="FILE", help=inputs_help)
    _trust_options(i)
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("bench", formatter_class=_DefaultsShown, parents=[common, target],
                       help="several policies vs `none` in one run: NFE, TFLOPs, latency, speedup, PSNR/SSIM, cache bytes")
    b.add_argument("model", help=model_help + ", or an artifact directory")
    b.add_argument("--policies", required=True, action="append",
                   help="comma-separated policy specs, e.g. fora:2,delta:2,blocks=1-4,fbcache:0.05 (none is always added)")
    b.add_argument("--steps", type=int, default=50, help="denoising steps of each trajectory")
    b.add_argument("--seeds", type=int, default=2, help="number of seeds (0 .. S-1); fidelity is averaged over them")
    b.add_argument("--batch", type=int, default=4, help="images per trajectory")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats per (policy, seed), interleaved round-robin")
    b.add_argument("--backend", default=None,
                   help="eager, inductor, onnxruntime, tensorrt, aotinductor (default: the artifact's, or eager)")
    b.add_argument("--mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                   help="inductor only: reduce-overhead replays each variant as a CUDA graph on a GPU")
    b.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    b.add_argument("--inputs", default=None, metavar="FILE", help=inputs_help)
    b.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON to FILE (- for stdout only)")
    b.add_argument("--plots", default=None, metavar="DIR", help="write schedule.png, error_curve.png, pareto.png to DIR")
    _trust_options(b)
    b.set_defaults(fn=cmd_bench)

    cal = sub.add_parser("calibrate", formatter_class=_DefaultsShown, parents=[common, target],
                         help="measure reuse errors for NFE budgets (budget:K,calib=FILE), MagCache ratios and HyCa clusters, "
                              "or map a dynamic policy's thresholds to NFE")
    cal.add_argument("model", help=model_help)
    cal.add_argument("--steps", type=int, default=50, help="denoising steps of the calibrated trajectory")
    cal.add_argument("--samples", type=int, default=4, help="calibration inputs (one batch); seeds for --threshold-map")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--bases", default="module,step,forecast",
                     help="what to measure: module (FORA reuse), step (stack residual), forecast (TaylorSeer order 1)")
    cal.add_argument("--budget", type=int, default=None, metavar="K", help="also print the best schedule of K full steps")
    cal.add_argument("--base", default="module", help="base of the --budget schedule (module, step, forecast)")
    cal.add_argument("--out", default="calibration.json", help="calibration file to write")
    cal.add_argument("--threshold-map", default=None, metavar="SPEC",
                     help="NAME:T1,T2,... or NAME:LO..HI/COUNT, e.g. teacache:0.05..0.4/8: NFE per threshold over --samples seeds")
    cal.add_argument("--params", default=None, help="other parameters of the --threshold-map policy, e.g. ratios=calibration.json")
    cal.add_argument("--json", action="store_true", help="print the threshold map as JSON")
    cal.set_defaults(fn=cmd_calibrate)

    sv = sub.add_parser("serve", formatter_class=_DefaultsShown, parents=[common],
                        help="serve an artifact (or a local pipeline dir) on Ray Serve: batched, one request = one sampling job")
    sv.add_argument("target", help="artifact directory (cachec compile --out DIR) or diffusers pipeline directory")
    sv.add_argument("--replicas", type=int, default=1, help="replicas (each loads the model once; one per GPU on cuda)")
    sv.add_argument("--max-batch", type=int, default=4, help="requests batched into one trajectory (Ray Serve batching)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP address (default loopback; 0.0.0.0 to listen on all)")
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")
    sv.add_argument("--max-steps", type=int, default=1000, help="largest steps a request may ask for")
    sv.add_argument("--batch-wait-ms", type=float, default=20.0, help="how long a batch waits to fill")
    sv.add_argument("--no-pad", action="store_true",
                    help="run a batch with as many rows as requests instead of --max-batch rows (faster at low load; "
                         "results then depend on the batch size by float rounding)")
    sv.add_argument("--policy", default=None, help="policy for a pipeline directory (default fora:3); artifacts serve "
                                                   "their compiled policy")
    sv.add_argument("--retries", type=int, default=1,
                    help="resend a request whose replica died this many times before answering 503")
    sv.add_argument("--autoscale", default=None, metavar="MIN-MAX", help="autoscale replicas on queue length")
    sv.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves per replica")
    sv.add_argument("--max-body-bytes", type=int, default=None,
                    help="largest request body, else 413 (default: twice the largest valid request, at least 1 MiB; "
                         "16 MiB for a pipeline directory)")
    sv.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                    help="requests waiting per replica; beyond them a request gets 503 with Retry-After")
    sv.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto); default: start a local Ray")
    _trust_options(sv)
    sv.set_defaults(fn=cmd_serve)

    ex = sub.add_parser("example-pipeline", formatter_class=_DefaultsShown, parents=[common],
                        help="write a small local diffusers pipeline (random weights) for `cachec run DIR --prompt`")
    ex.add_argument("kind", choices=["flux", "pixart"], help="pipeline class: FluxPipeline or PixArtAlphaPipeline")
    ex.add_argument("out", help="folder to write (atomically)")
    ex.add_argument("--force", action="store_true", help="replace the folder if it exists")
    ex.set_defaults(fn=cmd_example_pipeline)

    pol = sub.add_parser("policies", formatter_class=_DefaultsShown, parents=[common], help="list every policy with its parameters and defaults")
    pol.set_defaults(fn=cmd_policies)
    return p


def main(argv: list[str] | None = None) -> int:
    from .quiet import install

    logging.basicConfig(level=logging.WARNING, format="[cachec] %(message)s")
    install()  # known-harmless third-party warnings (cachec/quiet.py)
    args = build_parser().parse_args(argv)
    if args.debug:
        logging.getLogger("cachec").setLevel(logging.DEBUG)
    for flag in ("steps", "batch", "seeds", "repeats", "samples"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            print(f"cachec: error: --{flag} must be at least 1; got {value}", file=sys.stderr)
            return 2
    try:
        with terminate_raises():  # SIGTERM unwinds like Ctrl-C, so no partial output stays
            _check_outputs(args)
            return args.fn(args)
    except CachecError as exc:
        if args.debug:
            raise
        print(f"cachec: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        if args.debug:
            raise
        print(f"cachec: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}; "
              "nothing half-written was left", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
