"""``cachec run PIPELINE_DIR --prompt "..."``: a real prompt → image run through a local diffusers pipeline.

The whole pipeline runs twice from the same generator seed: plain, then with ``cachec.enable``
(the denoiser compiled from the pipeline's own first call). Both runs are preceded by a two-step
warm-up at the same shapes, so neither latency includes first-call costs or cachec's compile. The
two images are written side by side with labels (NFE, latency, PSNR/SSIM against the plain image),
and the same numbers are printed. Nothing is downloaded: the directory must hold every component
(``model_index.json``, text encoders, tokenizers, VAE, scheduler, denoiser).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

import torch

from .devices import resolve_device, resolve_dtype
from .errors import CachecError, ModelError
from .progress import library_bars_off_terminal, stage
from .sample_grids import side_by_side


def is_pipeline_dir(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def load_pipeline(path: str | Path, device: torch.device, dtype: torch.dtype):
    import diffusers

    library_bars_off_terminal()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported with the path
        raise ModelError(f"could not load a diffusers pipeline from {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _images(out) -> torch.Tensor:
    """The pipeline's images as a float tensor [N, 3, H, W] in [0, 1] (pipelines return numpy with output_type=np)."""
    import numpy as np

    arr = np.asarray(out.images, dtype=np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).clamp(0, 1)


def _call(pipe, kw: dict, steps: int, seed: int, device: torch.device):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        out = pipe(**kw, num_inference_steps=steps, generator=generator, output_type="np")
    except CachecError:
        raise
    except Exception as exc:  # noqa: BLE001 - the pipeline's own failure, named with its class
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CachecError(f"{type(pipe).__name__} failed on this prompt: {type(exc).__name__}: {first} "
                          "(--debug shows the traceback)") from exc
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _images(out), time.perf_counter() - t0


def run_prompt(args) -> int:
    """The ``cachec run`` path for a pipeline directory and a prompt (argparse namespace from the CLI)."""
    from .metrics import psnr, ssim
    from .pipeline import denoiser_attr, disable, enable
    from .policy import parse_policy

    method = parse_policy(args.policy or "fora:3")
    policy = method.spec
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if not is_pipeline_dir(args.model):
        raise CachecError(f"--prompt needs a local diffusers pipeline directory (with model_index.json); "
                          f"{args.model} is not one")
    stage(f"loading the pipeline from {args.model} ({device}, {dtype})")
    pipe = load_pipeline(args.model, device, dtype)
    kw = {"prompt": args.prompt}
    if "clean_caption" in inspect.signature(pipe.__call__).parameters:
        kw["clean_caption"] = False  # caption cleaning needs optional packages and only rewrites the prompt
    if args.image_size:
        kw["height"] = kw["width"] = args.image_size
    _call(pipe, kw, 2, args.seed, device)  # warm-up at the run's shapes
    ref, ref_s = _call(pipe, kw, args.steps, args.seed, device)
    stage(f"plain pipeline: {ref_s:.3f} s")
    enable(pipe, method)
    try:
        den = getattr(pipe, denoiser_attr(pipe))
        _call(pipe, kw, 2, args.seed, device)  # warm-up: cachec compiles from this call
        img, img_s = _call(pipe, kw, args.steps, args.seed, device)
        runtime = list(den.runtimes.values())[-1]
        stats = {name: runtime.branch_stats(name) for name in runtime.branches}
    finally:
        disable(pipe)
    nfe = {name: s.nfe for name, s in stats.items()}
    report = {
        "pipeline": type(pipe).__name__, "model": str(args.model), "prompt": args.prompt, "policy": policy,
        "steps": args.steps, "seed": args.seed, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "schedule": {name: s.schedule for name, s in stats.items()}, "nfe": {k: round(v, 3) for k, v in nfe.items()},
        "latency_s": round(img_s, 4), "latency_plain_s": round(ref_s, 4), "speedup": round(ref_s / img_s, 3),
        "psnr_vs_plain": round(psnr(img, ref), 3), "ssim_vs_plain": round(ssim(img, ref), 4),
    }
    out = Path(args.out) / f"prompt_{policy.replace(':', '_').replace(',', '_').replace('=', '')}.png"
    nfe_text = ", ".join(f"{k} {v:.2f}" for k, v in report["nfe"].items())
    side_by_side(
        [ref, img],
        [f"plain {report['pipeline']}\n{args.steps} steps, {ref_s:.2f} s",
         f"cachec {policy}: NFE {nfe_text}\n{img_s:.2f} s ({report['speedup']}x), PSNR {report['psnr_vs_plain']} dB, "
         f"SSIM {report['ssim_vs_plain']}"],
        out, f"{args.prompt!r}  ({device}, {report['dtype']}, seed {args.seed})")
    report["image"] = str(out)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"pipeline   {report['pipeline']} from {args.model}  ({device}, {report['dtype']})")
        print(f"prompt     {args.prompt!r}  steps {args.steps}  seed {args.seed}  policy {policy}")
        for name, s in report["schedule"].items():
            print(f"schedule   {name}: {s}  NFE {report['nfe'][name]}")
        print(f"latency    {img_s:.3f} s  (plain: {ref_s:.3f} s, speedup {report['speedup']}x, same run)")
        print(f"fidelity   PSNR {report['psnr_vs_plain']} dB, SSIM {report['ssim_vs_plain']} vs the plain pipeline")
        print(f"image      {out}")
    sys.stdout.flush()
    return 0
