"""OmniCache (``omnicache:nfe=K,calib=FILE``) on the bundled ``builtin:tiny-dit`` against references
that share no code with cachec.

The calibration numbers are the curvature of the model's own uncached trajectory, computed here
(``κ_j = 1 − cos(v_j, v_{j−1})`` per sample, in float64, averaged), written to a calibration file;
the reference picks the schedule by hand from the same numbers (forced steps, then the steepest
bends) and runs it with the hook reference of a step-residual mask (``budget:base=step`` with that
schedule, ``reference_predictive.py``). cachec's schedule, every step's output and the final latent
agree. Degenerate: a budget of every step runs the model uncached. Set-up as in
``test_forecast_methods.py``: 12 steps, batch 2, fp32, CPU, ``x <- x - out / T``.
"""

from __future__ import annotations

import json

import pytest
import torch
from reference_predictive import PredictiveReference
from trajectories import Driver

import cachec
from cachec.models import example_inputs, resolve
from cachec.schedules import even_schedule

T = 12
TOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyDitDriver(Driver):
    def _model_and_inputs(self, short: str):
        model = resolve("builtin:tiny-dit").model
        kw = example_inputs(model, self.batch, 0)
        kw["class_labels"] = torch.tensor([1, 6])
        return model, kw


DRIVER = TinyDitDriver(T, 2)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A calibration file holding the curvature of the uncached trajectory (the other fields unused)."""
    _, outs = DRIVER.plain("tiny-dit")
    bends = [0.0]
    for a, b in zip(outs, outs[1:], strict=False):
        a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
        cos = [float(x @ y / (x.norm() * y.norm())) for x, y in zip(a, b, strict=True)]
        bends.append(sum(1 - c for c in cos) / len(cos))
    path = tmp_path_factory.mktemp("omnicache") / "calib.json"
    path.write_text(json.dumps({"format": "cachec-calibration", "version": 1, "model": "tiny-dit", "steps": T,
                                "samples": 2, "seed": 0, "max_gap": 3, "gains": [1.0] * T, "ratios": [1.0] * T,
                                "curvature": bends, "errors": {}}))
    return path, bends


@pytest.fixture(scope="module")
def program(calib):
    model, kw = DRIVER.model_and_inputs("tiny-dit")
    return cachec.build_program(model, kw, f"omnicache:nfe=4,calib={calib[0]}")  # runs any nfe (run-time parameter)


def by_hand(bends: list[float], nfe: int, warmup: int, final: int) -> str:
    forced = {0, *range(warmup), *range(T - final, T)}
    ranked = sorted(set(range(T)) - forced, key=lambda s: (-bends[s], s))
    full = forced | set(ranked[: nfe - len(forced)])
    return "".join("F" if s in full else "R" for s in range(T))


@pytest.mark.parametrize("nfe, warmup, final", [(5, 0, 0), (6, 2, 1)])
def test_omnicache_runs_the_schedule_chosen_by_hand(calib, program, nfe, warmup, final):
    path, bends = calib
    spec = f"omnicache:nfe={nfe},warmup={warmup},final={final},calib={path}"
    want_schedule = by_hand(bends, nfe, warmup, final)
    model, _ = DRIVER.model_and_inputs("tiny-dit")
    with PredictiveReference(model, f"budget:{nfe},base=step", T, schedule=want_schedule) as ref:
        x_ref, outs_ref = DRIVER.trajectory(ref, "tiny-dit")
    rt = cachec.CacheRuntime(program, spec, num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    assert rt.stats.schedule == want_schedule == ref.schedule
    # not an even spacing in disguise: the curvature moved the full steps
    assert want_schedule != even_schedule(T, nfe, warmup=warmup, final=final)
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_ref, rtol=TOL, atol=TOL)


def test_a_budget_of_every_step_is_none(calib, program):
    path, _ = calib
    rt = cachec.CacheRuntime(program, f"omnicache:nfe={T},calib={path}", num_steps=T)
    x, outs = DRIVER.run(rt, "tiny-dit")
    x_none, outs_none = DRIVER.run(cachec.CacheRuntime(program, "none", num_steps=T), "tiny-dit")
    assert rt.stats.schedule == "F" * T
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_none, strict=True)) and torch.equal(x, x_none)
    x_plain, outs_plain = DRIVER.plain("tiny-dit")  # and the model itself, uncached
    for s, (a, b) in enumerate(zip(outs, outs_plain, strict=True)):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=lambda m, s=s: f"step {s}: {m}")
