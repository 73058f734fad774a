"""Rerun the README's quick start N times and hold every printed speedup to the README's figure.

    python tools/quickstart_repeat.py                 # 5 runs, ±15 % of the fora:3 row's measured speedup
    python tools/quickstart_repeat.py --runs 3 --threads 1

The check of issue 25 ("every printed speedup within ±15 % of the README's figure", on an idle
machine): it compiles the quick start's artifact if it is missing (the quick start's own compile
command), then runs ``cachec run tiny-fora3 --steps 50`` (``--json``) ``--runs`` times, one after
the other, and prints each run's speedup, its spread over the run's interleaved repeats, and
whether it lies within the tolerance of the README's measured-speedup figure for ``fora:3``
(read from the README's table, a range such as ``1.60–1.63×``). Exit code 1 when any run misses.

A benchmark, not a test: its result depends on the machine. Run it on an idle one; each run
prints the load average it started at, and ``cachec run`` itself says when the machine was busy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*`fora:3`\s*\|(?P<cells>.*)\|\s*$")
FIGURE = re.compile(r"^\s*(?P<lo>\d+(?:\.\d+)?)(?:\s*[–-]\s*(?P<hi>\d+(?:\.\d+)?))?\s*×\s*$")


def readme_figure(readme: Path) -> tuple[float, float]:
    """The fora:3 row's measured speedup in the README's table of the bundled model: (low, high)."""
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in match["cells"].split("|")]
        # columns after the policy: full steps, NFE, NFE speedup, measured speedup, PSNR, SSIM
        if len(cells) >= 4:
            figure = FIGURE.match(cells[3])
            if figure:
                lo = float(figure["lo"])
                return lo, float(figure["hi"] or lo)
    raise SystemExit(f"no `fora:3` row with a measured speedup (e.g. 1.60–1.63×) in {readme}")


def cachec(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cachec.cli", *args], cwd=ROOT, env=env, check=True,
                          stdout=subprocess.PIPE if capture else None, text=True)


def within(value: float, lo: float, hi: float, tolerance: float) -> bool:
    return lo * (1 - tolerance) <= value <= hi * (1 + tolerance)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="quick-start runs (default 5)")
    ap.add_argument("--tolerance", type=float, default=0.15, help="allowed relative distance (default 0.15)")
    ap.add_argument("--artifact", default="tiny-fora3", help="the quick start's artifact (compiled if missing)")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--threads", type=int, default=None, help="passed to cachec run (default: torch's)")
    ap.add_argument("--repeats", type=int, default=None, help="passed to cachec run (default: cachec run's)")
    args = ap.parse_args(argv)

    lo, hi = readme_figure(Path(args.readme))
    figure = f"{lo:.2f}–{hi:.2f}x" if hi != lo else f"{lo:.2f}x"
    artifact = Path(args.artifact)
    artifact = artifact if artifact.is_absolute() else ROOT / artifact  # the quick start runs from the root
    if not (artifact / "manifest.json").exists():
        print(f"compiling the quick start's artifact {artifact}", flush=True)
        cachec("compile", "builtin:tiny-dit", "--policy", "fora:3", "--out", str(artifact), "--force")
    extra = [*(["--threads", str(args.threads)] if args.threads else []),
             *(["--repeats", str(args.repeats)] if args.repeats else [])]
    print(f"README figure for fora:3: {figure}; accepted: {lo * (1 - args.tolerance):.2f}x to "
          f"{hi * (1 + args.tolerance):.2f}x (±{args.tolerance:.0%})")
    misses = 0
    with tempfile.TemporaryDirectory(prefix="cachec-quickstart-") as samples:
        for i in range(1, args.runs + 1):
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            report = json.loads(cachec("run", str(artifact), "--steps", "50", "--json", "--out", samples, *extra,
                                       capture=True).stdout)
            speedup, (rlo, rhi) = report["speedup_vs_none"], report["speedup_range"]
            ok = within(speedup, lo, hi, args.tolerance)
            misses += not ok
            print(f"run {i}: speedup {speedup:.3f}x (repeats {rlo:.2f}–{rhi:.2f}x, none {report['latency_none_s']:.3f} s, "
                  f"{report['torch_threads']} threads, load {load:.1f} at start) vs README {figure}: "
                  f"{'within' if ok else 'OUTSIDE'} ±{args.tolerance:.0%}", flush=True)
    print(f"{args.runs - misses}/{args.runs} runs within ±{args.tolerance:.0%} of the README's {figure}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
