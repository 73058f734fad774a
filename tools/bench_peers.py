"""Peers side by side: diffusers' cache hooks and cache-dit against cachec on the same model.

Why a tool and not part of the package: the peers are other projects (diffusers' ``hooks``,
``cache-dit``); cachec must not depend on them. This script runs each peer and cachec's
implementation of the same method on ``builtin:tiny-dit`` with the same seeds, step count and
batch, and reports, per method, the schedule (which steps ran the full network), fidelity to the
uncached output of the same seed, and latency, all in one process with the trajectories
interleaved round-robin (the machine may be shared, so medians over repeats and min/max).

Baselines: a peer is compared with the plain diffusers model (``none (diffusers)``), a cachec row
with cachec's ``none`` on the eager backend (``none (cachec)``); the two references agree to
float rounding (printed). A step is *full* when the last block's ``attn1.to_q`` ran: a
forward hook on that Linear, which no cache method here can skip without skipping the block's
attention. Pairs (same method in two implementations):

* First-Block Cache: diffusers ``FirstBlockCacheConfig(t)``, cache-dit ``DBCacheConfig(F1B0, t)``
  vs cachec ``fbcache:t``.
* FORA = TaylorSeer of order 0 on every block's ``attn1`` and ``ff`` (the prediction of order 0 is
  the last computed output): diffusers ``TaylorSeerCacheConfig(max_order=0, interval N,
  disable_cache_before_step=1, fp32 factors)`` vs cachec ``fora:N``.

Peer-only rows (no cachec counterpart yet): TaylorSeer order 1, Pyramid Attention Broadcast,
MagCache (ratios calibrated on this model first). FasterCache is tried and its error reported.

cache-dit needs ``transformers``; install it in a separate environment that sees cachec::

    python -m venv --system-site-packages .venv-peers && .venv-peers/bin/pip install cache-dit==1.5.3
    .venv-peers/bin/python tools/bench_peers.py --steps 20 --seeds 2 --batch 2 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from cachec.metrics import psnr, ssim, to_unit
from cachec.models import resolve
from cachec.sampling import sample

MODEL = "builtin:tiny-dit"


@dataclass
class Method:
    """One row: a denoiser, how to start a new trajectory, how to read the schedule it took."""

    name: str
    impl: str
    reference: str  # the row this one's fidelity and speedup are measured against
    denoiser: object
    reset: object
    schedule: object  # () -> "FRR…" of the last trajectory
    pair: str | None = None  # method key shared by the rows that implement the same method
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    samples: dict[int, torch.Tensor] = field(default_factory=dict)
    schedules: dict[int, str] = field(default_factory=dict)
    nfe: dict[int, float] = field(default_factory=dict)


class StepProbe:
    """Records, per denoiser call, whether the last block's ``attn1.to_q`` ran (a full step)."""

    def __init__(self, model):
        self.ran = 0
        self.letters: list[str] = []
        model.transformer_blocks[-1].attn1.to_q.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.ran += 1

    def wrap(self, fn):
        def call(*args, **kwargs):
            before = self.ran
            out = fn(*args, **kwargs)
            self.letters.append("F" if self.ran > before else "R")
            return out

        return call

    def reset(self):
        self.letters = []

    def schedule(self):
        return "".join(self.letters)


def _fresh_model():
    bundle = resolve(MODEL)
    return bundle, bundle.model


def plain(name="none (diffusers)"):
    bundle, model = _fresh_model()
    probe = StepProbe(model)
    return Method(name, "diffusers", name, probe.wrap(model), probe.reset, probe.schedule), bundle


