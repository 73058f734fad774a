"""How many cache buffers a forecast policy keeps, on captured small DiT and FLUX models: one state
per residual stream of the block stack with ``streams=step``, one per module output by default.

(Moved from ``unit/test_forecast.py``: it exports models. One capture per model serves the four
policies, planned as ``cachec.build_program`` plans them: ``compile_program`` on a copy.)
"""

import pytest
from small_models import make

from cachec.capture import capture
from cachec.models import example_inputs
from cachec.planner import compile_program
from cachec.policy import parse_policy
from cachec.program import cache_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("short", ["dit", "flux"])
def test_step_streams_hold_one_state_per_residual_stream(short):
    """streams=step keeps (order + 1) tensors per residual stream of the block stack — the
    buffers `static` keeps, times the state — where streams=module keeps them per module output."""
    model = make(short)
    captured = capture(model, example_inputs(model, 2, text_tokens=5))
    progs = {spec: compile_program(captured.copy(), parse_policy(spec))
             for spec in ("static:FR", "fora:2", "taylorseer:2,O=2,streams=step", "taylorseer:2,O=2")}
    stack = list(progs["static:FR"].caches().values())
    step = list(progs["taylorseer:2,O=2,streams=step"].caches().values())
    module = progs["taylorseer:2,O=2"].caches()
    assert len(step) == 3 * len(stack)
    assert sorted(map(str, step)) == sorted(map(str, stack * 3))  # same shapes and dtypes
    assert len(module) == 3 * len(progs["fora:2"].caches())
    assert cache_bytes(progs["taylorseer:2,O=2,streams=step"], 1) == 3 * cache_bytes(progs["static:FR"], 1)
    assert cache_bytes(progs["taylorseer:2,O=2"], 1) > 2 * cache_bytes(progs["taylorseer:2,O=2,streams=step"], 1)
