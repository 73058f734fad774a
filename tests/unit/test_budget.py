"""NFE budgets and calibration: the schedule search and the calibration file.

* The dynamic programme of :func:`cachec.schedules.budget_schedule` is checked against brute
  force over every schedule with K full steps (random costs, forced steps).
* Bad budgets and bad calibration files get a clear :class:`PolicyError`.
* The CLI's exit code 2 for them, and the end result on ``builtin:tiny-dit`` (a calibration, then
  budgets against fixed intervals), export the model: ``e2e/test_budget_calibrated.py``.
"""

from __future__ import annotations

import itertools
import random

import pytest
from calibration_files import calibration_file

from cachec import schedules
from cachec.errors import PolicyError
from cachec.policy import parse_policy


def brute_force(steps, nfe, forced, cost, pairs):
    best = None
    for fulls in itertools.combinations(range(1, steps), nfe - 1):
        marks = (0,) + fulls
        if not forced <= set(marks):
            continue
        total, prev, last = 0.0, -1, 0
        for j in range(1, steps):
            if j in marks:
                prev, last = last, j
                continue
            total += cost(prev if pairs else -1, last, j)
        if best is None or total < best[0] - 1e-12:
            best = (total, marks)
    return best


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("warmup, final", [(0, 0), (2, 1)])
def test_dynamic_programme_finds_the_brute_force_optimum(pairs, warmup, final):
    rng = random.Random(7)
    steps, nfe = 9, 4
    table = {(p, i, j): rng.random() for p in range(-1, steps) for i in range(steps) for j in range(steps)}

    def cost(p, i, j):
        return table[(p if pairs else -1, i, j)]

    forced = schedules.forced_steps(steps, warmup, final)
    schedule, predicted = schedules.dp_schedule(steps, nfe, forced, cost, pairs=pairs)
    want_cost, want_marks = brute_force(steps, nfe, forced, cost, pairs)
    assert predicted == pytest.approx(want_cost)
    assert schedule.count("F") == nfe and {i for i, c in enumerate(schedule) if c == "F"} >= forced
    assert schedule == "".join("F" if s in want_marks else "R" for s in range(steps))


def test_even_schedule_is_foras_where_the_interval_divides_and_respects_forced_steps():
    assert schedules.even_schedule(50, 10) == "".join("F" if s % 5 == 0 else "R" for s in range(50))
    assert schedules.even_schedule(6, 6) == "FFFFFF"
    s = schedules.even_schedule(20, 5, warmup=3, final=2)
    assert s.count("F") == 5 and s.startswith("FFF") and s.endswith("FF")


@pytest.mark.parametrize("spec, steps, message", [
    ("budget:60", 50, "more than the trajectory's 50 steps"),
    ("budget:2,warmup=3", 20, "fewer than the 3 steps that are always full"),
])
def test_impossible_budgets_are_refused(spec, steps, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(spec).controller(steps)




@pytest.mark.parametrize("override, message", [
    ({"ratios": [1.0, 1.0]}, r"'ratios' should be a list of 4 finite numbers .* got a list of 2"),
    ({"errors": {"module": [[0.0] * 4] * 3}}, r"errors.module should be a 4x4 matrix"),
    ({"errors": {"module": [[0.0] * 4] * 3 + [[0.0, "x", 0.0, 0.0]]}}, r"errors.module\[3\] should be a list of 4"),
    ({"format": "other"}, "is not a cachec calibration file"),
    ({"steps": 0}, "'steps' should be a positive integer"),
    ({"errors": {"nosuch": []}}, "unknown base 'nosuch'"),
])
def test_calibration_files_of_the_wrong_shape_are_refused(tmp_path, override, message):
    path = calibration_file(tmp_path, **override)
    with pytest.raises(PolicyError, match=message):
        schedules.read_calibration(path)


def test_budget_base_missing_from_the_calibration_is_named(tmp_path):
    path = calibration_file(tmp_path)
    with pytest.raises(PolicyError, match="no measurements for base=forecast"):
        parse_policy(f"budget:2,base=forecast,calib={path}").load_data()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "10", "--budget", "20"], "more than the trajectory's 10 steps"),
    (["--threshold-map", "fora:1,2"], "not a threshold policy"),
])
def test_calibrate_refuses_what_its_arguments_decide_before_loading_the_model(tmp_path, capsys, monkeypatch,
                                                                              argv, message):
    """Such a refusal used to come after the model's load and export (16-27 s on 2 cores)."""
    from cachec import cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was opened before the arguments were checked")

    monkeypatch.setattr(cli, "open_model", no_model)
    out = tmp_path / "c.json"
    assert cli.main(["calibrate", "builtin:tiny-dit", *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_whether_a_budget_reads_data_follows_its_parameters_however_it_was_built():
    """A method is immutable: ``needs_data`` is derived from ``calib=``, not set by ``validate()``
    after construction (a budget built without calling ``validate`` used to say it needed no data,
    so it would have run the uncalibrated even schedule)."""
    from cachec.methods.budget import BudgetMethod, BudgetParams

    assert BudgetMethod(BudgetParams(nfe=3, calib="calib.json")).needs_data
    assert not BudgetMethod(BudgetParams(nfe=3)).needs_data
    parsed = parse_policy("budget:nfe=3,calib=calib.json")
    before = vars(parsed).copy()
    parsed.validate()
    assert vars(parsed) == before  # validating checks, it sets nothing