def diffusers_hook(name, apply, config, reference, pair=None, note=""):
    """A diffusers cache hook applied with ``apply_*`` on a fresh model.

    ``DiTTransformer2DModel`` is not a ``CacheMixin``, so ``model.enable_cache`` does not exist;
    the ``apply_*`` functions work on any module, and ``CacheMixin.cache_context`` (which only sets
    the hooks' state context) is borrowed for the denoiser call, as a pipeline would do.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.models.cache_utils import CacheMixin

    bundle, model = _fresh_model()
    state = {"t": None}
    cfg = config(lambda: int(state["t"].reshape(-1)[0]))
    apply(model, cfg)
    probe = StepProbe(model)

    def call(*args, **kwargs):
        state["t"] = kwargs["timestep"]
        with CacheMixin.cache_context(model, "cond"):
            return model(*args, **kwargs)

    def reset():
        HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()
        probe.reset()

    return Method(name, "diffusers", reference, probe.wrap(call), reset, probe.schedule, pair, note)


def cache_dit_fbcache(threshold, steps, reference):
    """cache-dit's DBCache with F1B0 (= First-Block Cache) through a ``BlockAdapter``.

    Shim: cache-dit swaps ``transformer_blocks`` for a one-element list of its ``CachedBlocks``
    during the forward, but ``DiTTransformer2DModel.forward`` reads
    ``self.transformer_blocks[0].norm1.emb`` *after* the loop (the final layer's conditioning), so
    the stock integration fails with ``AttributeError: 'CachedBlocks_Pattern_3_4_5' object has no
    attribute 'norm1'``; the shim gives the wrapper block 0's ``norm1`` (same module, no numeric
    change).
    """
    import cache_dit
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

    bundle, model = _fresh_model()
    norm1 = model.transformer_blocks[0].norm1
    with contextlib.redirect_stdout(io.StringIO()):
        cache_dit.enable_cache(
            BlockAdapter(transformer=model, blocks=model.transformer_blocks, forward_pattern=ForwardPattern.Pattern_3),
            cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                       max_warmup_steps=1, warmup_interval=1, num_inference_steps=steps))
    for obj in gc.get_objects():
        if type(obj).__name__.startswith("CachedBlocks") and isinstance(obj, torch.nn.Module) and not hasattr(obj, "norm1"):
            obj.norm1 = norm1
    probe = StepProbe(model)

    def reset():
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.refresh_context(model, num_inference_steps=steps)
        probe.reset()

    return Method(f"cache-dit DBCache F1B0 t={threshold}", "cache-dit", reference, probe.wrap(model), reset,
                  probe.schedule, pair=f"fbcache:{threshold}",
                  note="needs a shim: DiT reads transformer_blocks[0].norm1 after the block loop"), bundle


_MAKE = {}


def cachec_method(spec, steps, batch, reference="none (cachec)"):
    """cachec's runtime on the eager backend; one export of the model is shared by every policy."""
    from cachec.policy import parse_policy
    from cachec.session import open_model

    if batch not in _MAKE:
        _MAKE[batch] = open_model(MODEL, batch)
    rt = _MAKE[batch].runtime(parse_policy(spec), backend="eager", steps=steps)
    name = "none (cachec)" if spec == "none" else f"cachec {spec}"
    m = Method(name, "cachec", reference if spec != "none" else name, rt, lambda: rt.reset(steps),
               lambda: rt.stats.schedule, pair=None if spec == "none" else spec)
    m.runtime = rt
    return m


