"""The diffusers-family matrix: every class of tests/family_models.py × every matrix policy.

    python tools/family_matrix.py [--out matrix.md] [--json matrix.json] [CLASS ...]

Each cell is the check of ``tests/family_models.check`` (the test suite's own): ``ok SCHEDULE``,
or the failure's message. ``none`` is compared with the plain model at every step at batch 2
and 1; the other policies must run their expected schedule. A class that cannot be captured
gets the capture's error in every cell. Runs on the CPU; a few minutes for the whole family.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import family_models as fm  # noqa: E402

from cachec.capture import capture  # noqa: E402
from cachec.errors import CachecError  # noqa: E402


def _message(exc: BaseException) -> str:
    kind = "CachecError" if isinstance(exc, CachecError) else type(exc).__name__
    text = " ".join(str(exc).split("\n")[0].split())  # the first line: what failed and why
    return f"{kind}: {text[:240]}{'…' if len(text) > 240 else ''}"


def run(classes: list[str]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for cls_name in classes:
        t0 = time.perf_counter()
        row = {"kind": fm.FAMILY[cls_name].kind, "cells": {}}
        try:
            model = fm.make(cls_name)
            cap = capture(model, fm.inputs(cls_name, 2))
            row["latent"] = cap.latent_input
            row["static_batch"] = not cap.batch_dims
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row["cells"] = {p: _message(exc) for p in fm.POLICIES}
            rows[cls_name] = row
            print(f"{cls_name}: capture failed: {_message(exc)}", file=sys.stderr)
            continue
        for policy in fm.POLICIES:
            try:
                row["cells"][policy] = "ok " + fm.check(cls_name, policy, model=model, captured=cap)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row["cells"][policy] = _message(exc)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[cls_name] = row
        print(f"{cls_name}: {row['seconds']} s", file=sys.stderr)
    return rows


def markdown(rows: dict[str, dict]) -> str:
    head = "| class | structure | " + " | ".join(fm.POLICIES) + " |"
    lines = [head, "|" + "---|" * (len(fm.POLICIES) + 2)]
    for cls_name, row in rows.items():
        cells = [row["cells"][p].replace("|", "\\|") for p in fm.POLICIES]
        if len(set(cells)) == 1 and not cells[0].startswith("ok"):  # capture or planning failed for every policy
            cells = [cells[0]] + ["〃"] * (len(cells) - 1)
        lines.append(f"| {cls_name} | {row['kind']} | " + " | ".join(cells) + " |")
    ok = sum(all(c.startswith("ok") for c in r["cells"].values()) for r in rows.values())
    lines.append("")
    lines.append(f"{ok} of {len(rows)} classes pass every policy ({fm.STEPS}-step trajectories, CPU, "
                 f"torch {torch.__version__}).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classes", nargs="*", help="classes to run (default: the whole family)")
    ap.add_argument("--out", default=None, help="write the markdown table here (default: stdout)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    unknown = [c for c in args.classes if c not in fm.FAMILY]
    if unknown:
        ap.error(f"unknown classes {unknown}; known: {', '.join(fm.FAMILY)}")
    logging.getLogger("cachec").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    rows = run(args.classes or list(fm.FAMILY))
    table = markdown(rows)
    if args.out:
        Path(args.out).write_text(table + "\n")
    else:
        print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
