"""Chunked linears narrowed to the chunks a variant reads (``passes/narrow_chunked_linears.py``).

At the default launch cost the pass narrows these small models' linears only where that adds no
launch (a few kB saved would not pay for one), so it is forced on here (``LAUNCH_BYTES = 0``) and
compared with the same program lowered with the pass off: every step's output must be identical,
the FLOPs saved must be the hand count of the rows dropped, and the extra ops must be exactly the
added linears (weight rows are views, so nothing is copied).
"""

from __future__ import annotations

import pytest
import torch
from small_models import TEXT_TOKENS, make

import cachec
from cachec.backends import eager as eager_backend
from cachec.dispatch_count import count
from cachec.models import example_inputs
from cachec.passes import narrow_chunked_linears

pytestmark = pytest.mark.usefixtures("one_thread")

T = 6
WIDTH = 16  # inner dimension of the small DiT, FLUX and SD3 (2 heads of 8)


def rows(chunks: int) -> float:
    """FLOPs per sample of ``chunks`` chunks (WIDTH output rows each) of an adaLN projection of the
    WIDTH-wide conditioning vector: a multiply and an add per weight."""
    return chunks * WIDTH * WIDTH * 2


# per model, FORA's cached step: (FLOPs saved, linears added, FLOPs saved at the default launch cost)
EXPECTED = {
    # 3 blocks, one 6-chunk projection each; the gates (chunks 2 and 5) stay: 2 runs, 1 added linear
    "dit": (3 * rows(4), 3, 0),
    # 2 double blocks with two 6-chunk projections (image and text), and 2 single blocks with one
    # 3-chunk projection whose gate (chunk 2) alone stays: no added launch, narrowed at any cost
    "flux": (2 * 2 * rows(4) + 2 * rows(2), 4, 2 * rows(2)),
    # block 0 and block 1 (context_pre_only) keep their image projection's gates; their text
    # projections are gone whole (the text stream is never part of the output, and only fed the
    # skipped attention)
    "sd3": (2 * rows(4), 2, 0),
}


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("policy", ["fora:3", "taylorseer:3,O=2"])
def test_narrowed_variants_equal_whole_ones(name, policy, monkeypatch):
    model = make(name)
    kw = example_inputs(model, 2, 0, text_tokens=TEXT_TOKENS)
    default = cachec.compile(model, kw, policy, num_steps=T)
    with monkeypatch.context() as off:
        off.setattr(eager_backend, "narrow_linears", lambda fused: fused)
        whole = cachec.compile(model, kw, policy, num_steps=T)
    monkeypatch.setattr(narrow_chunked_linears, "LAUNCH_BYTES", 0)
    narrow = cachec.compile(model, kw, policy, num_steps=T)
    saved, added, saved_by_default = EXPECTED[name]
    whole_flops = whole.variants["reuse"].fused.flops
    assert whole_flops - narrow.variants["reuse"].fused.flops == pytest.approx(saved)
    assert whole_flops - default.variants["reuse"].fused.flops == pytest.approx(saved_by_default)
    assert whole.variants["full"].fused.flops == narrow.variants["full"].fused.flops  # a full step reads every chunk
    x = kw["hidden_states"]
    for i in range(T):
        step = {**kw, "hidden_states": x, "timestep": torch.full_like(kw["timestep"], 900 - 150 * i)}
        ref, whole_ops = count(whole, **step)
        out, narrow_ops = count(narrow, **step)
        torch.testing.assert_close(out.sample, ref.sample, rtol=0, atol=0)
        if narrow.stats.schedule[-1] == "R":
            assert narrow_ops.ops == whole_ops.ops + added
        x = x - 0.1 * ref.sample[:, : x.shape[1]]
    assert "R" in narrow.stats.schedule and narrow.stats.schedule == whole.stats.schedule
