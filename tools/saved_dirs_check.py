"""`cachec inspect DIR` on a tiny saved directory of every class, as a new user would run it without accelerate.

    python tools/saved_dirs_check.py [--policy fora:2] [CLASS ...]

Each class of ``tests/saved_dirs.py`` (the family matrix, the six small models, and the classes
issue 22 found failing) is written by ``save_pretrained`` to a temporary folder and inspected
through the CLI's ``main`` with ``accelerate`` hidden from diffusers. One line per class: ``ok``
with the first line ``inspect`` prints, or exit code 2 with the one-line error. Runs on the CPU;
exports take ~5-20 s per class on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from saved_dirs import ALL_CLASSES, no_accelerate, save  # noqa: E402

from cachec.cli import main as cachec_main  # noqa: E402


def check(cls_name: str, root: Path, policy: str) -> str:
    folder, _ = save(cls_name, root)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with no_accelerate(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cachec_main(["inspect", str(folder), "--policy", policy, "--device", "cpu"])
    seconds = time.perf_counter() - t0
    if rc == 0:
        return f"ok ({seconds:.0f} s): {out.getvalue().splitlines()[0]}"
    error = next((line for line in err.getvalue().splitlines() if line.startswith("cachec: error")), err.getvalue())
    return f"exit {rc} ({seconds:.0f} s): {error[:400]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classes", nargs="*", help="classes to check (default: all)")
    ap.add_argument("--policy", default="fora:2")
    args = ap.parse_args()
    unknown = [c for c in args.classes if c not in ALL_CLASSES]
    if unknown:
        ap.error(f"unknown classes {unknown}; known: {', '.join(ALL_CLASSES)}")
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as root:
        for cls_name in args.classes or ALL_CLASSES:
            print(f"{cls_name}: {check(cls_name, Path(root), args.policy)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
