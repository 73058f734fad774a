"""NFE-budget schedules: pure maths on calibration measurements, no model and no runtime.

Given the reuse errors ``e[i][j]`` and step gains a calibration measured (:mod:`cachec.calibration`),
:func:`budget_schedule` finds, by dynamic programming over (number of full steps, last full
step[, the one before]), the schedule with exactly K full steps that minimises the predicted
final error ``Σ_j gain_j·e[last_full(j)][j]``. :func:`even_schedule` is the calibration-free
fallback. Kept apart from the measuring code so that the ``budget`` method (and its tests) need
neither a runtime nor a model, and so that importing a method never imports the runtime.

Calibration file (JSON): ``format``, ``version``, ``model``, ``steps`` T, ``samples``, ``seed``,
``max_gap``, ``gains`` [T], ``ratios`` [T], ``curvature`` [T] (OmniCache's; optional), ``errors``:
``{"module": T×T, "step": T×T, "forecast": {"p,i": [errors for j = i+1 .. ]}}`` (p = -1: no earlier
full step, j up to T-1; otherwise ``i − p ≤ max_gap`` and j up to ``i + max_gap``).
:func:`read_calibration` checks one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import PolicyError

FORMAT = "cachec-calibration"
VERSION = 1
BASES = ("module", "step", "forecast")


# --------------------------------------------------------------------------------------------
# schedules


def forced_steps(steps: int, warmup: int, final: int) -> set[int]:
    return {0} | set(range(min(warmup, steps))) | set(range(max(steps - final, 0), steps))


def check_budget(steps: int, nfe: int, forced: set[int]) -> None:
    if nfe > steps:
        raise PolicyError(f"budget: nfe={nfe} full steps is more than the trajectory's {steps} steps; "
                          f"accepted: {len(forced)} .. {steps}")
    if nfe < len(forced):
        raise PolicyError(f"budget: nfe={nfe} is fewer than the {len(forced)} steps that are always full "
                          f"(step 0, warmup and final); accepted: {len(forced)} .. {steps}")


def even_schedule(steps: int, nfe: int, *, warmup: int = 0, final: int = 0) -> str:
    """K full steps as evenly spaced as the forced ones allow: ``round(i·T/K)``, then, if forced
    steps took some of those places, the midpoints of the widest gaps."""
    forced = forced_steps(steps, warmup, final)
    check_budget(steps, nfe, forced)
    full = set(forced)
    for i in range(nfe):
        if len(full) == nfe:
            break
        full.add(round(i * steps / nfe))
    while len(full) < nfe:
        marks = sorted(full) + [steps]
        a, b = max(zip(marks, marks[1:], strict=False), key=lambda ab: ab[1] - ab[0])
        full.add((a + b) // 2)
    return "".join("F" if s in full else "R" for s in range(steps))


def budget_schedule(calib: dict, nfe: int, base: str, *, warmup: int = 0, final: int = 0) -> tuple[str, float]:
    """The schedule of exactly ``nfe`` full steps with the least predicted error, and that error."""
    steps = calib["steps"]
    forced = forced_steps(steps, warmup, final)
    check_budget(steps, nfe, forced)
    errors = calib["errors"].get(base)
    if errors is None:
        raise PolicyError(f"the calibration file has no measurements for base={base} (it has "
                          f"{', '.join(calib['errors']) or 'none'}); run `cachec calibrate --bases {base}`")
    gains = calib["gains"]
    if base == "forecast":
        def cost(p: int, i: int, j: int) -> float:
            row = errors.get(f"{p},{i}")
            if row is None or j - i - 1 >= len(row):
                return math.inf  # a gap longer than the calibration's max_gap
            return gains[j] * row[j - i - 1]
    else:
        def cost(p: int, i: int, j: int) -> float:
            return gains[j] * errors[i][j]
    return dp_schedule(steps, nfe, forced, cost, pairs=base == "forecast")


def predicted_error(calib: dict, schedule: str, base: str) -> float:
    """``Σ_j gain_j · e[last full][j]`` of a given schedule (the DP's objective)."""
    gains, errors = calib["gains"], calib["errors"][base]
    total, prev, last = 0.0, -1, None
    for j, c in enumerate(schedule):
        if c == "F":
            prev, last = last if last is not None else -1, j
            continue
        if base == "forecast":
            row = errors.get(f"{prev},{last}")
            total += gains[j] * row[j - last - 1] if row is not None and j - last - 1 < len(row) else math.inf
        else:
            total += gains[j] * errors[last][j]
    return total


def dp_schedule(steps: int, nfe: int, forced: set[int], cost, *, pairs: bool) -> tuple[str, float]:
    """Minimise the summed cost of cached steps over schedules of ``nfe`` full steps.

    States are the last full step (``pairs``: the last two). ``seg[(p, i)][n]`` is the cost of the
    cached steps between full steps i and n; no forced step may lie strictly inside a gap.
    """
    next_forced = [min([f for f in forced if f > i] + [steps]) for i in range(steps)]
    seg_cache: dict[tuple[int, int], list[float]] = {}

    def seg(p: int, i: int) -> list[float]:
        """seg(p, i)[n - i - 1] = cost of steps i+1 .. n-1 served from full step i (n = i+1 .. T)."""
        key = (p if pairs else -2, i)
        if key not in seg_cache:
            acc, out = 0.0, [0.0]
            for j in range(i + 1, steps):
                acc += cost(p, i, j)
                out.append(acc)
            seg_cache[key] = out
        return seg_cache[key]

    # best[(p, i)] = (cost, back-pointer) with k full steps, last at i, the one before p
    best: dict[tuple[int, int], tuple[float, tuple | None]] = {(-1, 0): (0.0, None)}
    layers = [best]
    for _ in range(1, nfe):
        nxt: dict[tuple[int, int], tuple[float, tuple | None]] = {}
        for (p, i), (c, _) in best.items():
            costs = seg(p, i)
            for n in range(i + 1, min(next_forced[i], steps - 1) + 1):
                total = c + costs[n - i - 1]
                key = (i, n) if pairs else (-1, n)
                if key not in nxt or total < nxt[key][0]:
                    nxt[key] = (total, (p, i))
        best = nxt
        layers.append(best)
    final = None
    for (p, i), (c, _) in best.items():
        if next_forced[i] < steps:
            continue  # a forced step after the last full one
        total = c + seg(p, i)[steps - i - 1]
        if final is None or total < final[0]:
            final = (total, (p, i))
    if final is None or math.isinf(final[0]):
        raise PolicyError(f"budget: no schedule of {nfe} full steps covers the forced steps {sorted(forced)} with gaps "
                          "the calibration measured; recalibrate with a larger --max-gap")
    full, key = [], final[1]
    for layer in reversed(layers):
        full.append(key[1])
        key = layer[key][1]
    marks = set(full)
    return "".join("F" if s in marks else "R" for s in range(steps)), final[0]


# --------------------------------------------------------------------------------------------
# the calibration file


def read_calibration(path: str | Path) -> dict:
    """Read and check a calibration file; every defect is a :class:`PolicyError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"calibration file {path} does not exist; write one with `cachec calibrate MODEL --out {path}`")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"calibration file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PolicyError(f"{path} is not a cachec calibration file (format field is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise PolicyError(f"{path} has calibration version {data.get('version')!r}; this cachec reads {VERSION}")
    steps = data.get("steps")
    if not isinstance(steps, int) or steps < 1:
        raise PolicyError(f"{path}: 'steps' should be a positive integer, got {steps!r}")

    def numbers(value, n, where):
        if (not isinstance(value, list) or len(value) != n
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
            raise PolicyError(f"{path}: {where} should be a list of {n} finite numbers (one per step of the "
                              f"{steps}-step calibration); got {_show(value)}")

    numbers(data.get("gains"), steps, "'gains'")
    numbers(data.get("ratios"), steps, "'ratios'")
    if "curvature" in data:  # OmniCache's (files of older cachecs have none)
        numbers(data["curvature"], steps, "'curvature'")
    errors = data.get("errors")
    if not isinstance(errors, dict):
        raise PolicyError(f"{path}: 'errors' should be an object with measurements per base")
    for base, e in errors.items():
        if base in ("module", "step"):
            if not isinstance(e, list) or len(e) != steps:
                raise PolicyError(f"{path}: errors.{base} should be a {steps}x{steps} matrix, got {_show(e)}")
            for i, row in enumerate(e):
                numbers(row, steps, f"errors.{base}[{i}]")
        elif base == "forecast":
            gap = data.get("max_gap")
            if not isinstance(gap, int) or gap < 1:
                raise PolicyError(f"{path}: 'max_gap' should be a positive integer, got {gap!r}")
            if not isinstance(e, dict):
                raise PolicyError(f"{path}: errors.forecast should be an object keyed 'p,i'")
            for i in range(steps):
                numbers(e.get(f"-1,{i}"), steps - i - 1, f"errors.forecast['-1,{i}']")
                for p in range(max(0, i - gap), i):
                    numbers(e.get(f"{p},{i}"), min(i + gap, steps - 1) - i, f"errors.forecast['{p},{i}']")
        else:
            raise PolicyError(f"{path}: unknown base {base!r} in errors; known: module, step, forecast")
    return data


def _show(value) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__
