"""NFE budgets end to end on ``builtin:tiny-dit`` (20 steps, K = 5 full steps): a calibration on
held-out inputs (seed 100) must give schedules at least as good as the fixed-interval policies
with the same K on evaluation seeds 0 and 1: ``budget:5`` (base module) vs ``fora:4`` and (base
forecast) vs ``taylorseer:4,O=1``. The margin is 0.3 dB: calibration and evaluation use different
inputs and the error model is first order (errors of different steps are taken to add up), so a
schedule that is better on average may lose a little on one seed; 0.3 dB is far below the gains
measured here (+0.1 to +0.9 dB per seed) and far below the gap between kinds (fora vs taylorseer:
about 8 dB), so the test still fails if the search stops helping.

(Moved from ``unit/test_budget.py``, which keeps the schedule search against brute force and the
refusals of bad budgets and calibration files: these export and sample the bundled model.)
"""

from __future__ import annotations

import json

import pytest
import torch
from calibration_files import calibration_file

from cachec import calibration as cal
from cachec import schedules
from cachec.cli import main
from cachec.metrics import psnr, to_unit
from cachec.policy import parse_policy
from cachec.runtime import CacheRuntime
from cachec.sampling import sample
from cachec.session import open_model

T, K = 20, 5




# each of these commands exports the bundled model before it refuses (15-25 s each on a loaded
# 2-core machine), so the refusals are checked here rather than in unit/
def test_cli_bad_calibration_file_exits_2(tmp_path, capsys):
    """A calibration file that does not fit the model (its block count) is refused once the model is
    known; refusals the arguments alone decide are in tests/unit/test_budget.py."""
    bad = calibration_file(tmp_path, ratios=[1.0])
    assert main(["compile", "builtin:tiny-dit", "--policy", f"budget:2,calib={bad}", "--out", str(tmp_path / "a")]) == 2
    assert "'ratios' should be a list of 4 finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return open_model("builtin:tiny-dit", 2)


@pytest.fixture(scope="module")
def calibration(tiny, tmp_path_factory):
    data = cal.calibrate(tiny, steps=T, samples=2, seed=100, bases=("module", "forecast"),
                         max_gap=8)
    path = tmp_path_factory.mktemp("calib") / "calibration.json"
    path.write_text(json.dumps(data))
    schedules.read_calibration(path)  # what calibrate writes is what read_calibration accepts
    return data, path


def _psnr(tiny, spec, seed):
    bundle, make = tiny.bundle, tiny.program
    program = make(parse_policy(spec).spec)
    rt = CacheRuntime(program, spec, num_steps=T)
    out = sample(rt, bundle, T, seed, 4).sample
    if seed not in _REFERENCE:  # `none` runs the full path of any program: one per seed serves all
        _REFERENCE[seed] = sample(CacheRuntime(program, "none", num_steps=T), bundle, T, seed, 4).sample
    return psnr(to_unit(out, True), to_unit(_REFERENCE[seed], True)), rt.stats


_REFERENCE: dict[int, torch.Tensor] = {}


@pytest.mark.slow  # a calibration and trajectories of the bundled model
@pytest.mark.parametrize("base, fixed", [("module", "fora:4"), ("forecast", "taylorseer:4,O=1,warmup=0")])
def test_calibrated_budget_is_at_least_as_good_as_the_fixed_interval(tiny, calibration, base, fixed):
    data, path = calibration
    spec = f"budget:{K},base={base},calib={path}"
    schedule, predicted = schedules.budget_schedule(data, K, base)
    fixed_schedule = "".join("F" if s % 4 == 0 else "R" for s in range(T))
    assert predicted <= schedules.predicted_error(data, fixed_schedule, base) + 1e-12  # the search's own objective
    for seed in (0, 1):
        got, stats = _psnr(tiny, spec, seed)
        want, fixed_stats = _psnr(tiny, fixed, seed)
        assert stats.schedule == schedule and len(stats.full_steps) == K == len(fixed_stats.full_steps)
        assert got >= want - 0.3, (seed, got, want, schedule)


@pytest.mark.slow
def test_magcache_runs_on_calibrated_ratios(tiny, calibration):
    data, path = calibration
    assert data["ratios"][0] == 1.0 and all(r > 0 for r in data["ratios"])
    _, stats = _psnr(tiny, f"magcache:0.3,K=3,ratios={path}", 0)
    assert "R" in stats.schedule and stats.schedule.count("F") > 1


@pytest.mark.slow
def test_compiled_budget_carries_its_schedule_without_thecalibration_file(calibration, tmp_path):
    import cachec

    data, path = calibration
    local = tmp_path / "calib.json"
    local.write_text(path.read_text())
    out = tmp_path / "art"
    assert main(["compile", "builtin:tiny-dit", "--policy", f"budget:{K},calib={local}", "--out", str(out)]) == 0
    local.unlink()  # the artifact must not need the file any more
    rt = cachec.load(out, num_steps=T)
    bundle = open_model("builtin:tiny-dit", 2).bundle
    sample(rt, bundle, T, 0, 2)
    assert rt.stats.schedule == schedules.budget_schedule(data, K, "module")[0]


@pytest.mark.slow
def test_calibration_records_the_curvature_of_the_uncached_trajectory(tiny, calibration):
    """OmniCache's numbers: ``1 − cos`` of successive model outputs per sample, averaged, recomputed
    here from the outputs of an uncached trajectory on the calibration's inputs (seed 100, 2 samples)."""
    bundle, make = tiny.bundle, tiny.program
    data, _ = calibration
    rt, outs = CacheRuntime(make("none"), "none", num_steps=T), []

    def uncached(**kw):
        out = rt(**{k: v for k, v in kw.items() if k != "return_dict"})
        outs.append(out[0].double().reshape(2, -1))
        return out

    sample(uncached, bundle, T, 100, 2)
    want = [0.0] + [sum(1 - float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(2)) / 2
                    for a, b in zip(outs, outs[1:], strict=False)]
    assert data["curvature"] == pytest.approx(want, abs=1e-9)
    assert max(want) > 10 * min(want[1:])  # the trajectory bends unevenly: the numbers can tell steps apart


@pytest.mark.slow
def test_hyca_runs_on_the_calibrated_clusters(tiny, calibration):
    """`cachec calibrate` writes HyCa's section (channel clusters of every module stream and each
    order's error), and `hyca` runs on it; the clusters get different orders here (the choice is
    made, not a uniform TaylorSeer)."""
    data, path = calibration
    section = data["hyca"]
    assert len(section["streams"]) == 12 and section["max_gap"] == 8  # attn + ff of 6 blocks
    for stream in section["streams"].values():
        assert len(stream["labels"]) == 128 and set(stream["labels"]) <= set(range(section["clusters"]))
    orders = parse_policy(f"hyca:4,calib={path}").resolved().channel_orders()
    assert len({o for per_channel in orders.values() for o in per_channel}) > 1, orders
    got, stats = _psnr(tiny, f"hyca:4,calib={path}", 0)
    assert "R" in stats.schedule and got > 10.0, (stats.schedule, got)