def magcache_ratios(steps, batch):
    """Run diffusers' MagCache calibration once (seed 0) and parse the ratios it prints."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    m = diffusers_hook("calib", apply_mag_cache, lambda _t: MagCacheConfig(num_inference_steps=steps, calibrate=True),
                       "none (diffusers)")
    bundle = resolve(MODEL)
    buf = io.StringIO()
    m.reset()
    with contextlib.redirect_stdout(buf):
        sample(m.denoiser, bundle, steps, 0, batch)
    found = re.findall(r"\[([-0-9.eE, ]+)\]", buf.getvalue())
    if not found:
        raise RuntimeError(f"MagCache calibration printed no ratios: {buf.getvalue()!r}")
    return [float(v) for v in found[-1].split(",")]


def build(args):
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
        apply_faster_cache,
        apply_first_block_cache,
        apply_mag_cache,
        apply_pyramid_attention_broadcast,
        apply_taylorseer_cache,
    )

    steps, batch = args.steps, args.batch
    t, n = args.fbcache, args.fora
    methods, failures = [], []
    ref_d, bundle = plain()
    methods.append(ref_d)
    methods.append(cachec_method("none", steps, batch))

    def attempt(label, factory):
        try:
            methods.append(factory())
        except Exception as exc:  # a peer that does not run on this model is a result, not a crash
            failures.append({"method": label, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})

    fora_ids = [r"transformer_blocks\.\d+\.(attn1|ff)"]
    attempt(f"diffusers FirstBlockCache t={t}", lambda: diffusers_hook(
        f"diffusers FirstBlockCache t={t}", apply_first_block_cache, lambda _t: FirstBlockCacheConfig(threshold=t),
        ref_d.name, pair=f"fbcache:{t}"))
    try:
        import cache_dit  # noqa: F401
    except ImportError as exc:
        failures.append({"method": "cache-dit", "error": f"not importable here ({exc}); see the module docstring"})
    else:
        attempt(f"cache-dit DBCache F1B0 t={t}", lambda: cache_dit_fbcache(t, steps, ref_d.name)[0])
    methods.append(cachec_method(f"fbcache:{t}", steps, batch))
    attempt(f"diffusers TaylorSeer order 0 N={n}", lambda: diffusers_hook(
        f"diffusers TaylorSeer order 0 N={n}", apply_taylorseer_cache,
        lambda _t: TaylorSeerCacheConfig(cache_interval=n, disable_cache_before_step=1, max_order=0,
                                         taylor_factors_dtype=torch.float32, cache_identifiers=fora_ids),
        ref_d.name, pair=f"fora:{n}",
        note="default cache_identifiers ('^transformer_blocks.*attn', fullmatch) match no DiT module (attn1): "
             "without explicit identifiers nothing is cached"))
    methods.append(cachec_method(f"fora:{n}", steps, batch))
    # peer-only rows
    attempt(f"diffusers TaylorSeer order 1 N={n}", lambda: diffusers_hook(
        f"diffusers TaylorSeer order 1 N={n}", apply_taylorseer_cache,
        lambda _t: TaylorSeerCacheConfig(cache_interval=n, disable_cache_before_step=1, max_order=1,
                                         taylor_factors_dtype=torch.float32, cache_identifiers=fora_ids),
        ref_d.name, note="no cachec counterpart yet (taylorseer is planned)"))
    attempt("diffusers PyramidAttentionBroadcast skip=2", lambda: diffusers_hook(
        "diffusers PyramidAttentionBroadcast skip=2", apply_pyramid_attention_broadcast,
        lambda cb: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                   spatial_attention_timestep_skip_range=(-1, 1001),
                                                   current_timestep_callback=cb),
        ref_d.name, note="attention only (feed-forward runs every step): 'R' = attention reused"))

    def mag():
        ratios = magcache_ratios(steps, batch)
        return diffusers_hook(
            "diffusers MagCache t=0.06", apply_mag_cache,
            lambda _t: MagCacheConfig(threshold=0.06, num_inference_steps=steps, mag_ratios=ratios),
            ref_d.name, note="mag_ratios calibrated on this model, seed 0")

    attempt("diffusers MagCache t=0.06", mag)
    attempt("diffusers FasterCache", lambda: _try_run(diffusers_hook(
        "diffusers FasterCache", apply_faster_cache,
        lambda cb: FasterCacheConfig(spatial_attention_block_skip_range=2,
                                     spatial_attention_timestep_skip_range=(-1, 1001), current_timestep_callback=cb),
        ref_d.name), bundle, steps, batch))
    return methods, failures, bundle


def _try_run(method, bundle, steps, batch):
    method.reset()
    with contextlib.redirect_stdout(io.StringIO()):
        sample(method.denoiser, bundle, min(2, steps), 0, batch)
    return method


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    methods, failures, bundle = build(args)
    by_name = {m.name: m for m in methods}
    for m in methods:  # warm-up, untimed
        m.reset()
        with contextlib.redirect_stdout(io.StringIO()):
            sample(m.denoiser, bundle, min(2, args.steps), 0, args.batch)
    for rep in range(args.repeats):
        for seed in range(args.seeds):
            for m in methods:
                m.reset()
                with contextlib.redirect_stdout(io.StringIO()):
                    traj = sample(m.denoiser, bundle, args.steps, seed, args.batch)
                m.seconds.append(traj.seconds)
                if rep == 0:
                    m.samples[seed] = traj.sample
                    m.schedules[seed] = m.schedule()
                    if hasattr(m, "runtime"):
                        m.nfe[seed] = m.runtime.stats.nfe
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    rows = []
    for m in methods:
        ref = by_name[m.reference]
        ps, ss = [], []
        for seed in range(args.seeds):
            a, b = to_unit(m.samples[seed], True), to_unit(ref.samples[seed], True)
            ps.append(psnr(a, b))
            ss.append(ssim(a, b))
        p = statistics.fmean(ps) if all(math.isfinite(v) for v in ps) else None
        rows.append({
            "method": m.name, "impl": m.impl, "pair": m.pair, "reference": m.reference,
            "schedule_seed0": m.schedules[0],
            "full_steps": statistics.fmean(s.count("F") for s in m.schedules.values()),
            "nfe": statistics.fmean(m.nfe.values()) if m.nfe else None,
            "latency_s": {"median": statistics.median(m.seconds), "min": min(m.seconds), "max": max(m.seconds)},
            "speedup_vs_reference": statistics.median(ref.seconds) / statistics.median(m.seconds),
            "psnr_vs_reference": p, "ssim_vs_reference": statistics.fmean(ss), "note": m.note,
        })
    refs = [to_unit(by_name["none (cachec)"].samples[s], True) for s in range(args.seeds)]
    plains = [to_unit(by_name["none (diffusers)"].samples[s], True) for s in range(args.seeds)]
    ref_psnr = statistics.fmean(psnr(a, b) for a, b in zip(refs, plains, strict=True))
    pairs = {}
    for r in rows:
        if r["pair"]:
            pairs.setdefault(r["pair"], []).append(r)
    agreement = {}
    for v in pairs.values():
        c = [r for r in v if r["impl"] == "cachec"]
        for r in v:
            if c and r is not c[0]:
                a, b = by_name[c[0]["method"]], by_name[r["method"]]
                diffs = [(a.samples[s] - b.samples[s]).abs().max().item() for s in range(args.seeds)]
                pv = [psnr(to_unit(a.samples[s], True), to_unit(b.samples[s], True)) for s in range(args.seeds)]
                agreement[f"{c[0]['method']} vs {r['method']}"] = {
                    "max_abs_diff": max(diffs), "psnr": statistics.fmean(pv) if all(map(math.isfinite, pv)) else None}
    same = {k: all(len({by_name[r["method"]].schedules[s] for r in v}) == 1 for s in range(args.seeds))
            for k, v in pairs.items()}
    return {
        "model": MODEL, "steps": args.steps, "seeds": list(range(args.seeds)), "batch": args.batch,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "none_cachec_vs_none_diffusers_psnr": ref_psnr if math.isfinite(ref_psnr) else None,
        "rows": rows, "same_schedule_per_pair": same, "cachec_vs_peer_samples": agreement, "failures": failures,
    }


def markdown(report: dict) -> str:
    out = ["| method | implementation | full steps | schedule (seed 0) | NFE | PSNR dB | SSIM | latency s median [min–max] | speedup vs its none |",
           "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lat = r["latency_s"]
        nfe = "" if r["nfe"] is None else f"{r['nfe']:.2f}"
        ps = "∞" if r["psnr_vs_reference"] is None else f"{r['psnr_vs_reference']:.2f}"
        out.append(
            f"| {r['method']} | {r['impl']} | {r['full_steps']:g} | `{r['schedule_seed0']}` | {nfe} | {ps} | "
            f"{r['ssim_vs_reference']:.4f} | {lat['median']:.3f} [{lat['min']:.3f}–{lat['max']:.3f}] | "
            f"{r['speedup_vs_reference']:.2f}× |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids stalls on a shared 2-core CPU)")
    p.add_argument("--fbcache", type=float, default=0.05, help="First-Block Cache threshold for every implementation")
    p.add_argument("--fora", type=int, default=2, help="FORA / TaylorSeer interval")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    start = time.perf_counter()
    report = run(args)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    print(markdown(report))
    print(f"\nnone (cachec) vs none (diffusers): PSNR {report['none_cachec_vs_none_diffusers_psnr']} dB "
          "(inf/None = identical)")
    print("same schedule within each pair (every seed): " + json.dumps(report["same_schedule_per_pair"]))
    for k, v in report["cachec_vs_peer_samples"].items():
        print(f"{k}: final samples max |diff| {v['max_abs_diff']:.2e}, PSNR {v['psnr']}")
    for f in report["failures"]:
        print(f"FAILED {f['method']}: {f['error']}")
    for r in report["rows"]:
        if r["note"]:
            print(f"note {r['method']}: {r['note']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
