"""OmniCache's rule without a model: the curvature a calibration records, the schedule chosen from
it (against schedules worked out by hand), the data an artifact keeps, and clear errors for bad
budgets, parameters and calibration files. The trajectory on ``builtin:tiny-dit`` is checked
against a hook reference in ``reference/test_dicache_omnicache.py``."""

from __future__ import annotations

import math

import pytest
import torch
from calibration_files import calibration_file

from cachec.calibration import curvature
from cachec.compatibility import with_program_data
from cachec.errors import PolicyError
from cachec.methods.omnicache import curvature_schedule
from cachec.policy import parse_policy

BENDS = [0.0, 0.5, 0.1, 0.4, 0.05, 0.3, 0.3, 0.2]  # 8 steps


def test_curvature_is_one_minus_the_cosine_of_successive_outputs_per_sample():
    """Sample 0 turns by 0, 60 and 90 degrees, sample 1 by 180, 0 and 45: κ is the mean over the two."""
    def at(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    angles = [(0, 0), (0, 180), (60, 180), (150, 225)]
    outputs = [torch.tensor([at(a), at(b)], dtype=torch.float64).reshape(2, 1, 2) * (k + 1) for k, (a, b) in enumerate(angles)]
    want = [0.0, (0 + 2) / 2, ((1 - 0.5) + 0) / 2, (1 + (1 - math.cos(math.radians(45)))) / 2]
    assert curvature(outputs) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("nfe, warmup, final, want", [
    (8, 0, 0, "FFFFFFFF"),  # every step full: the method runs none's schedule
    (1, 0, 0, "FRRRRRRR"),
    (3, 0, 0, "FFRFRRRR"),  # 0 forced, then κ 0.5 (step 1), 0.4 (step 3)
    (5, 0, 0, "FFRFRFFR"),  # ... then the tie 0.3/0.3 at steps 5 and 6
    (4, 0, 0, "FFRFRFRR"),  # the tie broken by the earlier step
    (4, 3, 1, "FFFRRRRF"),  # forced 0, 1, 2 and 7 use the whole budget
    (5, 3, 1, "FFFFRRRF"),  # then the steepest free one, step 3
])
def test_the_full_steps_are_the_forced_ones_then_the_steepest_bends(nfe, warmup, final, want):
    assert curvature_schedule(BENDS, nfe, warmup=warmup, final=final) == want


@pytest.mark.parametrize("nfe, warmup", [(9, 0), (2, 3)])
def test_a_budget_that_does_not_fit_is_one_clear_error(nfe, warmup):
    with pytest.raises(PolicyError, match=r"accepted: \d+ \.\. 8"):
        curvature_schedule(BENDS, nfe, warmup=warmup)


def test_the_schedule_follows_the_runs_own_budget_from_the_curvature_it_keeps(tmp_path):
    """The data kept (the artifact's) is the curvature: another nfe on the same file, given the
    compiled program's data, gets its own schedule."""
    path = calibration_file(tmp_path, steps=8, gains=[1.0] * 8, ratios=[1.0] * 8, curvature=BENDS,
                            errors={"module": [[0.0] * 8 for _ in range(8)]})
    compiled = parse_policy(f"omnicache:nfe=3,calib={path}").resolved()
    assert compiled.data == {"curvature": BENDS, "steps": 8}
    path.unlink()  # a loaded artifact never reads the file again
    other = with_program_data(parse_policy(f"omnicache:nfe=5,calib={path}"), compiled, compiled.data)
    assert compiled.controller(8).schedule == "FFRFRRRR"
    assert other.controller(8).schedule == "FFRFRFFR"
    with pytest.raises(PolicyError, match="calibration trajectory has 8 steps but this one has 10"):
        other.controller(10)


@pytest.mark.parametrize("spec, words", [
    ("omnicache:nfe=4", "give calib=FILE"),
    ("omnicache:nfe=0,calib=x.json", "nfe"),
    ("omnicache:nfe=4,base=token,calib=x.json", "base='token'; accepted: step, module, forecast"),
])
def test_bad_parameters_are_one_clear_error(spec, words):
    with pytest.raises(PolicyError, match=words):
        parse_policy(spec)


@pytest.mark.parametrize("override, words", [
    ({}, "records no trajectory curvature"),
    ({"curvature": [0.0, 0.1]}, "'curvature' should be a list of 4 finite numbers"),
    ({"curvature": [0.0, 0.1, float("nan"), 0.2]}, "'curvature' should be a list of 4"),
])
def test_bad_calibration_files_are_one_clear_error(tmp_path, override, words):
    path = calibration_file(tmp_path, **override)
    with pytest.raises(PolicyError, match=words):
        parse_policy(f"omnicache:nfe=2,calib={path}").resolved()


@pytest.mark.parametrize("spec, length", [("omnicache:nfe=3,calib={}", 8), ("budget:3,calib={}", 8), ("fbcache:0.1", 2),
                                          ("static:FFRFRRFR", 8), ("static:FFRFRRFR+abcache", 8)])
def test_a_warm_up_runs_a_calibrated_schedule_at_its_own_length(tmp_path, monkeypatch, spec, length):
    """``cachec run``/``bench`` warm each runtime up by a short trajectory, which a schedule
    calibrated for 8 steps refuses (it did: the warm-up of 2 steps made `cachec run` fail), as does
    an explicit 8-letter mask, alone or as a hybrid's decision (``Method.length_bound``)."""
    import cachec.sampling
    from cachec.session import Session

    path = calibration_file(tmp_path, steps=8, gains=[1.0] * 8, ratios=[1.0] * 8, curvature=BENDS,
                            errors={"module": [[0.0] * 8 for _ in range(8)]})
    method = parse_policy(spec.format(path))
    runs = []

    class Runtime:
        policy = method

    def sample(rt, bundle, steps, seed, batch):
        runs.append(steps)
        rt.policy.controller(steps)  # what the runtime's reset does: a calibrated schedule checks the length

    monkeypatch.setattr(cachec.sampling, "sample", sample)
    monkeypatch.setattr(Session, "runtime", lambda self, m, **kw: Runtime())
    Session(bundle=None, signature=[]).warm_runtime(method, batch=1, steps=8)
    assert runs == [length]
