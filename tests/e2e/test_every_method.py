"""Every registered method through every front end, on one capture of the bundled model.

The cases are read from :data:`cachec.methods.METHODS` when the tests are collected, so a method added
later (one module under ``cachec/methods/``) is covered here without an edit. For each method's default
spec — or the small valid spec of :data:`SPECS` where the default does not fit an 8-step trajectory —
on ``builtin:tiny-dit``, captured once for the module:

* it plans (or refuses with a :class:`~cachec.errors.ModelError` naming the method, listed in
  :data:`DOES_NOT_APPLY`: DeepCache needs a U-Net's skip branches);
* it runs a DDIM trajectory on eager under :class:`~cachec.runtime.CacheRuntime` with at least one
  cached step, and its NFE is below ``none``'s;
* it lowers on Inductor, or refuses by capability (a :class:`~cachec.errors.PolicyError` that names it);
* ONNX Runtime takes it or refuses by capability, naming it. Exporting every method's segments would
  cost minutes (1-2 s a segment on 2 cores, 5-45 segments per method here), so this is the backend's
  capability gate; the ONNX export and a trajectory against eager of each kind of segment are in
  ``test_backends.py`` (marked slow), the new methods' kinds included.

Inductor compiles a variant on its first call; that compile is exercised by ``test_hybrid_backends.py``
and ``test_compile_backend.py``, not here for every method (tens of seconds each).

Then the CLI: ``cachec bench`` runs the methods added by issue 24 and two hybrids in one call.
"""

from __future__ import annotations

import json

import pytest
from calibration_files import calibration_file, hyca_section

from cachec.backends.registry import get_backend
from cachec.cli import main
from cachec.errors import ModelError, PolicyError
from cachec.methods import METHODS
from cachec.runtime import CacheRuntime
from cachec.sampling import sample
from cachec.session import open_model

STEPS = 8
BATCH = 2
# a default that does not fit 8 steps on this model, or never caches there; {calib}: the calibration file
SPECS = {
    "magcache": "magcache:0.5,ratios={calib}",  # no published ratios for this model: calibrated ones
    "budget": "budget:3",  # nfe=10 full steps would be all 8
    "omnicache": "omnicache:3,calib={calib}",  # its schedule comes from a calibration's curvature
    "hyca": "hyca:3,calib={calib}",  # its channel clusters and their orders come from a calibration
    "dbcache": "dbcache:1,t=0.5,W=2",  # W=8: no cache hit before step 8
    "easycache": "easycache:0.5,warmup=2",  # warmup=5 + final=1 leave one step
    "static": "static:FFRFRRFR",  # the default mask is one F
    "tgate": "tgate:9,sa=2",  # a DiT has no cross-attention: only the self-attention reuse before the gate saves
    # the default timestep windows (450-930, below 681) leave few of an 8-step DDIM's steps inside
    "pab": "pab:2,lo=0,hi=1000",
    "fastercache": "fastercache:2,lo=-1,hi=1000",
}
HYBRIDS = ("fbcache:0.3+taylorseer:O=1", "static:FFRFRRFR+abcache")
DOES_NOT_APPLY = {"deepcache": "U-Net", "fasterdiffusion": "U-Net", "vcut": "no cross-attention"}  # method -> what its refusal on a DiT says it needs
CASES = [*METHODS, *HYBRIDS]


@pytest.fixture(scope="module")
def session():
    return open_model("builtin:tiny-dit", BATCH, device="cpu")


@pytest.fixture(scope="module")
def reference_nfe(session):
    rt = session.runtime("none", steps=STEPS)
    sample(rt, session.bundle, STEPS, 0, BATCH)
    return rt.stats.nfe


def spec_of(case: str, tmp_path) -> str:
    if case not in SPECS:
        return case
    calib = calibration_file(tmp_path, steps=STEPS, gains=[1.0] * STEPS, ratios=[1.0] * STEPS,
                             curvature=[0.0, 0.1, 0.3, 0.05, 0.2, 0.0, 0.1, 0.4],
                             errors={"module": [[0.0] * STEPS for _ in range(STEPS)]},
                             hyca=hyca_section(lambda c: [k % 3 for k in range(c)], 3))
    return SPECS[case].format(calib=calib)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", CASES)
def test_plans_runs_on_eager_and_lowers_or_refuses_by_capability(case, session, reference_nfe, tmp_path):
    spec = spec_of(case, tmp_path)
    if case in DOES_NOT_APPLY:
        with pytest.raises(ModelError, match=rf"{case}.*{DOES_NOT_APPLY[case]}"):
            session.program(spec)
        return
    program = session.program(spec)

    rt = session.runtime(spec, steps=STEPS)
    traj = sample(rt, session.bundle, STEPS, 0, BATCH)
    assert traj.sample.isfinite().all()
    schedule = rt.stats.schedule
    assert len(schedule) == STEPS and schedule[0] == "F", schedule
    if case != "none":
        assert set(schedule) - {"F"}, f"{spec} never ran a cached variant in {STEPS} steps: {schedule}"
        assert rt.stats.nfe < reference_nfe, (spec, rt.stats.nfe)

    for backend in ("inductor", "onnxruntime"):
        try:
            if backend == "inductor":  # lowered here, compiled by Inductor on a variant's first call
                CacheRuntime(program, rt.policy, backend=backend, num_steps=STEPS, signature=session.signature)
            else:
                get_backend(backend).check_policy(rt.policy)
        except PolicyError as exc:  # a capability refusal names the method and where it runs
            assert rt.policy.name in str(exc) and "backend" in str(exc), str(exc)


NEW = ("abcache", "freqca", "speca")  # the methods of issue 24 so far


@pytest.mark.slow  # one more export of the model, and a bench of five policies
@pytest.mark.usefixtures("one_thread")
def test_cli_bench_takes_the_new_methods_and_hybrids(tmp_path):
    """``cachec bench`` (the run/bench front end: warm-up, round-robin sampling) over the methods of
    issue 24 and two hybrids; a static mask, whose schedule is bound to the trajectory's length,
    used to fail in the warm-up's shorter trajectory."""
    policies = ",".join(m for m in NEW if m in METHODS) + ",fbcache:0.3+taylorseer:O=1,static:FFRFRR+abcache"
    out = tmp_path / "bench.json"
    assert main(["bench", "builtin:tiny-dit", "--policies", policies, "--steps", "6", "--seeds", "1",
                 "--batch", "2", "--repeats", "1", "--threads", "1", "--json", str(out), "--device", "cpu"]) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["policies"]}
    assert rows["static:FFRFRR+abcache"]["schedules"]["0"] == "FFRFRR"
    for spec, row in rows.items():
        if spec != "none":
            assert "R" in row["schedules"]["0"] and row["nfe"] < rows["none"]["nfe"], (spec, row["schedules"])
