"""AOTInductor artifacts: deployable packages per variant, every weight stored once.

The reference is the eager runtime of the same policy on the same model (itself checked against
the plain model elsewhere): the packages must agree with it at every step of a trajectory, at a
batch the packages were not compiled at. Compiling C++ for two variants takes about a minute on
two cores, hence ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiTTransformer2DModel

import cachec
from cachec.cli import main
from cachec.errors import ArtifactError
from cachec.models import example_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A DiT whose weights are not negligible next to its code (2 blocks of width 1024), compiled."""
    tmp = tmp_path_factory.mktemp("aoti")
    torch.manual_seed(0)
    model = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=16,
                                  attention_head_dim=64, num_embeds_ada_norm=10).eval()
    model.save_pretrained(tmp / "model")
    out = tmp / "art"
    (tmp / "key").write_text("k" * 32)
    assert main(["compile", str(tmp / "model"), "--policy", "fora:3", "--backend", "aotinductor", "--out", str(out),
                 "--device", "cpu", "--sign-key", str(tmp / "key")]) == 0
    return model, out


def test_native_packages_load_only_when_signed_or_trusted(compiled, tmp_path):
    """Packages are shared libraries: unsigned/untrusted they are refused; the signing key admits them."""
    _, out = compiled
    key = out.parent / "key"
    with pytest.raises(ArtifactError, match="--trust-native"):
        cachec.load(out)
    (tmp_path / "other").write_text("o" * 32)
    with pytest.raises(ArtifactError, match="does not match the manifest under the given key"):
        cachec.load(out, verify_key=tmp_path / "other")
    assert cachec.load(out, verify_key=key).policy.spec == "fora:3"
    assert cachec.load(out, trust_native=True).policy.spec == "fora:3"


def test_packages_match_the_eager_runtime_at_every_step(compiled):
    model, out = compiled
    steps, batch = 7, 3  # compiled at batch 2: the batch stays dynamic
    rt = cachec.load(out, num_steps=steps, verify_key=out.parent / "key")
    ref = cachec.compile(model, example_inputs(model, 2), "fora:3", num_steps=steps)
    kw = example_inputs(model, batch, seed=1)
    x = kw.pop("hidden_states")
    for i in range(steps):
        tt = torch.full_like(kw["timestep"], 999 - i * 140)
        with torch.no_grad():
            a = rt(hidden_states=x, **{**kw, "timestep": tt})[0]
            b = ref(hidden_states=x, **{**kw, "timestep": tt})[0]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {i}")
        x = x - b / steps
    assert rt.stats.schedule == ref.stats.schedule == "FRRFRRF"


def test_weights_are_stored_once(compiled):
    model, out = compiled
    manifest = json.loads((out / "manifest.json").read_text())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert manifest["weight_bytes"] >= params
    assert sorted(manifest["files"]) == ["aoti/full.pt2", "aoti/reuse.pt2", "weights.safetensors"]
    assert manifest["files"]["weights.safetensors"]["bytes"] <= 1.01 * manifest["weight_bytes"]
    ratio = manifest["artifact_bytes"] / manifest["weight_bytes"]
    assert ratio <= 1.15, ratio


def test_a_manifest_without_a_variant_package_is_refused(compiled, tmp_path):
    import shutil

    _, out = compiled
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["lowered"]["aoti_packages"]["reuse"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="has no package for variant 'reuse'"):
        cachec.load(bad)


def test_the_bundled_models_artifact_is_within_the_size_target(tmp_path):
    """The bundled model's 8.5 MB of weights are small next to machine code, so it is the hard case for
    the 1.15× target: packages keep their compiled library, not the C++ it was built from, deflated."""
    import zipfile

    out = tmp_path / "tiny"
    assert main(["compile", "builtin:tiny-dit", "--policy", "fora:3", "--backend", "aotinductor", "--out", str(out),
                 "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact_bytes"] / manifest["weight_bytes"] <= 1.15
    for variant in ("full", "reuse"):
        members = zipfile.ZipFile(out / "aoti" / f"{variant}.pt2").infolist()
        assert any(m.filename.endswith(".so") for m in members)
        assert not any(m.filename.endswith(".cpp") for m in members)
    # the compacted packages load and sample
    assert main(["run", str(out), "--steps", "3", "--batch", "2", "--json", "--out", str(tmp_path / "samples"),
                 "--trust-native"]) == 0


def test_load_weights_swaps_the_packages_weights_without_compiling(compiled):
    """Another LoRA's fused weights, say: same names and shapes, copied into the user-managed
    constants every package reads; the output is the plain model's with the new weights."""
    model, out = compiled
    torch.manual_seed(1)
    other = DiTTransformer2DModel(**model.config).eval()
    rt = cachec.load(out, num_steps=2, verify_key=out.parent / "key")
    kw = example_inputs(model, 2, seed=1)
    with torch.no_grad():
        before = rt(**kw)[0]
        variants = dict(rt.variants)
        rt.load_weights(other.state_dict())
        cachec.reset(rt)
        after = rt(**kw)[0]  # step 0: the full variant
        rt(**{**kw, "timestep": kw["timestep"] - 100})  # step 1: the reuse variant runs on the same weights
        plain, old = other(**kw, return_dict=False)[0], model(**kw, return_dict=False)[0]
    torch.testing.assert_close(before, old, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, plain, rtol=1e-4, atol=1e-4)
    assert (plain - old).abs().max() > 1e-2  # the swap changes the output: the comparison can fail
    assert rt.variants == variants and rt.stats.schedule == "FR"  # nothing was compiled or lowered again
    with pytest.raises(cachec.ShapeError, match="compiled with"):
        rt.load_weights({"proj_out_2.weight": torch.zeros(3, 3)})
