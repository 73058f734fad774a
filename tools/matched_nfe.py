"""Matched-NFE tables: each new cache method next to the best existing one at the same NFE.

    python tools/matched_nfe.py [--targets 10.5,17.5] [--seeds 2] [--batch 10] \
        [--policies abcache,freqca:N=?,...] [--baselines fora,teacache,...] [--json out.json]

Why a tool of its own: a method's fidelity only means something next to other methods *at the
same cost*. For every NFE target this tool tunes one parameter of each policy (written ``KEY=?``;
a bare method name tunes its main value, a hybrid its decision's) until cachec's own NFE count —
``rt.stats.nfe``, the number ``cachec bench`` reports — lands within ±0.5 of the target, then
samples the bundled trained model ``builtin:tiny-dit`` (DDIM, ``--steps``) with it and measures

* PSNR / SSIM of the final images against ``none`` with the same seed (as ``cachec bench``);
* the class accuracy of the samples under the judge of ``tools/eval_tiny_dit.py`` (imported, not
  copied): the fraction the judge puts in the class they were conditioned on. ``cachec``'s
  sampling loop conditions batch item ``i`` on class ``i % 10``.

An integer parameter (an interval ``N``) moves the NFE in steps of several units, so after it the
``warmup`` is tuned too (each extra warm-up step adds about ``1 - 1/N``). The search probes a
static schedule on one sample (its NFE does not depend on the inputs) and a dynamic one on every
seed of the tables (its mean NFE is what the row reports). A row whose NFE still misses the target
by more than 0.5 (an interval too coarse, a floor of the method above the target) is marked and
not compared.

The policy lists are built from the registry, so methods added later are covered without an edit:
``--policies`` defaults to every registered method that is not in :data:`EXISTING` plus hybrids
(``fbcache`` with each new forecaster, and the peers' ``fbcache``/``dbcache`` + TaylorSeer-1).
A policy that cannot run here (it needs a calibration file, it does not apply to a DiT, its NFE
cannot reach the band) is listed with the reason instead of stopping the run.

Finally each tuned policy runs on the tiny random-weight FLUX and Wan models of the tests
(``tests/small_models.py``, the tests' trajectory rule ``x <- x - out/T``) and its schedule (F/R
per step) and NFE there are printed: random weights say nothing about quality, only about where a
policy puts its full steps on those architectures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # eval_tiny_dit (the judge)
sys.path.insert(0, str(ROOT / "tests"))  # small_models, trajectories (tiny FLUX / Wan)

import torch  # noqa: E402

from cachec.errors import CachecError  # noqa: E402
from cachec.methods import METHODS  # noqa: E402
from cachec.policy import parse_policy  # noqa: E402

# the methods cachec had before issue 24 (the "existing" side of every comparison)
EXISTING = ("none", "static", "fora", "delta", "fbcache", "teacache", "taylorseer", "hicache", "foca", "magcache",
            "easycache", "dbcache", "blockcache", "budget", "toca", "duca", "tgate", "pab", "deepcache", "fastercache")
# the strongest existing methods at NFE 10-20 on the tiny DiT that need no calibration data (docs/benchmarks.md,
# issue 4's table: FBCache and EasyCache sit 10-20 dB below these there, and the attention-only PAB / T-GATE /
# FasterCache cannot get below NFE 37); one dynamic method (TeaCache) among them. Add others with --baselines.
BASELINES = ("fora", "taylorseer", "hicache", "foca", "budget:nfe=?,base=forecast", "teacache")
TOLERANCE = 0.5  # NFE units: the match the tables require
MAX_PROBES = 12  # per policy and target


def default_policies(calib: str | None = None) -> list[str]:
    """Every registered method not in :data:`EXISTING`, plus the hybrids the issue names. With
    ``calib`` (a ``cachec calibrate`` file), a method that reads one (a ``calib`` parameter:
    OmniCache, HyCa) is given it; without, it is listed and shown refused."""
    from cachec.methods.hybrid import forecasters

    def spec(name: str) -> str:
        takes_calib = any(p.name == "calib" for p in METHODS[name].all_params())
        return f"{name}:calib={calib}" if calib and takes_calib else name

    new = [spec(name) for name in METHODS if name not in EXISTING]
    hybrids = ["fbcache+taylorseer:O=1", "dbcache:t=?+taylorseer:O=1"]
    hybrids += [f"fbcache+{f}" for f in forecasters() if f not in EXISTING]
    return new + hybrids


# --------------------------------------------------------------------------------------------
# templates: a spec with one parameter left open


@dataclass(frozen=True)
class Template:
    """A policy spec with one parameter written ``KEY=?`` (or none: a fixed spec)."""

    text: str
    key: str | None
    kind: type | None = None
    lo: float | None = None
    hi: float | None = None
    default: object = None

    def spec(self, value) -> str:
        return self.text.replace(f"{self.key}=?", f"{self.key}={value}") if self.key else self.text


def template(text: str) -> Template:
    """Parse ``text``: ``KEY=?`` marks the tuned parameter; a part without a main value gets ``MAIN=?``."""
    parts = text.split("+")
    if "=?" not in text:
        name, _, args = parts[0].partition(":")
        cls = METHODS.get(name)
        first = args.split(",")[0] if args else ""
        if cls is not None and cls.main and (not first or "=" in first):  # no bare main value given
            parts[0] = f"{name}:{cls.main}=?" + (f",{args}" if args else "")
        else:
            parse_policy(text)  # a fixed spec: refuse a bad one now
            return Template(text, None)
    text = "+".join(parts)
    for part in parts:
        m = re.search(r"(\w+)=\?", part)
        if m:
            cls = METHODS.get(part.partition(":")[0])
            if cls is None:
                raise CachecError(f"{text}: unknown method {part.partition(':')[0]!r}; known: {', '.join(METHODS)}")
            params = {p.name: p for p in cls.all_params()}
            p = params.get(m.group(1))
            if p is None or p.kind not in (int, float):
                raise CachecError(f"{text}: {m.group(1)}=? must name a numeric parameter of {cls.name} "
                                  f"({', '.join(n for n, q in params.items() if q.kind in (int, float))})")
            return Template(text, p.name, p.kind, p.lo, p.hi, p.default)
    raise AssertionError(text)


# --------------------------------------------------------------------------------------------
# the bundled DiT: trajectories, NFE, fidelity, class accuracy


@dataclass
class Row:
    policy: str  # the template as given
    spec: str = ""  # the tuned spec
    side: str = "new"  # new | existing
    target: float | None = None
    nfe: float = math.nan
    full_steps: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    accuracy: float = math.nan
    schedule: str = ""  # seed 0
    note: str = ""  # why a row is not compared (off target, refused)
    schedules: dict = field(default_factory=dict)  # other models: name -> (NFE, schedule)

    @property
    def matched(self) -> bool:
        return not self.note and abs(self.nfe - self.target) <= TOLERANCE


class TinyDit:
    """``builtin:tiny-dit`` opened once; trajectories cached by (spec, seed, batch)."""

    def __init__(self, steps: int, seeds: int, batch: int, judge):
        from cachec.session import open_model

        self.steps, self.seeds, self.batch, self.judge = steps, list(range(seeds)), batch, judge
        self.session = open_model("builtin:tiny-dit", batch)
        self.programs: dict[str, list] = {}  # method name -> programs planned so far
        self.runs: dict[tuple[str, int], tuple] = {}
        self.labels = torch.arange(batch) % self.session.bundle.config["num_embeds_ada_norm"]

    def runtime(self, spec: str):
        """A runtime of ``spec``, on a program planned before for the same method when its variants fit."""
        method = parse_policy(spec)
        for program in self.programs.get(method.name, []):
            try:
                return self.session.runtime(method, steps=self.steps, program=program)
            except CachecError:
                continue  # other plan key (its variants differ): plan this one
        program = self.session.plan(method)[0]
        self.programs.setdefault(method.name, []).append(program)
        return self.session.runtime(method, steps=self.steps, program=program)

    def run(self, spec: str, seed: int, batch: int | None = None):
        """(final sample, trajectory stats) of ``spec`` at ``seed`` (and ``batch``, default the tables')."""
        from cachec.sampling import sample

        batch = batch or self.batch
        if (spec, seed, batch) not in self.runs:
            rt = self.runtime(spec)
            with torch.no_grad():
                traj = sample(rt, self.session.bundle, self.steps, seed, batch)
            self.runs[spec, seed, batch] = (traj.sample, rt.stats)
        return self.runs[spec, seed, batch]

    def probe(self, spec: str) -> float:
        """The NFE the search steers by. A static schedule's does not depend on the inputs, so it is
        probed on one sample; a dynamic one is the mean over the tables' seeds and batch (the number
        the row reports, so the match holds for it; these runs are the row's own, kept)."""
        if not parse_policy(spec).dynamic:
            return self.run(spec, 0, 1)[1].nfe
        return statistics.fmean(self.run(spec, seed)[1].nfe for seed in self.seeds)

    def measure(self, row: Row) -> Row:
        """Fill ``row``'s NFE, fidelity and class accuracy over every seed."""
        from cachec.metrics import psnr, ssim, to_unit

        nfes, fulls, psnrs, ssims, hits = [], [], [], [], 0
        for seed in self.seeds:
            x, stats = self.run(row.spec, seed)
            ref = self.run("none", seed)[0]
            nfes.append(stats.nfe)
            fulls.append(len(stats.full_steps))
            psnrs.append(psnr(to_unit(x, True), to_unit(ref, True)))
            ssims.append(ssim(to_unit(x, True), to_unit(ref, True)))
            hits += int((self.judge.predict(x.clamp(-1, 1)) == self.labels).sum())
        row.nfe, row.full_steps = statistics.fmean(nfes), statistics.fmean(fulls)
        row.psnr = statistics.fmean(psnrs) if all(map(math.isfinite, psnrs)) else math.inf
        row.ssim = statistics.fmean(ssims)
        row.accuracy = hits / (len(self.seeds) * self.batch)
        row.schedule = self.run(row.spec, 0)[1].schedule
        return row


# --------------------------------------------------------------------------------------------
# the search


def monotone_search(nfe_at, lo, hi, start, target: float, integer: bool) -> tuple[object, float]:
    """The value in [lo, hi] whose NFE is closest to ``target``, for an NFE monotone in the value.

    The direction is read from the probes. Floats move on a log scale (thresholds span decades);
    the bracket is found by stepping ×4 (ints ×2) from ``start``, then halved. Returns (value, NFE).
    """
    seen: dict = {}

    def probe(v):
        v = int(round(v)) if integer else float(f"{v:.4g}")
        v = min(max(v, lo), hi)
        if v not in seen:
            seen[v] = nfe_at(v)
        return v, seen[v]

    def best():
        return min(seen.items(), key=lambda kv: abs(kv[1] - target))

    v, n = probe(start)
    lo_f = lo if integer else max(lo, 1e-6)
    step = 2.0 if integer else 4.0
    # direction: does the NFE fall as the value grows? probe one step up to see
    up, n_up = probe(v * step if v else (1 if integer else 1e-3))
    falling = n_up <= n if n_up != n else True
    while len(seen) < MAX_PROBES:
        vals = sorted(seen)
        below = [u for u in vals if (seen[u] <= target) == falling]  # values on the far side of the target
        above = [u for u in vals if (seen[u] > target) == falling]
        if abs(best()[1] - target) <= TOLERANCE / 2:
            break
        if above and below and min(below) > max(above):
            a, b = max(above), min(below)
            if (integer and b - a <= 1) or (not integer and b / a < 1.01):
                break
            probe((a + b) / 2 if integer else math.sqrt(a * b))
        elif not below:  # everything short of the target so far: go further
            nxt = max(vals) * step
            if max(vals) >= hi:
                break
            probe(nxt)
        else:
            nxt = min(vals) / step
            if min(vals) <= lo_f:
                break
            probe(max(nxt, lo_f))
    return best()


def tune(dit: TinyDit, tpl: Template, target: float) -> str:
    """The spec of ``tpl`` tuned so its seed-0 NFE is closest to ``target`` (warm-up tuned after an int)."""
    if tpl.key is None:
        return tpl.text
    hi = tpl.hi if tpl.hi is not None and math.isfinite(tpl.hi) else (1000 if tpl.kind is int else 100.0)
    hi = min(hi, 4 * dit.steps) if tpl.kind is int else hi
    lo = tpl.lo if tpl.lo is not None else 0
    start = tpl.default if tpl.default else (1 if tpl.kind is int else 0.1)
    value, nfe = monotone_search(lambda v: dit.probe(tpl.spec(v)), lo, hi, start, target, tpl.kind is int)
    spec = tpl.spec(value)
    if tpl.kind is int and abs(nfe - target) > TOLERANCE / 2 and "warmup=" not in tpl.text:
        # the interval moves the NFE by whole steps; the warm-up fills in between
        sep = "," if ":" in spec.split("+")[0] else ":"
        head, plus, rest = spec.partition("+")
        warm = Template(f"{head}{sep}warmup=?{plus}{rest}", "warmup", int, 0, dit.steps - 2, None)
        w, n = monotone_search(lambda v: dit.probe(warm.spec(v)), 0, dit.steps - 2,
                               parse_policy(spec).params.warmup or 1, target, True)
        if abs(n - target) < abs(nfe - target):
            spec = warm.spec(w)
    return parse_policy(spec).spec  # normalised (what cachec prints)


def band_rows(dit: TinyDit, policies: list[str], baselines: list[str], target: float, say) -> list[Row]:
    rows = []
    for side, texts in (("existing", baselines), ("new", policies)):
        for text in texts:
            row = Row(text, side=side, target=target)
            try:
                row.spec = tune(dit, template(text), target)
                dit.measure(row)
                if abs(row.nfe - target) > TOLERANCE:
                    row.note = f"NFE {row.nfe:.2f} is not within ±{TOLERANCE} of {target}"
            except CachecError as exc:
                row.note = f"refused: {str(exc).splitlines()[0]}"
            say(f"NFE {target}: {row.spec or text}: NFE {row.nfe:.2f} PSNR {row.psnr:.2f} acc {row.accuracy:.3f}"
                + (f" ({row.note})" if row.note else ""))
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# schedules on the tiny FLUX and Wan models


def other_model_schedules(rows: list[Row], steps: int, models=("flux", "wan")) -> None:
    """Each tuned spec's (NFE, schedule) on each random-weight model, into ``row.schedules``."""
    from trajectories import Driver

    from cachec.capture import capture
    from cachec.planner import compile_program
    from cachec.runtime import CacheRuntime, signature_of

    driver = Driver(steps, batch=2)
    for short in models:
        model, kw = driver.model_and_inputs(short)
        captured = capture(model, kw)
        for row in rows:
            if not row.spec or row.note.startswith("refused"):
                continue
            try:
                method = parse_policy(row.spec)
                rt = CacheRuntime(compile_program(captured.copy(), method), method, num_steps=steps,
                                  signature=signature_of(model))
                with torch.no_grad():
                    driver.run(rt, short)
                row.schedules[short] = (round(rt.stats.nfe, 2), rt.stats.schedule)
            except CachecError as exc:
                row.schedules[short] = (None, f"refused: {str(exc).splitlines()[0]}")


# --------------------------------------------------------------------------------------------
# output


def _num(v: float, fmt: str) -> str:
    return "∞" if v == math.inf else ("–" if math.isnan(v) else format(v, fmt))


def band_table(rows: list[Row], none: Row) -> str:
    """One markdown table for all bands: existing rows first, the best matched existing row in bold,
    each new row with its PSNR difference to that best."""
    lines = ["| NFE target | side | policy (tuned) | full steps | NFE | PSNR dB | SSIM | class acc | ΔPSNR vs best existing |",
             "| --- | --- | --- | --: | --: | --: | --: | --: | --: |",
             f"| {none.nfe:g} | reference | `none` | {none.full_steps:g} | {none.nfe:.2f} | ∞ | 1.0000 | "
             f"{none.accuracy:.3f} | |"]
    for target in sorted({r.target for r in rows}):
        band = [r for r in rows if r.target == target]
        matched = [r for r in band if r.side == "existing" and r.matched]
        best = max(matched, key=lambda r: r.psnr) if matched else None
        for r in band:
            name = f"`{r.spec or r.policy}`"
            if r is best:
                name = f"**{name}** (best existing)"
            delta = f"{r.psnr - best.psnr:+.2f}" if (best and r.side == "new" and r.matched) else ""
            if r.note:
                delta = r.note
            lines.append(f"| {target:g} | {r.side} | {name} | {_num(r.full_steps, 'g')} | {_num(r.nfe, '.2f')} | "
                         f"{_num(r.psnr, '.2f')} | {_num(r.ssim, '.4f')} | {_num(r.accuracy, '.3f')} | {delta} |")
    return "\n".join(lines)


def schedule_table(rows: list[Row], models=("flux", "wan")) -> str:
    lines = ["| policy (tuned on the tiny DiT) | " + " | ".join(f"{m} NFE | {m} schedule" for m in models) + " |",
             "| --- | " + " | ".join("--: | ---" for _ in models) + " |"]
    done = set()
    for r in rows:
        if not r.schedules or r.spec in done:
            continue
        done.add(r.spec)
        cells = []
        for m in models:
            nfe, sched = r.schedules.get(m, (None, ""))
            cells += ["–" if nfe is None else f"{nfe:.2f}", f"`{sched}`" if nfe is not None else sched]
        lines.append(f"| `{r.spec}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def split_list(text: str | None, default) -> list[str]:
    """``a,b:1,x=2,c`` -> specs (a piece with ``=`` before any ``:`` continues the previous one)."""
    if text is None:
        return list(default)
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",") if p.strip()):
        if out and ("=" in piece.split(":", 1)[0].split("+")[0] or re.fullmatch(r"[\d.?]+", piece)):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", help="new policies (default: every registered method not in EXISTING, plus hybrids)")
    ap.add_argument("--baselines", help=f"existing policies (default: {','.join(BASELINES)})")
    ap.add_argument("--targets", default="10.5,17.5", help="NFE targets, one band each")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=10, help="samples per seed (item i is conditioned on class i %% 10)")
    ap.add_argument("--schedules-on", default="flux,wan", help="tiny random-weight models for the schedule table ('' none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib", help="a `cachec calibrate builtin:tiny-dit --steps STEPS` file for the default "
                    "policies that read one (OmniCache, HyCa)")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()

    from eval_tiny_dit import fit_judge

    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def say(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    try:
        policies = split_list(args.policies, default_policies(args.calib))
        baselines = split_list(args.baselines, BASELINES)
        for text in policies + baselines:
            template(text)  # a bad spec fails here, before the slow part
        targets = [float(t) for t in args.targets.split(",")]
    except (CachecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say("fitting the judge (tools/eval_tiny_dit.py)")
    judge = fit_judge(16)
    dit = TinyDit(args.steps, args.seeds, args.batch, judge)
    none = dit.measure(Row("none", "none", "reference", float(args.steps)))
    rows = [r for t in targets for r in band_rows(dit, policies, baselines, t, say)]
    models = tuple(m for m in args.schedules_on.split(",") if m)
    if models:
        say(f"schedules on {', '.join(models)}")
        other_model_schedules(rows, args.steps, models)
    print(f"builtin:tiny-dit, DDIM-{args.steps}, eager, batch {args.batch} x seeds {args.seeds} "
          f"= {args.batch * args.seeds} samples per policy ({args.batch * args.seeds // 10} per class); "
          f"judge accuracy on real images {judge.real_accuracy:.3f}\n")
    print(band_table(rows, none))
    if models:
        print()
        print(schedule_table(rows, models))
    say("done")
    if args.json:
        Path(args.json).write_text(json.dumps({"none": asdict(none), "rows": [asdict(r) for r in rows],
                                               "args": vars(args)}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
