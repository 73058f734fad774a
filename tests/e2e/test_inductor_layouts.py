"""Inductor runs a variant called with inputs of another layout than its first call's.

A graph compiled by ``compile_fx`` asserts the strides of the example inputs it was compiled with.
On ``builtin:tiny-dit`` the patch embedding's output is a transposed view; blockcache's final
variant gets the last block's contiguous output on a full step and, on a step that reuses the
blocks (``input + cached residual`` keeps the input's layout), a transposed tensor, which raised
``assert_size_stride`` when variants were compiled once per shape only (foresight too). The unit test pins the layout keying on a one-op graph (fast); the trajectory test
checks the whole path against eager.
"""

from __future__ import annotations

import pytest
import torch
from torch import fx

from cachec.backends.inductor import _LazyInductor
from cachec.sampling import sample
from cachec.session import open_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4  # blockcache:2's schedule FFRR: the first partial step is step 3
BATCH = 2


def test_a_variant_called_with_other_strides_is_compiled_for_them():
    gm = fx.symbolic_trace(lambda x: (x * 2 + 1,))
    lazy = _LazyInductor(gm, {})
    x = torch.arange(24.0).reshape(2, 3, 4)
    transposed = x.transpose(1, 2).contiguous().transpose(1, 2)  # same shape, other strides
    assert transposed.stride() != x.stride()
    torch.testing.assert_close(lazy(x), (x * 2 + 1,))
    torch.testing.assert_close(lazy(transposed), (transposed * 2 + 1,))
    assert len(lazy.compiled) == 2


@pytest.mark.slow  # an export and ~15 Inductor compiles (every block's full and partial variant): 15-20 s on 2 cores
def test_blockcache_on_inductor_equals_eager():
    session = open_model("builtin:tiny-dit", BATCH, device="cpu")
    eager = session.runtime("blockcache:2", steps=STEPS)
    lowered = session.runtime("blockcache:2", steps=STEPS, backend="inductor")
    with torch.no_grad():
        want = sample(eager, session.bundle, STEPS, 0, BATCH).sample
        got = sample(lowered, session.bundle, STEPS, 0, BATCH).sample
    assert lowered.stats.schedule == eager.stats.schedule
    assert "R" in eager.stats.schedule, eager.stats.schedule  # a partial step ran
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
