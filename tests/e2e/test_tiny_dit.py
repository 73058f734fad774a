"""The bundled trained model: NFE of fora:3 and a fidelity floor for fora:2 / fora:3 at 50 steps.

Floors are the values measured when the checkpoint was trained (PSNR/SSIM to `none`, same seed,
8 class-conditional samples), minus a small margin; a change that makes caching less faithful on a
model whose samples mean something fails here.
"""

import pytest
import torch

import cachec
from cachec.metrics import psnr, ssim, to_unit
from cachec.models import resolve
from cachec.sampling import sample

pytestmark = pytest.mark.slow  # sampling the bundled model (tests/README.md)

STEPS = 50
# measured on 2026-11-23 (CPU, fp32): fora:2 37.68 dB / 0.9895, fora:3 33.67 dB / 0.9818;
# floor = measured - 1.2 dB / - 0.006 SSIM
FLOORS = {"fora:2": (36.5, 0.984), "fora:3": (32.5, 0.976)}


@pytest.fixture(scope="module")
def bundle():
    return resolve("builtin:tiny-dit")


@pytest.fixture(scope="module")
def reference(bundle):
    rt = cachec.compile(bundle.model, bundle.example_inputs(batch=2), "none", num_steps=STEPS)
    traj = sample(rt, bundle, STEPS, seed=0, batch=8)
    plain = sample(bundle.model, bundle, STEPS, seed=0, batch=8)
    return traj.sample, plain.sample, rt.stats


def test_none_is_the_plain_model(reference):
    cached, plain, stats = reference
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert stats.nfe == pytest.approx(STEPS)


@pytest.mark.parametrize("policy", ["fora:2", "fora:3"])
def test_fora_saves_full_forwards_and_stays_faithful(bundle, reference, policy):
    ref = reference[0]
    rt = cachec.compile(bundle.model, bundle.example_inputs(batch=2), policy, num_steps=STEPS)
    out = sample(rt, bundle, STEPS, seed=0, batch=8).sample
    n = int(policy.split(":")[1])
    full = len(range(0, STEPS, n))
    assert rt.stats.full_steps == list(range(0, STEPS, n))
    assert STEPS / full >= n - 0.1  # fora:3 runs ~3x fewer full forwards (17 of 50)
    assert full < rt.stats.nfe < STEPS / (n - 0.6)  # cached steps still cost their glue FLOPs
    img, ref_img = to_unit(out, True), to_unit(ref, True)
    p, s = psnr(img, ref_img), ssim(img, ref_img)
    print(f"{policy}: NFE {rt.stats.nfe:.2f}, PSNR {p:.2f} dB, SSIM {s:.4f}")
    floor_p, floor_s = FLOORS[policy]
    assert p >= floor_p and s >= floor_s
    assert p < 100  # caching changed something: the comparison can fail
