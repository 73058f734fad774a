"""FasterDiffusion (encoder propagation) against an independent hook reference, over whole trajectories.

The reference (``tests/reference_fasterdiffusion.py``) wraps the encoder modules of the original
small ``UNet2DConditionModel`` (``conv_in``, down blocks, mid block) as the paper's reference forward
skips them; the driver is the shared one (``tests/trajectories.py``: 20 steps, batch 2, fp32). Per
schedule: the key steps, every step's output bit for bit, the final latent; every step a key step
equals ``none``; bad parameters and a model without an encoder/decoder raise clear errors.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from reference_fasterdiffusion import KEYS_50LS, FasterDiffusionReference
from trajectories import Driver

import cachec
from cachec.errors import ModelError, PolicyError
from cachec.methods.fasterdiffusion import paper_key_steps
from cachec.methods.skip_branch import encoder_features
from cachec.policy import parse_policy

T = 20
DRIVER = Driver(T, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture of the U-Net, every policy planned on a copy (tests/conftest.py)."""


def compiled(spec: str) -> cachec.CacheRuntime:
    model, kw = DRIVER.model_and_inputs("unet")
    return cachec.compile(model, kw, spec, num_steps=T)


def reference(keys) -> tuple[str, tuple]:
    model, _ = DRIVER.model_and_inputs("unet")
    with FasterDiffusionReference(model, keys) as ref:
        out = DRIVER.trajectory(ref, "unet")
    return ref.schedule, out


def assert_bitwise(ours, theirs):
    """cachec's graph runs the eager model's aten kernels in order, so the same cached tensors give the same bits."""
    (x, outs), (x_ref, outs_ref) = ours, theirs
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        assert torch.equal(a, b), f"step {s}: max |diff| {(a - b).abs().max().item():.3g}"
    assert torch.equal(x, x_ref)


@pytest.mark.parametrize(("spec", "keys"), [
    ("fasterdiffusion:3,schedule=uniform", [s for s in range(T) if s % 3 == 0]),
    # the reference's '50ls' key steps, scaled to 20 steps (the reading docs/methods.md states)
    ("fasterdiffusion", sorted({k * T // 50 for k in KEYS_50LS})),
])
def test_fasterdiffusion_matches_the_hook_reference(spec, keys):
    rt = compiled(spec)
    ours = DRIVER.run(rt, "unet")
    schedule, theirs = reference(keys)
    assert rt.stats.schedule == schedule and "R" in schedule
    assert_bitwise(ours, theirs)
    _, plain = DRIVER.plain("unet")  # the comparison could fail: reused steps differ from the plain model
    assert max((a - b).abs().max() for a, b in zip(ours[1], plain, strict=True)) > 1e-3
    # a non-key step runs the decoder only: no conv_in, down or mid block FLOP
    assert rt.program.variant_flops("reuse") < 0.8 * rt.full_step_flops


def test_paper_schedule_is_the_reference_list_at_50_steps():
    assert paper_key_steps(50) == KEYS_50LS
    assert paper_key_steps(100) == [2 * k for k in KEYS_50LS]


def test_every_step_a_key_step_is_none():
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled("fasterdiffusion:1,schedule=uniform")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T and rt.stats.nfe == pytest.approx(T)
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_plain, strict=True)) and torch.equal(x, x_plain)


@pytest.mark.parametrize(("spec", "match"), [
    ("fasterdiffusion:0", "N=0 is out of range"),
    ("fasterdiffusion:N=1001", "out of range"),
    ("fasterdiffusion:schedule=sqrt", "unknown schedule='sqrt'; accepted: paper, uniform"),
    ("fasterdiffusion:3,warmup=-1", "warmup=-1 is out of range"),
])
def test_bad_parameters_say_what_is_accepted(spec, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(spec)


def test_paper_schedule_needs_the_trajectory_length():
    with pytest.raises(PolicyError, match="trajectory length"):
        parse_policy("fasterdiffusion").controller(None)


def test_a_model_without_skip_concatenations_has_no_encoder_to_propagate():
    """A transformer's graph has no up-block concatenation (a planner's graph only is read: no capture)."""
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()))
    planner = SimpleNamespace(gm=gm, captured=SimpleNamespace(model_class="DiTTransformer2DModel"))
    with pytest.raises(ModelError, match="DiTTransformer2DModel has no U-Net encoder/decoder.*fora"):
        encoder_features(planner, "fasterdiffusion:2")
